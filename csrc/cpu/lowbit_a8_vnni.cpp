// AVX512-VNNI kernel of llmlite::lowbit_linear_a8 (see lowbit_a8.h). One 128-code block of a weight row
// decodes to two vectors of 64 unsigned codes; each meets 64 int8 activations in one vpdpbusd. Its own
// translation unit: the VNNI target must not leak into the plain AVX-512 build.
#include <algorithm>
#include <vector>

#include <immintrin.h>

#include <c10/util/Exception.h>

#include "cpu/lowbit_a8.h"
#include "cpu/lowbit_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,f16c,fma")

namespace llmlite::cpu::avx512_vnni {
namespace {

// Software prefetch distance along each row's weight stream (into L2: prefetcht2). Chosen among
// {none, 1 KiB, 4 KiB, 8 KiB} x {L1, L2} and 1, 2 or 4 rows per pass on 14336 -> 4096 cold at M=1; the
// differences were within this 2-core VM's run-to-run noise (~10%); 4 rows + 4 KiB into L2 came out best.
constexpr int64_t kPrefetchBytes = 4096;

inline __mmask64 first_bytes(int64_t n) { return n >= 64 ? ~__mmask64{0} : ((__mmask64{1} << n) - 1); }

// The block's codes as two vectors of 64 bytes in a8_code_index order. `bytes` below 16 * BITS: the
// row's last, partial block, read with masked loads so that nothing past the row is touched.
template <int BITS>
inline void decode_block(const uint8_t* p, int64_t bytes, __m512i& u0, __m512i& u1) {
  constexpr int64_t kFull = 16 * BITS;
  if constexpr (BITS == 8) {
    if (bytes >= kFull) {
      u0 = _mm512_loadu_si512(p);
      u1 = _mm512_loadu_si512(p + 64);
    } else {
      u0 = _mm512_maskz_loadu_epi8(first_bytes(bytes), p);
      u1 = _mm512_maskz_loadu_epi8(first_bytes(std::max<int64_t>(bytes - 64, 0)), p + 64);
    }
  } else if constexpr (BITS == 4) {
    const __m512i v = bytes >= kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(first_bytes(bytes), p);
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    u0 = _mm512_and_si512(v, low4);
    u1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
  } else {
    static_assert(BITS == 2, "the VNNI kernel takes 2-, 4- and 8-bit codes");
    const __m256i v = bytes >= kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                                     : _mm256_maskz_loadu_epi8(static_cast<__mmask32>(first_bytes(bytes)), p);
    const __m512i both = _mm512_broadcast_i64x4(v);  // planes (shift 0 | 2), then (4 | 6)
    const __m512i sh01 = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const __m512i sh23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi16(4)), _mm256_set1_epi16(6), 1);
    const __m512i low2 = _mm512_set1_epi8(0x03);
    u0 = _mm512_and_si512(_mm512_srlv_epi16(both, sh01), low2);
    u1 = _mm512_and_si512(_mm512_srlv_epi16(both, sh23), low2);
  }
}

// Row n's group scales s[g] and z[g] * s[g] in fp32, 16 groups per step (SmolLM2's rows have 5 groups:
// a scalar loop here cost 16% of the kernel's cycles).
void row_scales(const LowbitWeight& w, int64_t n, float* s, float* zs) {
  avx512::scales_to_float(w.scale, w.scale_type, n * w.G, w.G, s);
  const __m512 symmetric_zero = _mm512_set1_ps(static_cast<float>(1 << (w.bits - 1)));
  for (int64_t g = 0; g < w.G; g += 16) {
    const __mmask16 k = static_cast<__mmask16>(w.G - g >= 16 ? 0xFFFF : (1u << (w.G - g)) - 1);
    const __m512 z = w.zero == nullptr
                         ? symmetric_zero
                         : _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, w.zero + n * w.G + g)));
    _mm512_mask_storeu_ps(zs + g, k, _mm512_mul_ps(z, _mm512_maskz_loadu_ps(k, s + g)));
  }
}

