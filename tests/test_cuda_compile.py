"""Every CUDA source under csrc/cuda compiles with nvcc for sm_80 and sm_90a (no GPU needed).

One nvcc call per .cu file with both -gencode targets, files in parallel. ptxas's resource report is
checked too: a kernel that spills registers or keeps an array in local memory (stack frame) is on a
slow path, which is a regression even when it compiles. The torch bindings (csrc/cuda/*.cpp) are
parsed by the host compiler against torch's headers (-fsyntax-only), so a typo there is found here
rather than by the build on a GPU machine.
"""
import glob
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
CU_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
CPP_FILES = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cpp")))
ARCHS = ("-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a")


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = os.path.join(home, "bin", "nvcc")
    return candidate if os.path.exists(candidate) else None


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")


def _cuda_include():
    home = os.path.dirname(os.path.dirname(os.path.realpath(NVCC))) if NVCC else None
    for root in filter(None, [os.environ.get("CUDA_HOME"), home, "/usr/local/cuda"]):
        inc = os.path.join(root, "include")
        if os.path.exists(os.path.join(inc, "cuda_runtime.h")):
            return inc
    return None


def _parse_binding(path, out_dir):
    """g++ -fsyntax-only against torch's headers. A CPU-only torch lacks c10/cuda's generated
    cuda_cmake_macros.h: an empty stand-in is supplied (it only holds build-time macros)."""
    import sysconfig

    from torch.utils import cpp_extension

    stub = os.path.join(out_dir, "stub", "c10", "cuda", "impl")
    os.makedirs(stub, exist_ok=True)
    with open(os.path.join(stub, "cuda_cmake_macros.h"), "w") as f:
        f.write("#pragma once\n")
    includes = [*cpp_extension.include_paths(), _cuda_include(), sysconfig.get_paths()["include"],
                os.path.join(ROOT, "csrc"), os.path.join(out_dir, "stub")]
    cmd = ["g++", "-std=c++17", "-fsyntax-only", "-w", *[f"-I{i}" for i in includes], path]
    # Torch's own include dirs come first, so a real cuda_cmake_macros.h (CUDA torch) wins over the stub.
    return path, subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _compile(path, out_dir):
    obj = os.path.join(out_dir, os.path.basename(path) + ".o")
    cmd = [NVCC, "-c", "-O3", "-std=c++17", "--expt-relaxed-constexpr", *ARCHS, "--threads=2", "-Xptxas", "-v",
           "-I", os.path.join(ROOT, "csrc"), path, "-o", obj]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return path, proc


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """nvcc of every .cu and, when g++ is present, the binding parse of every .cpp, all in parallel."""
    out_dir = str(tmp_path_factory.mktemp("nvcc"))
    jobs = [(_compile, p) for p in CU_FILES]
    if shutil.which("g++") and _cuda_include():
        jobs += [(_parse_binding, p) for p in CPP_FILES]
    with ThreadPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        return dict(pool.map(lambda job: job[0](job[1], out_dir), jobs))


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files under {CUDA_DIR}"


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_compiles_for_sm80_and_sm90a(compiled, path):
    proc = compiled[path]
    assert proc.returncode == 0, f"nvcc failed for {path}:\n{proc.stderr[-4000:]}"
    targets = set(re.findall(r"for '(sm_\w+)'", proc.stderr))
    assert {"sm_80", "sm_90a"} <= targets, f"ptxas report names targets {targets}"


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_no_register_spills_or_stack(compiled, path):
    report = compiled[path].stderr
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", report)
    assert frames, "no ptxas resource report"
    bad = [f for f in frames if any(int(v) for v in f)]
    assert not bad, f"stack frame / spills (stack, spill stores, spill loads): {bad}"


@pytest.mark.parametrize("path", CPP_FILES, ids=os.path.basename)
def test_torch_bindings_parse(compiled, path):
    if path not in compiled:
        pytest.skip("g++ or the CUDA headers (cuda_runtime.h) not found")
    proc = compiled[path]
    assert proc.returncode == 0, f"g++ -fsyntax-only failed for {path}:\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("path", CU_FILES, ids=os.path.basename)
def test_kernel_sources_do_not_include_torch(path):
    """The .cu files stay plain CUDA (fast to compile, buildable by nvcc alone); torch lives in ops_cuda.cpp."""
    text = open(path).read()
    assert not re.search(r'#include\s*[<"](torch|ATen|c10)/', text)
