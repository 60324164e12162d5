// Dynamic int8 quantization of the activations for llmlite::lowbit_linear_a8 (portable C++), written to
// round exactly as reference.quantize_activations_int8: fp32 max|x|, fp32 division, round half to even.
#include <algorithm>
#include <cmath>

#include "cpu/lowbit_a8.h"

namespace llmlite::cpu {

void quantize_activations_a8(const float* x, int64_t M, int64_t K, int8_t* xq, float* sx) {
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
