// AVX2+FMA build of the low-bit kernels (lowbit_kernel_body.inc): 8 fp32 lanes, 4 vectors per chunk.
#include <algorithm>
#include <vector>

#include <immintrin.h>

#include <c10/util/Exception.h>

#include "cpu/lowbit_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")

namespace llmlite::cpu::avx2 {

struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kVecs = 4;
  // 16 ymm registers: 4 sums for one row, 2 each up to 4 rows, then 1.
  static constexpr int accumulators(int m) { return m == 1 ? 4 : (m <= 4 ? 2 : 1); }
  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline V set1(float f) { return _mm256_set1_ps(f); }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline float reduce(V v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
  }
  static inline V scaled(__m256i q, V s, V nzs) { return _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), s, nzs); }
  static inline __m256i bytes8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }

  static inline void scales_to_float(const void* src, ScaleType type, int64_t offset, int64_t count,
                                     float* dst) {
    int64_t i = 0;
    if (type == ScaleType::F16) {
      const auto* p = static_cast<const uint16_t*>(src) + offset;
      for (; i + 8 <= count; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
    } else if (type == ScaleType::BF16) {  // bf16 is the top half of an fp32
      const auto* p = static_cast<const uint16_t*>(src) + offset;
      for (; i + 8 <= count; i += 8) {
        const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
      }
    }
    LowbitWeight w{};
    w.scale = src;
    w.scale_type = type;
    w.G = 1;
    for (; i < count; ++i) dst[i] = w.scale_at(offset + i, 0);
  }

  template <int BITS>
  struct Group {
    V s, nzs;
    Group(float scale, float neg_zero_scale) : s(set1(scale)), nzs(set1(neg_zero_scale)) {}
  };

  template <int BITS>
  static inline void decode(const uint8_t* p, const Group<BITS>& grp, V* out) {
    const V s = grp.s, nzs = grp.nzs;
    if constexpr (BITS == 8) {
      for (int j = 0; j < 4; ++j) out[j] = scaled(bytes8(p + 8 * j), s, nzs);
    } else if constexpr (BITS == 4) {  // low nibbles of bytes 0..15, then the high nibbles
      const __m256i v0 = bytes8(p), v1 = bytes8(p + 8), mask = _mm256_set1_epi32(15);
      out[0] = scaled(_mm256_and_si256(v0, mask), s, nzs);
      out[1] = scaled(_mm256_and_si256(v1, mask), s, nzs);
      out[2] = scaled(_mm256_srli_epi32(v0, 4), s, nzs);
      out[3] = scaled(_mm256_srli_epi32(v1, 4), s, nzs);
    } else if constexpr (BITS == 2) {  // bit planes at shifts 0, 4, 2, 6 of bytes 0..7
      const __m256i v = bytes8(p), mask = _mm256_set1_epi32(3);
      out[0] = scaled(_mm256_and_si256(v, mask), s, nzs);
      out[1] = scaled(_mm256_and_si256(_mm256_srli_epi32(v, 4), mask), s, nzs);
      out[2] = scaled(_mm256_and_si256(_mm256_srli_epi32(v, 2), mask), s, nzs);
      out[3] = scaled(_mm256_srli_epi32(v, 6), s, nzs);
    } else {  // 3-bit: 12 bytes, natural order (see kDecode3)
      static_assert(BITS == 3, "bits");
      int32_t hi;
      __builtin_memcpy(&hi, p + 8, 4);
      const __m128i b = _mm_insert_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), hi, 2);
      const __m256i v = _mm256_broadcastsi128_si256(b), mask = _mm256_set1_epi32(7);
      for (int j = 0; j < 4; ++j) {
        const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i*>(kDecode3.shuffle + 8 * j));
        const __m256i sh = _mm256_load_si256(reinterpret_cast<const __m256i*>(kDecode3.shift + 8 * j));
        out[j] = scaled(_mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, idx), sh), mask), s, nzs);
      }
    }
  }
};

#include "cpu/lowbit_kernel_body.inc"

}  // namespace llmlite::cpu::avx2

#pragma GCC pop_options
