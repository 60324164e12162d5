// Decoding of the packed low-bit format (llmlite_kernels/formats/lowbit.py), shared by every ISA path.
//
// Code i of a row sits at bits [i*b, i*b+b) of the row's little-endian bit stream; rows start on a
// fresh 32-bit word. The SIMD paths decode 32 codes at a time ("a chunk": 4*b bytes, so every chunk
// starts on a word) and, for 2- and 4-bit, emit them in a bit-plane order that needs no shuffles;
// the activations are permuted once per call into the same order (chunk_code_index), so the dot
// product is unchanged. The row's last K % 32 codes (the tail) are decoded one by one.
#pragma once

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace llmlite::cpu {

constexpr int kChunk = 32;  // codes per SIMD chunk

enum class ScaleType { F32 = 0, F16 = 1, BF16 = 2 };

// Raw pointers and sizes of one packed weight [N, K] (validated by the caller).
struct LowbitWeight {
  const uint8_t* packed;   // N rows of row_bytes
  int64_t row_bytes;       // 4 * ceil(K * bits / 32)
  const void* scale;       // [N, G] of scale_type
  ScaleType scale_type;
  const uint8_t* zero;     // [N, G] uint8, or nullptr (symmetric: 2**(bits-1))
  int64_t N, K, G, group;  // group: codes per group (K for per-channel)
  int64_t Kpad;            // K rounded up to a whole chunk: the permuted activations' row length
  int bits;

  inline float scale_at(int64_t n, int64_t gi) const {
    const int64_t i = n * G + gi;
    switch (scale_type) {
      case ScaleType::F16: return static_cast<float>(static_cast<const c10::Half*>(scale)[i]);
      case ScaleType::BF16: return static_cast<float>(static_cast<const c10::BFloat16*>(scale)[i]);
      default: return static_cast<const float*>(scale)[i];
    }
  }
  inline int zero_at(int64_t n, int64_t gi) const {
    return zero == nullptr ? (1 << (bits - 1)) : static_cast<int>(zero[n * G + gi]);
  }
  inline const uint8_t* row(int64_t n) const { return packed + n * row_bytes; }

  // A view of validated tensors' data: words int32 words per row, K codes per row in G groups of `group`.
  static LowbitWeight view(const int32_t* words_ptr, int64_t words, const void* scale, ScaleType scale_type,
                           const uint8_t* zero, int64_t N, int64_t K, int64_t G, int64_t group, int bits) {
    LowbitWeight w{};
    w.packed = reinterpret_cast<const uint8_t*>(words_ptr);
    w.row_bytes = 4 * words;
    w.scale = scale;
    w.scale_type = scale_type;
    w.zero = zero;
    w.N = N;
    w.K = K;
    w.G = G;
    w.group = group;
    w.Kpad = (K + kChunk - 1) / kChunk * kChunk;
    w.bits = bits;
    return w;
  }
};

// Code i of a row (bit stream read as 32-bit little-endian words; a 3-bit code may straddle two).
inline uint32_t code_at(const uint8_t* row, int64_t i, int bits) {
  const int64_t pos = i * bits;
  const int64_t word = pos >> 5;
  const int shift = static_cast<int>(pos & 31);
  uint32_t w0;
  __builtin_memcpy(&w0, row + 4 * word, 4);
  uint32_t v = w0 >> shift;
  if (shift + bits > 32) {
    uint32_t w1;
    __builtin_memcpy(&w1, row + 4 * (word + 1), 4);
    v |= w1 << (32 - shift);
  }
  return v & ((1u << bits) - 1u);
}

// Which code of a full chunk the SIMD decoders emit at position p (0..31), for every ISA.
//   4-bit: byte j holds codes 2j, 2j+1 -> positions 0..15 are the low nibbles, 16..31 the high ones.
//   2-bit: byte j holds codes 4j..4j+3 -> four planes of 8, in the order shift 0, 4, 2, 6.
//   3/8-bit: natural order.
inline int chunk_code_index(int bits, int p) {
  if (bits == 4) return p < 16 ? 2 * p : 2 * (p - 16) + 1;
  if (bits == 2) {
    static constexpr int plane[4] = {0, 2, 1, 3};
    return 4 * (p % 8) + plane[p / 8];
  }
  return p;
}

// 3-bit SIMD decoding: code i of a chunk (bits [3i, 3i+3) of 12 bytes) is read from a 32-bit lane
// filled by a byte shuffle with bytes (3i/8, 3i/8 + 1) (0x80: zero), then shifted right by 3i % 8.
struct Decode3Tables {
  uint32_t shuffle[kChunk];
  uint32_t shift[kChunk];
};
constexpr Decode3Tables make_decode3_tables() {
  Decode3Tables t{};
  for (int i = 0; i < kChunk; ++i) {
    const uint32_t byte = static_cast<uint32_t>(3 * i) >> 3;
    t.shuffle[i] = byte | ((byte + 1) << 8) | 0x80800000u;
    t.shift[i] = static_cast<uint32_t>(3 * i) & 7u;
  }
  return t;
}
alignas(64) inline constexpr Decode3Tables kDecode3 = make_decode3_tables();

// The row's tail chunk (codes [32*(K/32), K)) dequantized in natural order, zero-padded to 32.
inline void dequant_tail(const LowbitWeight& w, int64_t n, float* dst) {
  const int64_t k0 = (w.K / kChunk) * kChunk;
  const int64_t gi = (w.K - 1) / w.group;
  const float s = w.scale_at(n, gi);
  const int z = w.zero_at(n, gi);
  const uint8_t* row = w.row(n);
  for (int p = 0; p < kChunk; ++p) {
    const int64_t k = k0 + p;
    dst[p] = k < w.K ? static_cast<float>(static_cast<int>(code_at(row, k, w.bits)) - z) * s : 0.f;
  }
}

}  // namespace llmlite::cpu
