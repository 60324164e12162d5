// Portable scalar build of the low-bit kernels (lowbit_kernel_body.inc): the reference for the SIMD paths.
#include <algorithm>
#include <vector>

#include <c10/util/Exception.h>

#include "cpu/lowbit_kernels.h"

namespace llmlite::cpu::scalar {

struct Simd {
  using V = float;
  static constexpr int kLanes = 1;
  static constexpr int kVecs = kChunk;
  static constexpr int accumulators(int m) { return m <= 2 ? 2 : 1; }
  static inline V zero() { return 0.f; }
  static inline V load(const float* p) { return *p; }
  static inline void store(float* p, V v) { *p = v; }
  static inline V set1(float f) { return f; }
  static inline V fma(V a, V b, V c) { return a * b + c; }
  static inline V add(V a, V b) { return a + b; }
  static inline float reduce(V v) { return v; }
  static inline void scales_to_float(const void* src, ScaleType type, int64_t offset, int64_t count,
                                     float* dst) {
    LowbitWeight w{};
    w.scale = src;
    w.scale_type = type;
    w.G = 1;
    for (int64_t i = 0; i < count; ++i) dst[i] = w.scale_at(offset + i, 0);
  }

  template <int BITS>
  struct Group {
    V s, nzs;
    Group(float scale, float neg_zero_scale) : s(set1(scale)), nzs(set1(neg_zero_scale)) {}
  };

  template <int BITS>
  static inline void decode(const uint8_t* chunk, const Group<BITS>& grp, V* out) {
    const V s = grp.s, nzs = grp.nzs;
    for (int p = 0; p < kChunk; ++p)
      out[p] = static_cast<float>(code_at(chunk, chunk_code_index(BITS, p), BITS)) * s + nzs;
  }
};

#include "cpu/lowbit_kernel_body.inc"

}  // namespace llmlite::cpu::scalar
