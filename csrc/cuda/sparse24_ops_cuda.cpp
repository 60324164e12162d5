// Torch binding of the 2:4 sparse-tensor-core GEMM (sparse24_mma_sp.cu) as the CUDA kernel of
// llmlite::sparse24_mma_sp_linear (schema, fake and reference in llmlite_kernels/ops/). Part of
// llmlite_kernels._C_cuda. Named argument checks happen in Python (check_sparse24_linear); these are the backstop.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sparse24_mma_sp.h"

namespace {

at::Tensor sparse24_mma_sp_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.is_cuda() && x.is_contiguous() && x.dim() == 2, "x must be a contiguous 2-D CUDA tensor");
  TORCH_CHECK_TYPE(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16,
                   "x must be float16 or bfloat16, got ", x.scalar_type());
  const int64_t M = x.size(0), K = x.size(1), N = values.size(0);
  TORCH_CHECK_VALUE(K % 32 == 0, "in_features must be a multiple of 32, got ", K);
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), "values must have x's dtype");
  TORCH_CHECK_VALUE(values.is_contiguous() && values.dim() == 2 && values.size(1) == K / 2 &&
                        values.device() == x.device(),
                    "values must be contiguous [out_features, in_features/2] on ", x.device());
  TORCH_CHECK_VALUE(meta.scalar_type() == at::kInt && meta.is_contiguous() && meta.dim() == 2 &&
                        meta.size(0) == N && meta.size(1) == K / 32 && meta.device() == x.device(),
                    "meta must be contiguous int32 [out_features, in_features/32] on ", x.device());
  const void* bias_ptr = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->is_contiguous() && bias->numel() == N &&
                          bias->device() == x.device(),
                      "bias must be contiguous [out_features] in x's dtype on ", x.device());
    bias_ptr = bias->data_ptr();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  const cudaError_t err = llmlite::cuda::sparse24_mma_sp_linear(
      x.data_ptr(), values.data_ptr(), reinterpret_cast<const uint32_t*>(meta.data_ptr<int32_t>()), bias_ptr,
      out.data_ptr(), static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
      x.scalar_type() == at::kBFloat16, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "sparse24_mma_sp_linear launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(llmlite, CUDA, m) { m.impl("sparse24_mma_sp_linear", &sparse24_mma_sp_linear_cuda); }
