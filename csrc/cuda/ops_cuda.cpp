// Torch binding of the CUDA C++ kernels (module llmlite_kernels._C_cuda): CUDA implementations of
// llmlite ops whose schemas and fakes live in llmlite_kernels/ops/schemas.py. Argument checks with
// named messages happen in Python (formats/mma_repack.py: check_repacked); these are the backstop.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <utility>

#include "lowbit_a16_gemm.h"

namespace {

// Arrival counters of the split-K reduction, per (device, stream). The kernel leaves them zeroed, so
// they are allocated (zeroed) once and reused by every later call ordered on the same stream.
int* arrival_counters(const at::Device& device, cudaStream_t stream, size_t count) {
  static std::mutex mutex;
  static std::map<std::pair<int, cudaStream_t>, at::Tensor> buffers;
  std::lock_guard<std::mutex> lock(mutex);
  at::Tensor& buf = buffers[{device.index(), stream}];
  if (!buf.defined() || static_cast<size_t>(buf.numel()) < count) {
    buf = at::zeros({static_cast<int64_t>(count)}, at::TensorOptions().dtype(at::kInt).device(device));
  }
  return buf.data_ptr<int>();
}

at::Tensor lowbit_linear_repacked_cuda(const at::Tensor& x, const at::Tensor& weight_repacked,
                                       const at::Tensor& scale_repacked,
                                       const std::optional<at::Tensor>& zero_repacked,
                                       const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                                       int64_t out_features) {
  TORCH_CHECK_VALUE(x.is_cuda() && x.is_contiguous(), "x must be a contiguous CUDA tensor");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, "x must be float16 or bfloat16");
  TORCH_CHECK_VALUE(bits == 4 || bits == 8, "bits must be 4 or 8, got ", bits);
  const int64_t K = x.size(-1);
  const int64_t N = out_features;
  TORCH_CHECK_VALUE(K > 0 && K % 128 == 0, "in_features must be a positive multiple of 128, got ", K);
  const int64_t n_pad = (N + 127) / 128 * 128;
  TORCH_CHECK_VALUE(weight_repacked.scalar_type() == at::kInt && weight_repacked.is_contiguous() &&
                  weight_repacked.numel() == n_pad * K * bits / 32,
              "weight_repacked must be contiguous int32 [N_pad/128, K/128, 512*bits]");
  const int64_t g = group_size == -1 ? K : group_size;
  const int64_t groups = (K + g - 1) / g;
  TORCH_CHECK_VALUE(scale_repacked.scalar_type() == x.scalar_type() && scale_repacked.is_contiguous() &&
                  scale_repacked.size(0) == groups && scale_repacked.size(1) == n_pad,
              "scale_repacked must be contiguous [G, N_pad] in x's dtype");
  const void* zero_ptr = nullptr;
  if (zero_repacked.has_value()) {
    const at::Tensor& z = *zero_repacked;
    TORCH_CHECK_VALUE(z.scalar_type() == x.scalar_type() && z.is_contiguous() && z.sizes() == scale_repacked.sizes(),
                "zero_repacked must be contiguous [G, N_pad] in x's dtype");
    zero_ptr = z.data_ptr();
  }
  const void* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() && bias->numel() == N,
                "bias must be contiguous [out_features] in x's dtype");
    bias_ptr = bias->data_ptr();
  }
  for (const at::Tensor* t : {&weight_repacked, &scale_repacked}) {
    TORCH_CHECK_VALUE(t->device() == x.device(), "all tensors must be on ", x.device());
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 == 0,
                "weight_repacked / scale_repacked must be 16-byte aligned (use the tensors repack_weight returns)");
  }
  if (zero_repacked.has_value()) {
    TORCH_CHECK_VALUE(zero_repacked->device() == x.device(), "all tensors must be on ", x.device());
    TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(zero_ptr) % 16 == 0, "zero_repacked must be 16-byte aligned");
  }
  if (bias.has_value()) TORCH_CHECK_VALUE(bias->device() == x.device(), "all tensors must be on ", x.device());

  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());
  const int64_t M = x.numel() / K;
  if (M == 0 || N == 0) return out;
  // The kernel's 16-byte copies need a 16-byte aligned x (a view may start anywhere).
  const at::Tensor xa = reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0 ? x : x.clone();

  const auto dtype = x.scalar_type() == at::kHalf ? llmlite::ActDtype::kFloat16 : llmlite::ActDtype::kBFloat16;
  llmlite::LowbitGemmPlan plan;
  cudaError_t err = llmlite::lowbit_a16_gemm_plan(dtype, static_cast<int>(bits), static_cast<int>(M),
                                                  static_cast<int>(N), static_cast<int>(K), &plan);
  TORCH_CHECK(err == cudaSuccess, "lowbit_a16_gemm_plan: ", cudaGetErrorString(err));
  at::Tensor workspace;
  float* workspace_ptr = nullptr;
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes / sizeof(float))},
                          x.options().dtype(at::kFloat));
    workspace_ptr = workspace.data_ptr<float>();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  int* counters = arrival_counters(x.device(), stream, plan.counter_ints);
  err = llmlite::lowbit_a16_gemm(dtype, static_cast<int>(bits), xa.data_ptr(), weight_repacked.data_ptr<int32_t>(),
                                 scale_repacked.data_ptr(), zero_ptr, bias_ptr, out.data_ptr(), workspace_ptr,
                                 counters, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
                                 static_cast<int>(g), plan, stream);
  TORCH_CHECK(err == cudaSuccess, "lowbit_a16_gemm launch: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(llmlite, CUDA, m) { m.impl("lowbit_linear_repacked", &lowbit_linear_repacked_cuda); }

// A plain Python module: importing it runs the registration above.
extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
