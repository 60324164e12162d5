// W4A16 / W8A16 small-batch GEMM on tensor cores (sm_80+): host interface, free of torch headers.
//
// out[M, N] = x[M, K] @ W[N, K]^T (+ bias), W = (q - z) * s group-wise, fp32 accumulation, out in x's dtype.
// The weight must first be repacked into the kernel's fragment order (see
// llmlite_kernels/formats/mma_repack.py, which defines the layout; this header only states its shape):
//   weight   int32 [N_pad / 128, K / 128, 512 * bits]  (one 128 x 128 tile of codes per (n-tile, k-tile))
//   scale    [G, N_pad] in x's dtype              (k-major: one row of scales per group)
//   zero     [G, N_pad] in x's dtype holding z    (nullptr for symmetric: z = 2**(bits-1))
// with N_pad = ceil(N / 128) * 128 and G = ceil(K / group_size) (group_size == K for per-channel).
// Requirements (checked by the caller): K % 128 == 0, bits in {4, 8}, group_size in {32, 64, 128, 256, K},
// every pointer 16-byte aligned except bias/out (2-byte), x row-major [M, K].
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace llmlite {

enum class ActDtype : int { kFloat16 = 0, kBFloat16 = 1 };

// How the (n-tile, k-tile) units are striped over thread blocks for one M slice of <= 64 rows.
struct LowbitGemmPlan {
  int m_blocks;         // 16-row MMA blocks per M slice (1, 2 or 4)
  int n_tiles;          // N_pad / 128
  int k_tiles;          // K / 128
  int blocks;           // thread blocks launched per M slice
  int units_per_block;  // contiguous (n-tile, k-tile) units of one block, k fastest
  int max_slots;        // most blocks sharing one n-tile (fp32 partial slots per n-tile)
  size_t workspace_bytes;  // fp32 partials; 0 when every n-tile has a single owner
  size_t counter_ints;     // int32 arrival counters, zeroed once, left zeroed by the kernel
};

// Plan for the current device; returns cudaSuccess or the error of the device queries.
cudaError_t lowbit_a16_gemm_plan(ActDtype dtype, int bits, int M, int N, int K, LowbitGemmPlan* plan);

// Launch on `stream`. `workspace` (plan.workspace_bytes) may be uninitialised; `counters`
// (plan.counter_ints) must be zero on entry and is zero again when the kernel completes. Calls on one
// counters buffer must be ordered (same stream). Returns the launch error, if any.
cudaError_t lowbit_a16_gemm(ActDtype dtype, int bits, const void* x, const int32_t* weight, const void* scale,
                            const void* zero, const void* bias, void* out, float* workspace, int* counters,
                            int M, int N, int K, int group_size, const LowbitGemmPlan& plan,
                            cudaStream_t stream);

}  // namespace llmlite
