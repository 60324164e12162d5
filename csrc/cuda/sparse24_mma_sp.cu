// 2:4 sparse x fp16/bf16 GEMM on the sparse tensor cores (mma.sp m16n8k32), reading the compressed
// weight of llmlite_kernels/formats/sparse24.py as stored: values [N, K/2] + meta int32 [N, K/32].
//
// out[M, N] = x[M, K] @ W[N, K]^T (+ bias) is computed transposed, D^T = W . x^T, because mma.sp takes
// the sparse operand as A: per instruction A = 16 weight rows x 32 columns (16 kept values per row),
// B = 32 columns x 8 tokens (a 32-bit pair of x per register: x is row-major, i.e. B is "col"),
// D = 16 weight rows x 8 tokens in fp32.
//
// Fragment layouts (PTX ISA, mma.sp m16n8k32 .f16/.bf16; g = lane / 4, t = lane % 4):
//   A (compressed 16x16): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B (32x8):             b_i = x[token g][k 8i+2t .. 8i+2t+1], i = 0..3
//   D (16x8, fp32):       d0, d1 = D[g][2t, 2t+1], d2, d3 = D[g+8][2t, 2t+1]
//   (mma.sp::ordered_metadata: the two indices of a group ascend, which the format guarantees.)
//   metadata (selector 0: lanes with t = 0, 1 supply it): low 16 bits = row g, high 16 bits = row g+8,
//   each the 8 2-bit indices of kept values 8t .. 8t+7 of the row's 16. In our format kept value j of a
//   32-column block sits at bits 2j of the row's meta word, so lane t takes half t of each row's word.
//
// Tiling: a CTA of 4 warps covers 64 weight rows x 64 tokens; each warp owns 16 rows and keeps its A
// fragment in registers across 8 token sub-tiles (8 mma per 32-column step). x is read through L1
// (the 4 warps share it). Requires K % 32 == 0; any M and N (rows / tokens past the end read 0 and are
// not stored).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "sparse24_mma_sp.h"

namespace llmlite::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 16;
constexpr int kTokenTiles = 8;  // 8 tokens each: 64 tokens per CTA
constexpr int kTokensPerCta = 8 * kTokenTiles;

template <typename T>
struct MmaSp;

template <>
struct MmaSp<__half> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t meta) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  }
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
};

template <>
struct MmaSp<__nv_bfloat16> {
  static __device__ __forceinline__ void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4],
                                             uint32_t meta) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(meta));
  }
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
};

__device__ __forceinline__ uint32_t load_pair(const void* base, int64_t elem_offset, bool valid) {
  return valid ? __ldg(reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(base) + elem_offset)) : 0u;
}

template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    sparse24_mma_sp_kernel(const T* __restrict__ x, const T* __restrict__ values, const uint32_t* __restrict__ meta,
                           const T* __restrict__ bias, T* __restrict__ out, int M, int N, int K) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int row0 = (blockIdx.x * kWarps + warp) * kRowsPerWarp;  // first weight row of this warp
  const int tok0 = blockIdx.y * kTokensPerCta;
  if (row0 >= N) return;  // whole warp out of range (no barrier in this kernel)
  const int k2 = K / 2, words = K / 32;
  const int r_lo = row0 + g, r_hi = row0 + g + 8;
  const bool lo_ok = r_lo < N, hi_ok = r_hi < N;

  float acc[kTokenTiles][4];
#pragma unroll
  for (int j = 0; j < kTokenTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;

  for (int w = 0; w < words; ++w) {  // one 32-column step: 16 kept values per row
    uint32_t a[4];
    const int64_t c = static_cast<int64_t>(w) * 16 + 2 * t;
    a[0] = load_pair(values, static_cast<int64_t>(r_lo) * k2 + c, lo_ok);
    a[1] = load_pair(values, static_cast<int64_t>(r_hi) * k2 + c, hi_ok);
    a[2] = load_pair(values, static_cast<int64_t>(r_lo) * k2 + c + 8, lo_ok);
    a[3] = load_pair(values, static_cast<int64_t>(r_hi) * k2 + c + 8, hi_ok);
    // Lanes t = 0, 1 supply metadata; the others' value is ignored (selector 0).
    const uint32_t m_lo = lo_ok ? __ldg(meta + static_cast<int64_t>(r_lo) * words + w) : 0u;
    const uint32_t m_hi = hi_ok ? __ldg(meta + static_cast<int64_t>(r_hi) * words + w) : 0u;
    const int half = (t & 1) * 16;
    const uint32_t e = ((m_lo >> half) & 0xFFFFu) | (((m_hi >> half) & 0xFFFFu) << 16);
#pragma unroll
    for (int j = 0; j < kTokenTiles; ++j) {
      const int tok = tok0 + 8 * j + g;
      const bool ok = tok < M;
      const int64_t xo = static_cast<int64_t>(tok) * K + static_cast<int64_t>(w) * 32 + 2 * t;
      uint32_t b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) b[i] = load_pair(x, xo + 8 * i, ok);
      MmaSp<T>::run(acc[j], a, b, e);
    }
  }

  // D[g][2t, 2t+1] -> out[token 2t, 2t+1][row g]; D[g+8][..] -> row g + 8.
  const float b_lo = (bias != nullptr && lo_ok) ? MmaSp<T>::to_float(bias[r_lo]) : 0.f;
  const float b_hi = (bias != nullptr && hi_ok) ? MmaSp<T>::to_float(bias[r_hi]) : 0.f;
#pragma unroll
  for (int j = 0; j < kTokenTiles; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int tok = tok0 + 8 * j + 2 * t + h;
      if (tok >= M) continue;
      if (lo_ok) out[static_cast<int64_t>(tok) * N + r_lo] = MmaSp<T>::from_float(acc[j][h] + b_lo);
      if (hi_ok) out[static_cast<int64_t>(tok) * N + r_hi] = MmaSp<T>::from_float(acc[j][2 + h] + b_hi);
    }
  }
}

}  // namespace

cudaError_t sparse24_mma_sp_linear(const void* x, const void* values, const uint32_t* meta, const void* bias,
                                   void* out, int M, int N, int K, bool bf16, cudaStream_t stream) {
  if (K % 32 != 0 || M <= 0 || N <= 0) return cudaErrorInvalidValue;
  const dim3 grid((N + kWarps * kRowsPerWarp - 1) / (kWarps * kRowsPerWarp),
                  (M + kTokensPerCta - 1) / kTokensPerCta);
  const dim3 block(kWarps * 32);
  if (bf16) {
    sparse24_mma_sp_kernel<__nv_bfloat16><<<grid, block, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), static_cast<const __nv_bfloat16*>(values), meta,
        static_cast<const __nv_bfloat16*>(bias), static_cast<__nv_bfloat16*>(out), M, N, K);
  } else {
    sparse24_mma_sp_kernel<__half><<<grid, block, 0, stream>>>(
        static_cast<const __half*>(x), static_cast<const __half*>(values), meta, static_cast<const __half*>(bias),
        static_cast<__half*>(out), M, N, K);
  }
  return cudaGetLastError();
}

}  // namespace llmlite::cuda