// R consecutive weight rows at once: each activation vector loaded serves R rows, and R weight streams
// are in flight (more memory-level parallelism than one).
template <int BITS, int M, int R>
inline void gemv_a8_row_group(const LowbitWeight& w, const A8Activations& a, const float* bias, float* out,
                              int64_t n, float* s, float* zs) {
  constexpr int64_t kFull = 16 * BITS;  // bytes of a 128-code block
  const int64_t row_stride = a.Kb * kA8Block;
  const int64_t blocks_per_group = w.G == 1 ? a.Kb : w.group / kA8Block;
  const int64_t last_bytes = ((w.K - (a.Kb - 1) * kA8Block) * BITS + 7) / 8;
  for (int r = 0; r < R; ++r) row_scales(w, n + r, s + r * w.G, zs + r * w.G);
  __m512 acc[R][M];
  float zero_term[R][M];
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < M; ++m) {
      acc[r][m] = _mm512_setzero_ps();
      zero_term[r][m] = 0.f;
    }
  for (int64_t g = 0; g < w.G; ++g) {
    const int64_t b1 = std::min(a.Kb, (g + 1) * blocks_per_group);
    for (int64_t b = g * blocks_per_group; b < b1; ++b) {
      const int64_t bytes = b + 1 < a.Kb ? kFull : last_bytes;
      __m512i u0[R], u1[R];
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = w.row(n + r) + b * kFull;
        if constexpr (M <= 2) __builtin_prefetch(p + kPrefetchBytes, 0, 1);
        decode_block<BITS>(p, bytes, u0[r], u1[r]);
      }
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int8_t* x = a.xq + m * row_stride + b * kA8Block;
        const __m512i x0 = _mm512_loadu_si512(x), x1 = _mm512_loadu_si512(x + 64);
        const float sxb = a.sx[m * a.Kb + b], sxsum = a.sxsum[m * a.Kb + b];
        for (int r = 0; r < R; ++r) {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u0[r], x0), u1[r], x1);
          acc[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(s[r * w.G + g] * sxb), acc[r][m]);
          zero_term[r][m] += zs[r * w.G + g] * sxsum;
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const float b = bias != nullptr ? bias[n + r] : 0.f;
    for (int m = 0; m < M; ++m) out[m * w.N + n + r] = _mm512_reduce_add_ps(acc[r][m]) - zero_term[r][m] + b;
  }
}

// Rows per pass: 4 at M <= 2; fewer at larger M, where R x M accumulators would not fit in 32 registers.
constexpr int rows_per_pass(int m) { return m <= 2 ? 4 : m <= 4 ? 2 : 1; }

template <int BITS, int M>
void gemv_a8_rows(const LowbitWeight& w, const A8Activations& a, const float* bias, float* out, int64_t n0,
                  int64_t n1) {
  constexpr int R = rows_per_pass(M);
  std::vector<float> s(R * w.G), zs(R * w.G);
  int64_t n = n0;
  for (; n + R <= n1; n += R) gemv_a8_row_group<BITS, M, R>(w, a, bias, out, n, s.data(), zs.data());
  for (; n < n1; ++n) gemv_a8_row_group<BITS, M, 1>(w, a, bias, out, n, s.data(), zs.data());
}

using Fn = void (*)(const LowbitWeight&, const A8Activations&, const float*, float*, int64_t, int64_t);

#define LLMLITE_A8_ROWS(B)                                                                                  \
  {&gemv_a8_rows<B, 1>, &gemv_a8_rows<B, 2>, &gemv_a8_rows<B, 3>, &gemv_a8_rows<B, 4>, &gemv_a8_rows<B, 5>, \
   &gemv_a8_rows<B, 6>, &gemv_a8_rows<B, 7>, &gemv_a8_rows<B, 8>}
const Fn kTable[3][8] = {LLMLITE_A8_ROWS(2), LLMLITE_A8_ROWS(4), LLMLITE_A8_ROWS(8)};
#undef LLMLITE_A8_ROWS

}  // namespace

void gemv_a8(const LowbitWeight& w, const A8Activations& a, const float* bias, float* out, int64_t n0,
             int64_t n1) {
  TORCH_CHECK(a.M >= 1 && a.M <= 8, "gemv_a8: ", a.M, " rows; the kernel takes 1..8");
  TORCH_CHECK(a8_vnni_format(w.bits, w.group, w.K), "gemv_a8: bits=", w.bits, " group=", w.group,
              " is not a VNNI format");
  const int bi = w.bits == 2 ? 0 : w.bits == 4 ? 1 : 2;
  kTable[bi][a.M - 1](w, a, bias, out, n0, n1);
}

}  // namespace llmlite::cpu::avx512_vnni

#pragma GCC pop_options
