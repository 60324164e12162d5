// GEMV of int8 activations with a row-interleaved low-bit weight (llmlite::lowbit_linear_a8_interleaved;
// layout in llmlite_kernels/formats/cpu_interleave.py). The 16 lanes of each int32 vector are 16 output
// rows, so the whole row block runs with no per-row scalar work and no horizontal reductions, and
// each thread streams its contiguous run of the weight, two row blocks (two streams) at a time:
//   per step (64 bytes; 192 for W3): 1 load per 64 bytes, 1-2 mask/shift per code plane (W3: plus a byte test
//   and a masked add), 1 vpdpbusd per plane and batch row;
//   per segment (codes sharing one weight scale and one activation scale, min(group, 128) codes):
//   out16 += s16 * sx * (dot16 - z16 * sum(xq of the segment)).
// A portable scalar path computes the same thing on CPUs without AVX512-VNNI.
#include <algorithm>
#include <cstring>
#include <vector>

#include <immintrin.h>

#include "cpu/lowbit_a8.h"

namespace llmlite::cpu {

InterleavedSegments InterleavedSegments::make(int bits, int64_t group, int64_t K) {
  InterleavedSegments s{};
  s.step = interleaved_step_codes(bits);
  s.step_bytes = interleaved_step_bytes(bits);
  s.steps = (K + s.step - 1) / s.step;
  const int64_t seg_codes = std::min<int64_t>(group, kA8Block);
  // a per-channel row shorter than one activation block is one segment, whatever its length
  s.seg_steps = seg_codes % s.step == 0 ? seg_codes / s.step : s.steps;
  s.count = (s.steps + s.seg_steps - 1) / s.seg_steps;
  s.group = group;
  return s;
}

void interleaved_segment_sums(const int8_t* xq, int64_t M, int64_t Kb, const InterleavedSegments& seg,
                              int32_t* sums) {
  for (int64_t m = 0; m < M; ++m) {
    const int8_t* x = xq + m * Kb * kA8Block;
    for (int64_t j = 0; j < seg.count; ++j) {
      const int64_t k0 = j * seg.seg_steps * seg.step;
      const int64_t k1 = std::min(seg.steps, (j + 1) * seg.seg_steps) * seg.step;
      int32_t t = 0;
      for (int64_t k = k0; k < k1; ++k) t += x[k];
      sums[m * seg.count + j] = t;
    }
  }
}

namespace scalar {
namespace {

// Code `off` (0 .. step-1) of row r in one step of a row block (the layout of formats/cpu_interleave.py).
inline int step_code(const uint8_t* step, int bits, int r, int off) {
  if (bits == 3) {
    const int low = (step[(off / 16) * 64 + r * 4 + off % 4] >> (2 * ((off % 16) / 4))) & 3;
    const int high = (step[128 + r * 4 + off % 4] >> (off / 4)) & 1;
    return low + 4 * high;
  }
  return (step[r * 4 + off % 4] >> ((off / 4) * bits)) & ((1 << bits) - 1);
}

}  // namespace

void gemv_a8_interleaved(const InterleavedWeight& w, const A8Activations& a, const int32_t* seg_sums,
                         const float* bias, float* out, int64_t b0, int64_t b1) {
  const InterleavedSegments& seg = w.seg;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* blk = w.weight + b * seg.steps * seg.step_bytes;
    for (int r = 0; r < kInterleaveRows; ++r) {
      const int64_t n = b * kInterleaveRows + r;
      if (n >= w.N) break;
      for (int64_t m = 0; m < a.M; ++m) {
        const int8_t* x = a.xq + m * a.Kb * kA8Block;
        float acc = 0.f;
        for (int64_t j = 0; j < seg.count; ++j) {
          const int64_t s0 = j * seg.seg_steps, s1 = std::min(seg.steps, s0 + seg.seg_steps);
          int32_t dot = 0;
          for (int64_t s = s0; s < s1; ++s)
            for (int off = 0; off < seg.step; ++off)
              dot += step_code(blk + s * seg.step_bytes, w.bits, r, off) * x[s * seg.step + off];
          const int64_t k0 = s0 * seg.step;
          const int64_t g = k0 / seg.group;
          const float sc = w.scale[(b * w.G + g) * kInterleaveRows + r];
          const float z = w.zero[(b * w.G + g) * kInterleaveRows + r];
          acc += sc * a.sx[m * a.Kb + k0 / kA8Block] *
                 (static_cast<float>(dot) - z * static_cast<float>(seg_sums[m * seg.count + j]));
        }
        out[m * w.N + n] = acc + (bias != nullptr ? bias[n] : 0.f);
      }
    }
  }
}

}  // namespace scalar

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")

