// Per-ISA low-bit kernels (one translation unit per ISA: lowbit_{scalar,avx2,avx512}.cpp, all built
// from lowbit_kernel_body.inc) and the tables that pick one by bits and batch size.
#pragma once

#include <cstdint>

#include "cpu/isa.h"
#include "cpu/lowbit_unpack.h"

namespace llmlite::cpu {

constexpr int kMaxGemvRows = 8;  // the GEMV path handles batches of 1..8 rows

// out[m, n] = sum_k W[n, k] * x[m, k] (+ bias[n]) for n in [n0, n1), m < M (M baked into the kernel).
// xp: activations permuted chunk-wise (chunk_code_index), fp32 [M, w.Kpad], zero-padded.
// out: fp32 [M, w.N]. bias: fp32 [N] or nullptr.
using GemvFn = void (*)(const LowbitWeight& w, const float* xp, const float* bias, float* out, int64_t n0,
                        int64_t n1);
// Rows [n0, n1) of W dequantized to fp32 in the permuted chunk order: dst [n1 - n0, w.Kpad], zero-padded.
using DequantPermutedFn = void (*)(const LowbitWeight& w, int64_t n0, int64_t n1, float* dst);

namespace avx512 {
// Scales [offset, offset + count) of a weight's scale tensor (fp16, bf16 or fp32) to fp32 dst.
void scales_to_float(const void* src, ScaleType type, int64_t offset, int64_t count, float* dst);
}  // namespace avx512

#define LLMLITE_DECLARE_ISA(ns)                     \
  namespace ns {                                    \
  GemvFn gemv_kernel(int bits, int rows);           \
  DequantPermutedFn dequant_permuted_kernel(int bits); \
  }
LLMLITE_DECLARE_ISA(scalar)
LLMLITE_DECLARE_ISA(avx2)
LLMLITE_DECLARE_ISA(avx512)
#undef LLMLITE_DECLARE_ISA

inline GemvFn gemv_kernel(Isa isa, int bits, int rows) {
  switch (isa) {
    case Isa::Avx512: return avx512::gemv_kernel(bits, rows);
    case Isa::Avx2: return avx2::gemv_kernel(bits, rows);
    default: return scalar::gemv_kernel(bits, rows);
  }
}

inline DequantPermutedFn dequant_permuted_kernel(Isa isa, int bits) {
  switch (isa) {
    case Isa::Avx512: return avx512::dequant_permuted_kernel(bits);
    case Isa::Avx2: return avx2::dequant_permuted_kernel(bits);
    default: return scalar::dequant_permuted_kernel(bits);
  }
}

}  // namespace llmlite::cpu
