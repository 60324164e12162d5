// AVX-512 (F/BW/VL/DQ) build of the low-bit kernels (lowbit_kernel_body.inc): 16 fp32 lanes, 2 vectors
// per chunk.
#include <algorithm>
#include <vector>

#include <immintrin.h>

#include <c10/util/Exception.h>

#include "cpu/lowbit_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c")

namespace llmlite::cpu::avx512 {

// 16 at a time, the rest masked (rows with a few groups, as SmolLM2's, would otherwise pay a scalar fp16
// conversion per group). Also used by the VNNI kernel (lowbit_a8_vnni.cpp).
void scales_to_float(const void* src, ScaleType type, int64_t offset, int64_t count, float* dst) {
  const auto* p16 = static_cast<const uint16_t*>(src) + offset;
  const auto* p32 = static_cast<const float*>(src) + offset;
  for (int64_t i = 0; i < count; i += 16) {
    const __mmask16 k = static_cast<__mmask16>(count - i >= 16 ? 0xFFFF : (1u << (count - i)) - 1);
    __m512 v;
    if (type == ScaleType::F16) {
      v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p16 + i));
    } else if (type == ScaleType::BF16) {  // bf16 is the top half of an fp32
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p16 + i)), 16));
    } else {
      v = _mm512_maskz_loadu_ps(k, p32 + i);
    }
    _mm512_mask_storeu_ps(dst + i, k, v);
  }
}

struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kVecs = 2;
  static constexpr int accumulators(int m) { return m == 1 ? 4 : 2; }
  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline V set1(float f) { return _mm512_set1_ps(f); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline float reduce(V v) { return _mm512_reduce_add_ps(v); }
  static inline V scaled(__m512i q, V s, V nzs) { return _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), s, nzs); }
  static inline __m512i bytes16(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }

  static inline void scales_to_float(const void* src, ScaleType type, int64_t offset, int64_t count,
                                     float* dst) {
    avx512::scales_to_float(src, type, offset, count, dst);
  }

  // Per group: for 2/3/4-bit, a 16-entry table lut[j] = ((j mod 2**b) - z) * s, so that one vpermps
  // (which reads only the low 4 bits of each index lane) turns raw code bits into dequantized weights;
  // 8-bit converts and scales (s, -z*s).
  template <int BITS>
  struct Group {
    V s, nzs, lut;
    Group(float scale, float neg_zero_scale) : s(set1(scale)), nzs(set1(neg_zero_scale)) {
      const __m512i j = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
      const __m512i code = _mm512_and_si512(j, _mm512_set1_epi32((1 << BITS) - 1));
      lut = BITS == 8 ? s : _mm512_fmadd_ps(_mm512_cvtepi32_ps(code), s, nzs);
    }
  };

  template <int BITS>
  static inline void decode(const uint8_t* p, const Group<BITS>& grp, V* out) {
    if constexpr (BITS == 8) {
      out[0] = scaled(bytes16(p), grp.s, grp.nzs);
      out[1] = scaled(bytes16(p + 16), grp.s, grp.nzs);
    } else if constexpr (BITS == 4) {  // low nibbles of bytes 0..15, then the high nibbles
      const __m512i v = bytes16(p);
      out[0] = _mm512_permutexvar_ps(v, grp.lut);
      out[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), grp.lut);
    } else if constexpr (BITS == 2) {  // bytes 0..7 twice; bit planes at shifts 0, 4 | 2, 6
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      const __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi64(b, b));
      const __m512i sh0 = _mm512_set_epi32(4, 4, 4, 4, 4, 4, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0);
      const __m512i sh1 = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 2, 2, 2, 2, 2, 2, 2, 2);
      out[0] = _mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh0), grp.lut);
      out[1] = _mm512_permutexvar_ps(_mm512_srlv_epi32(v, sh1), grp.lut);
    } else {  // 3-bit: 12 bytes, natural order (see kDecode3)
      static_assert(BITS == 3, "bits");
      int32_t hi;
      __builtin_memcpy(&hi, p + 8, 4);
      const __m128i b = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), hi, 2);
      const __m512i v = _mm512_broadcast_i32x4(b);
      for (int j = 0; j < 2; ++j) {
        const __m512i idx = _mm512_load_si512(kDecode3.shuffle + 16 * j);
        const __m512i sh = _mm512_load_si512(kDecode3.shift + 16 * j);
        out[j] = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_shuffle_epi8(v, idx), sh), grp.lut);
      }
    }
  }
};

#include "cpu/lowbit_kernel_body.inc"

}  // namespace llmlite::cpu::avx512

#pragma GCC pop_options