namespace avx512_vnni {
namespace {

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// W3: two W2 vectors of low bits (codes k0..15, k0+16..31) and one vector of high bits, where high-bit
// plane b holds codes k0+4b..k0+4b+3, the same codes as low plane b % 4 of half b / 4. A byte test of bit b
// gives the lanes whose code has its high bit set, and a masked byte add puts the 4 there, so each 3-bit code
// feeds a single vpdpbusd, as a W4 code does. (Test + masked add run on ports 5 and 0/5; shifting the high
// plane into place instead put 7 more shifts per step on port 0, which the vpdpbusd also need.)
template <int MB>
inline __attribute__((always_inline)) void step_dot3(const uint8_t* p, const int8_t* const* x, int64_t k0,
                                                     __m512i (&dot)[MB][2]) {
  const __m512i mask2 = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
  const __m512i hi = _mm512_loadu_si512(p + 128);
#pragma GCC unroll 2
  for (int half = 0; half < 2; ++half) {
    const __m512i v = _mm512_loadu_si512(p + 64 * half);
#pragma GCC unroll 4
    for (int pl = 0; pl < 4; ++pl) {
      const int b = 4 * half + pl;
      const __m512i low = _mm512_and_si512(pl == 0 ? v : _mm512_srli_epi16(v, 2 * pl), mask2);
      const __mmask64 high = _mm512_test_epi8_mask(hi, _mm512_set1_epi8(static_cast<char>(1 << b)));
      const __m512i codes = _mm512_mask_add_epi8(low, high, low, four);
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m)
        dot[m][pl & 1] = _mm512_dpbusd_epi32(dot[m][pl & 1], codes, bcast4(x[m] + k0 + 16 * half + 4 * pl));
    }
  }
}

// dot[m] += the step's 16 rows x interleaved_step_codes(BITS) codes times the matching activations of
// batch row m. Two int32 accumulators per batch row (even/odd planes) keep two vpdpbusd chains in flight.
template <int BITS, int MB>
inline __attribute__((always_inline)) void step_dot(const uint8_t* p, const int8_t* const* x, int64_t k0,
                                                    __m512i (&dot)[MB][2]) {
  if constexpr (BITS == 3) {
    step_dot3<MB>(p, x, k0, dot);
  } else {
    const __m512i v = _mm512_loadu_si512(p);
    const __m512i mask = _mm512_set1_epi8(static_cast<char>((1 << BITS) - 1));
#pragma GCC unroll 4
    for (int pl = 0; pl < 8 / BITS; ++pl) {
      const __m512i codes = BITS == 8 ? v : _mm512_and_si512(pl == 0 ? v : _mm512_srli_epi16(v, pl * BITS), mask);
#pragma GCC unroll 4
      for (int m = 0; m < MB; ++m)
        dot[m][pl & 1] = _mm512_dpbusd_epi32(dot[m][pl & 1], codes, bcast4(x[m] + k0 + 4 * pl));
    }
  }
}

// Software prefetch into L2, this far ahead of the weight stream. Without it a thread kept too few loads in
// flight: 14336 -> 4096 W4 at M=1 cold took 2863 us (75% of the streaming read); 1, 2, 4, 6 and 8 KiB ahead
// gave 2524, 2431, 2048-3459, 2483 and 2299 us (one run each, +-25% run to run on this VM).
constexpr int64_t kPrefetchBytes = 4096;

// NB = 2 runs two adjacent row blocks at once, so each thread reads two streams and keeps more loads in
// flight (14336 -> 4096 W4 M=1, in rotation with NB = 1: 9% and 1.5% faster cold in two runs, 5% and 1.5%
// hot); NB = 1 (a last odd block) alternates even and odd steps of one block. Either way each batch row
// has two pairs of vpdpbusd chains: dot[u] is block u (NB = 2) or step parity u (NB = 1).
template <int BITS, int MB, int NB>
void row_blocks(const InterleavedWeight& w, const A8Activations& a, int64_t m0, const int32_t* seg_sums,
                const float* bias, float* out, int64_t b0, int64_t b1) {
  const InterleavedSegments& seg = w.seg;
  constexpr int64_t kStep = interleaved_step_bytes(BITS);
  const int8_t* x[MB];
  for (int m = 0; m < MB; ++m) x[m] = a.xq + (m0 + m) * a.Kb * kA8Block;
  for (int64_t b = b0; b < b1; b += NB) {
    if (NB == 2 && b + 1 == b1) {
      row_blocks<BITS, MB, 1>(w, a, m0, seg_sums, bias, out, b, b1);
      return;
    }
    const uint8_t* p[NB];
    for (int u = 0; u < NB; ++u) p[u] = w.weight + (b + u) * seg.steps * kStep;
    __m512 acc[NB][MB];
    for (int u = 0; u < NB; ++u)
      for (int m = 0; m < MB; ++m) acc[u][m] = _mm512_setzero_ps();
    int64_t g = 0, blk = 0;  // the segment's weight group and activation block (counted: no division)
    for (int64_t j = 0; j < seg.count; ++j) {
      const int64_t s0 = j * seg.seg_steps, s1 = std::min(seg.steps, s0 + seg.seg_steps);
      const int64_t k0 = s0 * seg.step;
      while (k0 >= (g + 1) * seg.group) ++g;
      while (k0 >= (blk + 1) * kA8Block) ++blk;
      __m512i dot[2][MB][2];
      for (int u = 0; u < 2; ++u)
        for (int m = 0; m < MB; ++m) dot[u][m][0] = dot[u][m][1] = _mm512_setzero_si512();
      int64_t s = s0;
      for (; s + 1 < s1; s += 2) {
        for (int u = 0; u < NB; ++u)
          for (int64_t line = 0; line < 2 * kStep; line += 64)
            _mm_prefetch(reinterpret_cast<const char*>(p[u] + s * kStep + line + kPrefetchBytes), _MM_HINT_T1);
        if constexpr (NB == 2) {
          for (int t = 0; t < 2; ++t)
            for (int u = 0; u < 2; ++u) step_dot<BITS, MB>(p[u] + (s + t) * kStep, x, (s + t) * seg.step, dot[u]);
        } else {
          for (int u = 0; u < 2; ++u) step_dot<BITS, MB>(p[0] + (s + u) * kStep, x, (s + u) * seg.step, dot[u]);
        }
      }
      if (s < s1)
        for (int u = 0; u < NB; ++u) step_dot<BITS, MB>(p[u] + s * kStep, x, s * seg.step, dot[u]);
      for (int u = 0; u < NB; ++u) {
        const int64_t meta = ((b + u) * w.G + g) * kInterleaveRows;
        const __m512 sc = _mm512_loadu_ps(w.scale + meta);
        const __m512 z = _mm512_cvtepi32_ps(
            _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.zero + meta))));
        for (int m = 0; m < MB; ++m) {
          const int64_t mm = m0 + m;
          __m512i sum = _mm512_add_epi32(dot[u][m][0], dot[u][m][1]);
          if (NB == 1) sum = _mm512_add_epi32(sum, _mm512_add_epi32(dot[1][m][0], dot[1][m][1]));
          const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(static_cast<float>(seg_sums[mm * seg.count + j])),
                                            _mm512_cvtepi32_ps(sum));
          acc[u][m] = _mm512_fmadd_ps(t, _mm512_mul_ps(sc, _mm512_set1_ps(a.sx[mm * a.Kb + blk])), acc[u][m]);
        }
      }
    }
    for (int u = 0; u < NB; ++u) {
      const int64_t n = (b + u) * kInterleaveRows;
      const int rows = static_cast<int>(std::min<int64_t>(kInterleaveRows, w.N - n));
      const __mmask16 k = static_cast<__mmask16>(rows == 16 ? 0xFFFF : (1u << rows) - 1);
      const __m512 bv = bias != nullptr ? _mm512_maskz_loadu_ps(k, bias + n) : _mm512_setzero_ps();
      for (int m = 0; m < MB; ++m) _mm512_mask_storeu_ps(out + (m0 + m) * w.N + n, k, _mm512_add_ps(acc[u][m], bv));
    }
  }
}

