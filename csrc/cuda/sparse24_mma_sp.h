// Host launcher of the 2:4 sparse-tensor-core GEMM (sparse24_mma_sp.cu). Plain CUDA, no torch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace llmlite::cuda {

// out[M, N] = x[M, K] @ W^T (+ bias), W 2:4 sparse as values [N, K/2] + meta uint32 [N, K/32]
// (formats/sparse24.py); x, values, bias, out are fp16 (bf16 = false) or bf16, contiguous. K % 32 == 0.
cudaError_t sparse24_mma_sp_linear(const void* x, const void* values, const uint32_t* meta, const void* bias,
                                   void* out, int M, int N, int K, bool bf16, cudaStream_t stream);

}  // namespace llmlite::cuda
