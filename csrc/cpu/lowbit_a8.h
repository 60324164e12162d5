// W·A8: low-bit weights times activations quantized to int8 on the fly (llmlite::lowbit_linear_a8).
//
// Activations are quantized per row and per block of 128 inputs (symmetric, sx = max|x| / 127, round
// half to even), exactly as reference.quantize_activations_int8. With AVX512-VNNI, 2/4/8-bit weights
// whose groups are whole blocks (group_size 128, 256 or per-channel) multiply the int8 activations with
// vpdpbusd: per block, sum_k q_k * xq_k in int32, then
//   out[m, n] = sum_blocks sx_b * s_g * (sum_k q_k xq_k) - sum_blocks sx_b * s_g * z_g * (sum_k xq_k).
// Every other case multiplies the fake-quantized activations (xq * sx, float32) with the fp32 kernels.
#pragma once

#include <cstdint>

#include "cpu/lowbit_unpack.h"

namespace llmlite::cpu {

constexpr int64_t kA8Block = 128;  // activations per int8 scale

// Int8 activations of M rows in the VNNI order of `bits` (a8_code_index), each row zero-padded to
// Kb = ceil(K / 128) whole blocks.
struct A8Activations {
  const int8_t* xq;     // [M, Kb * 128]
  const float* sx;      // [M, Kb]: the block scales
  const float* sxsum;   // [M, Kb]: sx * sum of the block's xq (the zero-point term)
  int64_t M, Kb;
};

// Which input of a 128-code block the VNNI decoder emits at byte lane p (0..127).
//   8-bit: natural. 4-bit: byte j of the block's 64 holds codes 2j, 2j+1 -> low nibbles first, then the
//   high ones. 2-bit: byte j of 32 holds codes 4j..4j+3 -> four planes of 32 (shift 0, 2, 4, 6).
inline int a8_code_index(int bits, int p) {
  if (bits == 4) return p < 64 ? 2 * p : 2 * (p - 64) + 1;
  if (bits == 2) return 4 * (p % 32) + p / 32;
  return p;
}

// Whether the VNNI kernel handles this format (the CPU check is separate: cpu_has_vnni()).
inline bool a8_vnni_format(int bits, int64_t group, int64_t K) {
  return (bits == 2 || bits == 4 || bits == 8) && (group == K || group % kA8Block == 0);
}

// x fp32 [M, K] -> xq int8 [M, Kb * 128] (natural order, zero-padded) and sx fp32 [M, Kb].
void quantize_activations_a8(const float* x, int64_t M, int64_t K, int8_t* xq, float* sx);

// Natural-order xq [M, Kb * 128] -> the VNNI order of `bits` (dst, same shape) and sxsum [M, Kb].
void a8_vnni_order(const int8_t* xq, const float* sx, int64_t M, int64_t Kb, int bits, int8_t* dst,
                   float* sxsum);

namespace avx512_vnni {
// out[m, n] for n in [n0, n1), every row m < a.M (at most 8); bias fp32 [N] or nullptr.
void gemv_a8(const LowbitWeight& w, const A8Activations& a, const float* bias, float* out, int64_t n0,
             int64_t n1);
}  // namespace avx512_vnni

// The row-interleaved weight of llmlite::lowbit_linear_a8_interleaved (llmlite_kernels/formats/cpu_interleave.py):
// 16 rows per block; per block, `steps` steps of 64 bytes (16 rows x 4 bytes of 32 / bits codes each; W3:
// 192 bytes, 32 codes split into a 2-bit and a 1-bit plane).
constexpr int kInterleaveRows = 16;
constexpr int64_t interleaved_step_codes(int bits) { return bits == 3 ? 32 : 32 / bits; }
constexpr int64_t interleaved_step_bytes(int bits) { return bits == 3 ? 3 * 64 : 64; }

// How K splits into steps and into segments (runs of steps that share one weight group and one
// activation block: min(group, 128) codes).
struct InterleavedSegments {
  int64_t step;       // codes per row per step: 32 / bits (32 for 3 bits)
  int64_t step_bytes; // bytes per step of a row block: 64 (192 for 3 bits)
  int64_t steps;      // ceil(K / step)
  int64_t seg_steps;  // steps per segment (the last may be shorter)
  int64_t count;      // segments
  int64_t group;      // codes per weight group (K for per-channel)
  static InterleavedSegments make(int bits, int64_t group, int64_t K);
};

struct InterleavedWeight {
  const uint8_t* weight;  // [N_pad / 16, steps * step_bytes / 64, 16, 4]
  const float* scale;     // [N_pad / 16, G, 16]
  const uint8_t* zero;    // [N_pad / 16, G, 16]
  int64_t N, K, G;
  int bits;
  InterleavedSegments seg;
};

// sums[m, j] = sum of the natural-order xq [M, Kb * 128] over segment j.
void interleaved_segment_sums(const int8_t* xq, int64_t M, int64_t Kb, const InterleavedSegments& seg,
                              int32_t* sums);

// out[m, n] for the rows of blocks [b0, b1), every batch row m < a.M, with a.xq in natural order;
// bias fp32 [N] or nullptr. Same result on both paths (int32 dot products, fp32 epilogue per segment).
namespace scalar {
void gemv_a8_interleaved(const InterleavedWeight& w, const A8Activations& a, const int32_t* seg_sums,
                         const float* bias, float* out, int64_t b0, int64_t b1);
}  // namespace scalar
namespace avx512_vnni {
void gemv_a8_interleaved(const InterleavedWeight& w, const A8Activations& a, const int32_t* seg_sums,
                         const float* bias, float* out, int64_t b0, int64_t b1);
}  // namespace avx512_vnni

}  // namespace llmlite::cpu