// Batch rows in passes of up to 4 (2 blocks x 4 x 2 int32 + 2 x 4 float accumulators stay in registers).
template <int BITS>
void all_rows(const InterleavedWeight& w, const A8Activations& a, const int32_t* seg_sums, const float* bias,
              float* out, int64_t b0, int64_t b1) {
  for (int64_t m0 = 0; m0 < a.M; m0 += 4) {
    switch (std::min<int64_t>(4, a.M - m0)) {
      case 1: row_blocks<BITS, 1, 2>(w, a, m0, seg_sums, bias, out, b0, b1); break;
      case 2: row_blocks<BITS, 2, 2>(w, a, m0, seg_sums, bias, out, b0, b1); break;
      case 3: row_blocks<BITS, 3, 2>(w, a, m0, seg_sums, bias, out, b0, b1); break;
      default: row_blocks<BITS, 4, 2>(w, a, m0, seg_sums, bias, out, b0, b1); break;
    }
  }
}

}  // namespace

void gemv_a8_interleaved(const InterleavedWeight& w, const A8Activations& a, const int32_t* seg_sums,
                         const float* bias, float* out, int64_t b0, int64_t b1) {
  switch (w.bits) {
    case 2: all_rows<2>(w, a, seg_sums, bias, out, b0, b1); break;
    case 3: all_rows<3>(w, a, seg_sums, bias, out, b0, b1); break;
    case 4: all_rows<4>(w, a, seg_sums, bias, out, b0, b1); break;
    default: all_rows<8>(w, a, seg_sums, bias, out, b0, b1); break;
  }
}

}  // namespace avx512_vnni

#pragma GCC pop_options

}  // namespace llmlite::cpu
