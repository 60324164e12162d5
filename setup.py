"""Build the native kernels.

* ``llmlite_kernels._C`` (CPU C++, ``csrc/ops.cpp`` + ``csrc/cpu/*.cpp``): always built.
* ``llmlite_kernels._C_cuda`` (CUDA C++, ``csrc/cuda/*.cu``): built when torch has CUDA and nvcc is found.

Environment switches:
  LLMLITE_BUILD_CPU=0    skip the CPU extension (the package then runs on its pure-torch reference)
  LLMLITE_BUILD_CUDA=0/1 force the CUDA extension off / on (on fails loudly if it cannot be built)
  MAX_JOBS=N             parallel compile jobs (ninja)
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() not in ("0", "false", "off", "no", "")


def _extensions():
    from torch.utils import cpp_extension
    import torch

    exts = []
    if _flag("LLMLITE_BUILD_CPU") is not False:
        sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
        exts.append(
            cpp_extension.CppExtension(
                "llmlite_kernels._C",
                sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fopenmp"]},
                extra_link_args=["-fopenmp"],
            )
        )

    want_cuda = _flag("LLMLITE_BUILD_CUDA")
    has_nvcc = cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    can_cuda = torch.version.cuda is not None and has_nvcc
    cu_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if want_cuda or (want_cuda is None and can_cuda):
        if not can_cuda:
            raise RuntimeError(
                "LLMLITE_BUILD_CUDA=1 but torch has no CUDA (torch.version.cuda is None) or nvcc is missing"
            )
        if cu_sources:
            exts.append(
                cpp_extension.CUDAExtension(
                    "llmlite_kernels._C_cuda",
                    cu_sources + sorted(glob.glob("csrc/cuda/*.cpp")),
                    include_dirs=[os.path.join(ROOT, "csrc")],
                    extra_compile_args={
                        "cxx": ["-O3", "-std=c++17"],
                        "nvcc": [
                            "-O3",
                            "-std=c++17",
                            "--expt-relaxed-constexpr",
                            "-gencode=arch=compute_80,code=sm_80",
                            "-gencode=arch=compute_90a,code=sm_90a",
                            "--threads=2",  # the two targets of a .cu file compile in parallel
                        ],
                    },
                )
            )
    return exts, cpp_extension.BuildExtension.with_options(use_ninja=True)


ext_modules, build_ext = _extensions()
setup(
    packages=find_packages(include=["llmlite_kernels", "llmlite_kernels.*"])
    + ["llmlite_kernels.kernels"]
    + ["llmlite_kernels.kernels." + p for p in find_packages("kernels")],
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
)
