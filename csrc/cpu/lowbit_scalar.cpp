// Portable scalar build of the low-bit kernels (lowbit_kernel_body.inc): the reference for the SIMD paths.
#include <algorithm>

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
  template <int BITS>
  static inline void decode(const uint8_t* chunk, V s, V nzs, V* out) {
    for (int p = 0; p < kChunk; ++p)
      out[p] = static_cast<float>(code_at(chunk, chunk_code_index(BITS, p), BITS)) * s + nzs;
  }
};

#include "cpu/lowbit_kernel_body.inc"

}  // namespace llmlite::cpu::scalar
