// Dynamic int8 quantization of the activations for llmlite::lowbit_linear_a8 (portable C++, and AVX-512
// where the CPU has it), written to round exactly as reference.quantize_activations_int8: fp32 max|x|,
// fp32 division, round half to even.
#include <algorithm>
#include <cmath>

#include <immintrin.h>

#include "cpu/isa.h"
#include "cpu/lowbit_a8.h"

namespace llmlite::cpu {
namespace {

void quantize_rows_portable(const float* x, int64_t M, int64_t K, int8_t* xq, float* sx) {
  const int64_t kb = (K + kA8Block - 1) / kA8Block;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int8_t* qr = xq + m * kb * kA8Block;
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t k0 = b * kA8Block, k1 = std::min(K, k0 + kA8Block);
      float amax = 0.f;
      for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float s = amax / 127.0f;
      sx[m * kb + b] = s;
      for (int64_t k = k0; k < k0 + kA8Block; ++k) {
        const float q = (k < k1 && s > 0.f) ? std::nearbyint(xr[k] / s) : 0.f;
        qr[k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, q)));
      }
    }
  }
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq")
// The same arithmetic 16 lanes at a time (the scalar loop's division and nearbyint call cost ~10 ns per
// input: more than the GEMV itself at K = 4608).
void quantize_rows_avx512(const float* x, int64_t M, int64_t K, int8_t* xq, float* sx) {
  const int64_t kb = (K + kA8Block - 1) / kA8Block;
  const __m512 lim = _mm512_set1_ps(127.f);
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    int8_t* qr = xq + m * kb * kA8Block;
    for (int64_t b = 0; b < kb; ++b) {
      const int64_t k0 = b * kA8Block, n = std::min<int64_t>(kA8Block, K - k0);
      __m512 amax = _mm512_setzero_ps();
      for (int64_t i = 0; i < kA8Block; i += 16) {
        const __mmask16 k = static_cast<__mmask16>(n - i >= 16 ? 0xFFFF : n - i <= 0 ? 0 : (1u << (n - i)) - 1);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(k, xr + k0 + i)));
      }
      const float s = _mm512_reduce_max_ps(amax) / 127.0f;
      sx[m * kb + b] = s;
      const __m512 sv = _mm512_set1_ps(s > 0.f ? s : 1.f);
      for (int64_t i = 0; i < kA8Block; i += 16) {
        const __mmask16 k = static_cast<__mmask16>(
            s <= 0.f ? 0 : n - i >= 16 ? 0xFFFF : n - i <= 0 ? 0 : (1u << (n - i)) - 1);
        __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(k, xr + k0 + i), sv),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        q = _mm512_max_ps(_mm512_min_ps(q, lim), _mm512_sub_ps(_mm512_setzero_ps(), lim));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qr + k0 + i), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
      }
    }
  }
}
#pragma GCC pop_options

}  // namespace

void quantize_activations_a8(const float* x, int64_t M, int64_t K, int8_t* xq, float* sx) {
  if (active_isa() == Isa::Avx512) quantize_rows_avx512(x, M, K, xq, sx);
  else quantize_rows_portable(x, M, K, xq, sx);
}

void a8_vnni_order(const int8_t* xq, const float* sx, int64_t M, int64_t Kb, int bits, int8_t* dst,
                   float* sxsum) {
  int perm[kA8Block];
  for (int p = 0; p < kA8Block; ++p) perm[p] = a8_code_index(bits, p);
  for (int64_t mb = 0; mb < M * Kb; ++mb) {
    const int8_t* src = xq + mb * kA8Block;
    int8_t* out = dst + mb * kA8Block;
    int32_t sum = 0;
    for (int p = 0; p < kA8Block; ++p) {
      out[p] = src[perm[p]];
      sum += src[p];
    }
    sxsum[mb] = sx[mb] * static_cast<float>(sum);
  }
}

}  // namespace llmlite::cpu
