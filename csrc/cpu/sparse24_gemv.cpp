// llmlite::sparse24_linear / sparse24_lowbit_linear on CPU: a GEMV that streams only the compressed bytes
// (kept values + 2-bit indices, formats/sparse24.py) for batches of 1..8 rows, and for larger batches
// 64-row tiles decompressed to fp32 in each thread and multiplied with at::mm.
//
// GEMV inner step, per int32 meta word (16 kept values, 32 dense columns): the 16 column indices
// 4*(j/2) + ((word >> 2j) & 3) are built in one vector, and the 16 activations they name are picked
// from the word's 32 activations with one two-source permute (AVX-512 vpermt2ps; AVX2: two vpermps and
// a blend on bit 3), then one FMA with the 16 values. The activations are converted once per call to
// fp32, zero-padded to whole words, so padding columns (K % 4 != 0) read 0.
//
// Low-bit kept values: each row is first dequantized into a thread-local fp32 buffer by the low-bit
// decoders of lowbit_kernels.h (chunk-permuted order), put back in natural order (AVX-512: two
// vpermt2ps per 32 values), then the same dot product runs on the buffer.
#include "cpu/sparse24_ops.h"

#include <algorithm>
#include <functional>
#include <vector>

#include <immintrin.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "cpu/isa.h"
#include "cpu/lowbit_kernels.h"
#include "cpu/lowbit_unpack.h"

namespace llmlite::cpu {
namespace {

constexpr int kWordValues = 16;  // kept values per meta word
constexpr int kWordCols = 32;    // dense columns per meta word
constexpr int kMaxGemvBatch = 8;
constexpr int64_t kTileRows = 64;

// sums[m] += dot(x[m, :], row) for a row given by `words` meta words and 16*words fp32 kept values.
// x: fp32 [M, x_stride], x_stride >= 32*words.
using RowDotFn = void (*)(const float* vals, const uint32_t* meta, int64_t words, const float* x,
                          int64_t x_stride, float* sums);

// ---------------------------------------------------------------- scalar (the reference for the SIMD paths)
namespace gemv_scalar {
template <int M>
void row_dot(const float* vals, const uint32_t* meta, int64_t words, const float* x, int64_t x_stride,
             float* sums) {
  float acc[M] = {};
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t bits = meta[w];
    for (int j = 0; j < kWordValues; ++j) {
      const int64_t col = w * kWordCols + 4 * (j >> 1) + ((bits >> (2 * j)) & 3u);
      const float v = vals[w * kWordValues + j];
      for (int m = 0; m < M; ++m) acc[m] += v * x[m * x_stride + col];
    }
  }
  for (int m = 0; m < M; ++m) sums[m] += acc[m];
}
}  // namespace gemv_scalar

// ---------------------------------------------------------------- AVX2 + FMA: 8 values per step
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace gemv_avx2 {
// Columns (0..15, relative to the half word's 16 columns) of values 8h..8h+7 of a meta word.
static inline __m256i half_word_columns(uint32_t bits, int h) {
  const __m256i shifts = _mm256_set_epi32(14, 12, 10, 8, 6, 4, 2, 0);
  const __m256i base = _mm256_set_epi32(12, 12, 8, 8, 4, 4, 0, 0);
  const __m256i idx = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits >> (16 * h))), shifts);
  return _mm256_add_epi32(_mm256_and_si256(idx, _mm256_set1_epi32(3)), base);
}

static inline __m256 pick16(const float* x, __m256i idx) {
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x), idx);  // uses idx & 7
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + 8), idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign
}

template <int M>
void row_dot(const float* vals, const uint32_t* meta, int64_t words, const float* x, int64_t x_stride,
             float* sums) {
  __m256 acc[M][2];
  for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t w = 0; w < words; ++w) {
    const uint32_t bits = meta[w];
    for (int h = 0; h < 2; ++h) {
      const __m256i idx = half_word_columns(bits, h);
      const __m256 v = _mm256_loadu_ps(vals + w * kWordValues + 8 * h);
      for (int m = 0; m < M; ++m)
        acc[m][h] = _mm256_fmadd_ps(v, pick16(x + m * x_stride + w * kWordCols + 16 * h, idx), acc[m][h]);
    }
  }
  for (int m = 0; m < M; ++m) {
    alignas(32) float t[8];
    _mm256_store_ps(t, _mm256_add_ps(acc[m][0], acc[m][1]));
    float s = 0.f;
    for (float f : t) s += f;
    sums[m] += s;
  }
}
}  // namespace gemv_avx2
#pragma GCC pop_options

// ---------------------------------------------------------------- AVX-512: 16 values per step
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
namespace gemv_avx512 {
// Columns (0..31) of the 16 values of a meta word.
static inline __m512i word_columns(uint32_t bits) {
  const __m512i shifts = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i base = _mm512_set_epi32(28, 28, 24, 24, 20, 20, 16, 16, 12, 12, 8, 8, 4, 4, 0, 0);
  const __m512i idx = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(bits)), shifts);
  return _mm512_ternarylogic_epi32(idx, _mm512_set1_epi32(3), base, 0xEA);  // (idx & 3) | base
}

template <int M>
static inline __attribute__((always_inline)) void word_step(const float* vals, uint32_t bits, const float* x,
                                                            int64_t x_stride, __m512* acc) {
  const __m512i idx = word_columns(bits);
  const __m512 v = _mm512_loadu_ps(vals);
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m) {
    const float* xm = x + m * x_stride;
    acc[m] = _mm512_fmadd_ps(v, _mm512_permutex2var_ps(_mm512_loadu_ps(xm), idx, _mm512_loadu_ps(xm + 16)), acc[m]);
  }
}

template <int M>
void row_dot(const float* vals, const uint32_t* meta, int64_t words, const float* x, int64_t x_stride,
             float* sums) {
  constexpr int A = M == 1 ? 4 : (M <= 3 ? 2 : 1);  // independent sums per batch row (FMA latency)
  __m512 acc[A][M];
  for (int a = 0; a < A; ++a)
    for (int m = 0; m < M; ++m) acc[a][m] = _mm512_setzero_ps();
  int64_t w = 0;
  for (; w + A <= words; w += A) {
#pragma GCC unroll 4
    for (int a = 0; a < A; ++a)
      word_step<M>(vals + (w + a) * kWordValues, meta[w + a], x + (w + a) * kWordCols, x_stride, acc[a]);
  }
  for (; w < words; ++w) word_step<M>(vals + w * kWordValues, meta[w], x + w * kWordCols, x_stride, acc[0]);
  for (int m = 0; m < M; ++m) {
    __m512 t = acc[0][m];
    for (int a = 1; a < A; ++a) t = _mm512_add_ps(t, acc[a][m]);
    sums[m] += _mm512_reduce_add_ps(t);
  }
}

// R rows at once (row i: vals + i*vals_stride, meta + i*meta_stride): each activation load serves R rows.
// sums[i * kMaxGemvBatch + m] += dot(x[m, :], row i).
template <int M, int R>
void rows_dot(const float* vals, int64_t vals_stride, const uint32_t* meta, int64_t meta_stride, int64_t words,
              const float* x, int64_t x_stride, float* sums) {
  __m512 acc[R][M];
  for (int i = 0; i < R; ++i)
    for (int m = 0; m < M; ++m) acc[i][m] = _mm512_setzero_ps();
  for (int64_t w = 0; w < words; ++w) {
    __m512i idx[R];
    __m512 v[R];
#pragma GCC unroll 4
    for (int i = 0; i < R; ++i) {
      idx[i] = word_columns(meta[i * meta_stride + w]);
      v[i] = _mm512_loadu_ps(vals + i * vals_stride + w * kWordValues);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const float* xm = x + m * x_stride + w * kWordCols;
      const __m512 x0 = _mm512_loadu_ps(xm), x1 = _mm512_loadu_ps(xm + 16);
#pragma GCC unroll 4
      for (int i = 0; i < R; ++i)
        acc[i][m] = _mm512_fmadd_ps(v[i], _mm512_permutex2var_ps(x0, idx[i], x1), acc[i][m]);
    }
  }
  for (int i = 0; i < R; ++i)
    for (int m = 0; m < M; ++m) sums[i * kMaxGemvBatch + m] += _mm512_reduce_add_ps(acc[i][m]);
}

// 4-bit kept values, fused: row n's dot products straight from its codes (no buffer). Per chunk of 32 kept
// values (16 quads, 64 columns, meta words 2c and 2c+1): the low nibbles of its 16 bytes are the quads'
// first values, the high nibbles their second values, dequantized by a 16-entry table per group (vpermps);
// quad q's columns 4*(q%8) + idx within its 32-column half are picked from x by vpermt2ps on both halves
// and a blend. The kept values past the last full chunk (K2 % 32) are done one by one.
template <int M>
void lowbit4_row_dot(const LowbitWeight& w, int64_t n, const uint32_t* meta, const float* x, int64_t x_stride,
                     float* sums) {
  const uint8_t* codes = w.row(n);
  const int64_t chunks = w.K / kChunk;
  const __m512i sh = _mm512_set_epi32(28, 24, 20, 16, 12, 8, 4, 0, 28, 24, 20, 16, 12, 8, 4, 0);
  const __m512i three = _mm512_set1_epi32(3);
  const __m512 nibble = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512 acc[2][M];  // the quads' first and second values: two independent FMA chains
  for (int m = 0; m < M; ++m) acc[0][m] = acc[1][m] = _mm512_setzero_ps();
  const int64_t chunks_per_group = std::max<int64_t>(1, w.group / kChunk);  // groups hold whole chunks
  for (int64_t c = 0, gi = 0; c < chunks; ++gi) {
    const float s = w.scale_at(n, gi);  // table (j - z) * s for j = 0..15
    const __m512 lut = _mm512_fmadd_ps(nibble, _mm512_set1_ps(s),
                                       _mm512_set1_ps(-static_cast<float>(w.zero_at(n, gi)) * s));
    for (const int64_t c_end = std::min(chunks, c + chunks_per_group); c < c_end; ++c) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16 * c)));
      const __m512 w0 = _mm512_permutexvar_ps(v, lut);  // vpermps reads the low 4 bits: the low nibble
      const __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), lut);
      const __m512i mv = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(meta[2 * c])), 0xFF00,
                                                static_cast<int>(meta[2 * c + 1]));
      const __m512i i0 = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(mv, sh), three, sh, 0xEA);  // (. & 3) | 4(q%8)
      const __m512i i1 =
          _mm512_ternarylogic_epi32(_mm512_srlv_epi32(mv, _mm512_add_epi32(sh, _mm512_set1_epi32(2))), three, sh, 0xEA);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const float* xm = x + m * x_stride + c * 2 * kChunk;
        const __m512 x0 = _mm512_loadu_ps(xm), x1 = _mm512_loadu_ps(xm + 16);
        const __m512 x2 = _mm512_loadu_ps(xm + 32), x3 = _mm512_loadu_ps(xm + 48);
        const __m512 a0 = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(x0, i0, x1),
                                               _mm512_permutex2var_ps(x2, i0, x3));
        const __m512 a1 = _mm512_mask_blend_ps(0xFF00, _mm512_permutex2var_ps(x0, i1, x1),
                                               _mm512_permutex2var_ps(x2, i1, x3));
        acc[0][m] = _mm512_fmadd_ps(w0, a0, acc[0][m]);
        acc[1][m] = _mm512_fmadd_ps(w1, a1, acc[1][m]);
      }
    }
  }
  float tail[kMaxGemvBatch] = {};
  for (int64_t j = chunks * kChunk; j < w.K; ++j) {
    const int64_t gi = j / w.group;
    const float v = static_cast<float>(static_cast<int>(code_at(codes, j, 4)) - w.zero_at(n, gi)) * w.scale_at(n, gi);
    const int64_t col = 4 * (j >> 1) + ((meta[j / kWordValues] >> (2 * (j % kWordValues))) & 3u);
    for (int m = 0; m < M; ++m) tail[m] += v * x[m * x_stride + col];
  }
  for (int m = 0; m < M; ++m) sums[m] += _mm512_reduce_add_ps(_mm512_add_ps(acc[0][m], acc[1][m])) + tail[m];
}

// In place: every full 32-value chunk of buf from the low-bit decoders' order (chunk_code_index) back to
// natural order.
void unpermute_chunks(int bits, float* buf, int64_t chunks) {
  alignas(64) int32_t inv[kChunk];
  for (int p = 0; p < kChunk; ++p) inv[chunk_code_index(bits, p)] = p;
  const __m512i i0 = _mm512_load_si512(inv), i1 = _mm512_load_si512(inv + 16);
  for (int64_t c = 0; c < chunks; ++c) {
    float* p = buf + c * kChunk;
    const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    _mm512_storeu_ps(p, _mm512_permutex2var_ps(a, i0, b));
    _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(a, i1, b));
  }
}
}  // namespace gemv_avx512
#pragma GCC pop_options

void unpermute_chunks_scalar(int bits, float* buf, int64_t chunks) {
  float tmp[kChunk];
  for (int64_t c = 0; c < chunks; ++c) {
    float* p = buf + c * kChunk;
    for (int q = 0; q < kChunk; ++q) tmp[chunk_code_index(bits, q)] = p[q];
    std::copy(tmp, tmp + kChunk, p);
  }
}

using RowsDotFn = void (*)(const float* vals, int64_t vals_stride, const uint32_t* meta, int64_t meta_stride,
                           int64_t words, const float* x, int64_t x_stride, float* sums);
constexpr int rows_per_pass(int m) { return m == 1 ? 4 : 2; }

// The multi-row kernel (AVX-512 only; nullptr: the single-row kernel runs row by row).
RowsDotFn rows_dot_kernel(Isa isa, int m) {
  using namespace gemv_avx512;
  static const RowsDotFn table[kMaxGemvBatch] = {
      &rows_dot<1, rows_per_pass(1)>, &rows_dot<2, rows_per_pass(2)>, &rows_dot<3, rows_per_pass(3)>,
      &rows_dot<4, rows_per_pass(4)>, &rows_dot<5, rows_per_pass(5)>, &rows_dot<6, rows_per_pass(6)>,
      &rows_dot<7, rows_per_pass(7)>, &rows_dot<8, rows_per_pass(8)>};
  return isa == Isa::Avx512 ? table[m - 1] : nullptr;
}

using Lowbit4RowDotFn = void (*)(const LowbitWeight& w, int64_t n, const uint32_t* meta, const float* x,
                                 int64_t x_stride, float* sums);
Lowbit4RowDotFn lowbit4_row_dot_kernel(int m) {
  using namespace gemv_avx512;
  static const Lowbit4RowDotFn table[kMaxGemvBatch] = {&lowbit4_row_dot<1>, &lowbit4_row_dot<2>, &lowbit4_row_dot<3>,
                                                       &lowbit4_row_dot<4>, &lowbit4_row_dot<5>, &lowbit4_row_dot<6>,
                                                       &lowbit4_row_dot<7>, &lowbit4_row_dot<8>};
  return table[m - 1];
}

#define LLMLITE_ROW_DOTS(ns) \
  {&ns::row_dot<1>, &ns::row_dot<2>, &ns::row_dot<3>, &ns::row_dot<4>, &ns::row_dot<5>, &ns::row_dot<6>, \
   &ns::row_dot<7>, &ns::row_dot<8>}

RowDotFn row_dot_kernel(Isa isa, int rows) {
  static const RowDotFn table[3][kMaxGemvBatch] = {LLMLITE_ROW_DOTS(gemv_scalar), LLMLITE_ROW_DOTS(gemv_avx2),
                                                   LLMLITE_ROW_DOTS(gemv_avx512)};
  return table[static_cast<int>(isa)][rows - 1];
}
#undef LLMLITE_ROW_DOTS

void check_cpu_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " is on ", t.device(), "; the CPU kernel needs CPU tensors");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

int64_t kept_features(int64_t k) { return (k + 3) / 4 * 2; }
int64_t meta_words(int64_t k) { return (k + 31) / 32; }

// Checks x, meta and bias against out_features n; returns x's in_features.
int64_t check_common(const at::Tensor& x, const at::Tensor& meta, const std::optional<at::Tensor>& bias,
                     int64_t n) {
  check_cpu_tensor(x, "x");
  const at::ScalarType dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, "x has dtype ", dtype,
                   "; accepted: float32, float16, bfloat16");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension [..., in_features], got shape ", x.sizes());
  const int64_t k = x.size(-1);
  check_cpu_tensor(meta, "meta");
  TORCH_CHECK_TYPE(meta.scalar_type() == at::kInt, "meta has dtype ", meta.scalar_type(), "; accepted: int32");
  TORCH_CHECK_VALUE(meta.dim() == 2 && meta.size(0) == n && meta.size(1) == meta_words(k), "meta has shape ",
                    meta.sizes(), "; for out_features=", n, ", in_features=", k, " expected (", n, ", ",
                    meta_words(k), ")");
  if (bias.has_value() && bias->defined()) {
    check_cpu_tensor(*bias, "bias");
    TORCH_CHECK_TYPE(bias->scalar_type() == dtype, "bias has dtype ", bias->scalar_type(), "; expected x.dtype (",
                     dtype, ")");
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias has shape ", bias->sizes(),
                      "; expected (out_features=", n, ",)");
  }
  return k;
}

// x [..., K] -> fp32 [M, 32*words], zero-padded.
at::Tensor padded_activations(const at::Tensor& x, int64_t m_rows, int64_t k) {
  const int64_t stride = meta_words(k) * kWordCols;
  at::Tensor xp = at::zeros({m_rows, stride}, x.options().dtype(at::kFloat));
  xp.narrow(1, 0, k).copy_(x.reshape({m_rows, k}));
  return xp;
}

// Writes row n's kept values, fp32, natural order, into buf (>= 16*words floats, zero beyond K2).
using RowValuesFn = std::function<void(int64_t n, float* buf)>;
// Or, for the GEMV: row n's dot products computed directly (sums[m] += ...).
using FusedRowFn = std::function<void(int64_t n, const uint32_t* meta, const float* x, int64_t x_stride,
                                      float* sums)>;

// The shared driver: GEMV (batch <= 8) or tiled decompress + at::mm; out fp32 [M, N] (+ bias).
at::Tensor run(const at::Tensor& x, const at::Tensor& meta, const std::optional<at::Tensor>& bias, int64_t n,
               int64_t k, int64_t buf_len, const RowValuesFn& row_values, const float* direct_values,
               const FusedRowFn& fused_row = nullptr) {
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = n;
  const int64_t m_rows = k == 0 ? 0 : x.numel() / k;
  if (m_rows == 0 || n == 0) return at::zeros(out_shape, x.options());
  const int64_t words = meta_words(k), k2 = kept_features(k), full_words = k2 / kWordValues;
  const at::Tensor xp = padded_activations(x, m_rows, k);
  const float* xs = xp.data_ptr<float>();
  const int64_t x_stride = xp.size(1);
  const auto* meta_ptr = reinterpret_cast<const uint32_t*>(meta.data_ptr<int32_t>());
  at::Tensor out = at::empty({m_rows, n}, x.options().dtype(at::kFloat));
  float* out_ptr = out.data_ptr<float>();
  const Isa isa = active_isa();

  if (m_rows <= kMaxGemvBatch) {
    const RowDotFn dot = row_dot_kernel(isa, static_cast<int>(m_rows));
    const RowsDotFn rows_dot = fused_row ? nullptr : rows_dot_kernel(isa, static_cast<int>(m_rows));
    const int pass = rows_per_pass(static_cast<int>(m_rows));
    const int64_t blen = std::max<int64_t>(buf_len, kWordValues);
    at::parallel_for(0, n, 16, [&](int64_t n0, int64_t n1) {
      std::vector<float> buf(blen * (rows_dot != nullptr ? pass : 1), 0.f);
      int64_t r = n0;
      for (; rows_dot != nullptr && r + pass <= n1; r += pass) {
        const uint32_t* mrow = meta_ptr + r * words;
        float sums[kMaxGemvBatch * 4] = {};
        if (direct_values != nullptr) {
          const float* vrow = direct_values + r * k2;
          rows_dot(vrow, k2, mrow, words, full_words, xs, x_stride, sums);
          for (int i = 0; full_words < words && i < pass; ++i) {  // each row's partial last word
            std::fill(buf.begin(), buf.begin() + kWordValues, 0.f);
            std::copy(vrow + i * k2 + full_words * kWordValues, vrow + (i + 1) * k2, buf.begin());
            dot(buf.data(), mrow + i * words + full_words, 1, xs + full_words * kWordCols, x_stride,
                sums + i * kMaxGemvBatch);
          }
        } else {
          for (int i = 0; i < pass; ++i) row_values(r + i, buf.data() + i * blen);
          rows_dot(buf.data(), blen, mrow, words, words, xs, x_stride, sums);
        }
        for (int i = 0; i < pass; ++i)
          for (int64_t m = 0; m < m_rows; ++m) out_ptr[m * n + r + i] = sums[i * kMaxGemvBatch + m];
      }
      for (; r < n1; ++r) {
        const uint32_t* mrow = meta_ptr + r * words;
        float sums[kMaxGemvBatch] = {};
        if (fused_row) {
          fused_row(r, mrow, xs, x_stride, sums);
        } else if (direct_values != nullptr) {  // fp32 values: read in place, the partial last word via buf
          const float* vrow = direct_values + r * k2;
          dot(vrow, mrow, full_words, xs, x_stride, sums);
          if (full_words < words) {
            std::fill(buf.begin(), buf.begin() + kWordValues, 0.f);
            std::copy(vrow + full_words * kWordValues, vrow + k2, buf.begin());
            dot(buf.data(), mrow + full_words, 1, xs + full_words * kWordCols, x_stride, sums);
          }
        } else {
          row_values(r, buf.data());
          dot(buf.data(), mrow, words, xs, x_stride, sums);
        }
        for (int64_t m = 0; m < m_rows; ++m) out_ptr[m * n + r] = sums[m];
      }
    });
  } else {
    const int64_t k4 = 2 * k2, tiles = (n + kTileRows - 1) / kTileRows;
    const at::Tensor xk = xp.narrow(1, 0, k4);
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      std::vector<float> buf(std::max<int64_t>(buf_len, words * kWordValues), 0.f);
      at::Tensor tile = at::empty({kTileRows, k4}, xp.options());
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = t * kTileRows, rows = std::min(kTileRows, n - r0);
        tile.zero_();
        float* dst = tile.data_ptr<float>();
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t r = r0 + i;
          const float* vals = buf.data();
          if (direct_values != nullptr) vals = direct_values + r * k2;
          else row_values(r, buf.data());
          const uint32_t* mrow = meta_ptr + r * words;
          for (int64_t j = 0; j < k2; ++j)
            dst[i * k4 + 4 * (j >> 1) + ((mrow[j / kWordValues] >> (2 * (j % kWordValues))) & 3u)] = vals[j];
        }
        out.narrow(1, r0, rows).copy_(at::mm(xk, tile.narrow(0, 0, rows).t()));
      }
    });
  }
  if (bias.has_value() && bias->defined()) out.add_(bias->to(at::kFloat));
  const at::Tensor result = x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type());
  return result.view(out_shape);
}

}  // namespace

at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias) {
  check_cpu_tensor(values, "values");
  TORCH_CHECK_VALUE(values.dim() == 2, "values must be 2-D [out_features, K4/2], got shape ", values.sizes());
  const int64_t n = values.size(0);
  const int64_t k = check_common(x, meta, bias, n);
  TORCH_CHECK_TYPE(values.scalar_type() == x.scalar_type(), "values has dtype ", values.scalar_type(),
                   "; expected x.dtype (", x.scalar_type(), ")");
  const int64_t k2 = kept_features(k), words = meta_words(k);
  TORCH_CHECK_VALUE(values.size(1) == k2, "values has shape ", values.sizes(), "; for in_features=", k,
                    " expected [out_features, ", k2, "] (2 per group of 4 columns)");
  if (values.scalar_type() == at::kFloat)
    return run(x, meta, bias, n, k, kWordValues, nullptr, values.data_ptr<float>());
  RowValuesFn row_values;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(values.scalar_type(), "sparse24_linear_cpu", [&] {
    const scalar_t* v = values.data_ptr<scalar_t>();
    row_values = [v, k2, words](int64_t r, float* buf) {
      const scalar_t* row = v + r * k2;
      for (int64_t j = 0; j < k2; ++j) buf[j] = static_cast<float>(row[j]);
      std::fill(buf + k2, buf + words * kWordValues, 0.f);
    };
  });
  return run(x, meta, bias, n, k, words * kWordValues, row_values, nullptr);
}

at::Tensor sparse24_lowbit_linear_cpu(const at::Tensor& x, const at::Tensor& weight_packed,
                                      const at::Tensor& weight_scale,
                                      const std::optional<at::Tensor>& weight_zero_point, const at::Tensor& meta,
                                      const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  TORCH_CHECK_VALUE(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits=", bits,
                    " is not supported; accepted: 2, 3, 4, 8");
  TORCH_CHECK_VALUE(group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256 ||
                        group_size == -1,
                    "group_size=", group_size, " is not supported; accepted: 32, 64, 128, 256, -1");
  check_cpu_tensor(weight_packed, "weight_packed");
  TORCH_CHECK_TYPE(weight_packed.scalar_type() == at::kInt, "weight_packed has dtype ",
                   weight_packed.scalar_type(), "; accepted: int32");
  TORCH_CHECK_VALUE(weight_packed.dim() == 2, "weight_packed must be 2-D, got shape ", weight_packed.sizes());
  const int64_t n = weight_packed.size(0);
  const int64_t k = check_common(x, meta, bias, n);
  const int64_t k2 = kept_features(k);  // the low-bit weight's in_features
  const int64_t code_words = (k2 * bits + 31) / 32;
  TORCH_CHECK_VALUE(weight_packed.size(1) == code_words, "weight_packed has shape ", weight_packed.sizes(),
                    "; for in_features=", k, " (", k2, " kept values) at bits=", bits, " expected [", n, ", ",
                    code_words, "]");
  const int64_t group = group_size == -1 ? k2 : group_size, groups = (k2 + group - 1) / group;
  check_cpu_tensor(weight_scale, "weight_scale");
  ScaleType stype = ScaleType::F32;
  switch (weight_scale.scalar_type()) {
    case at::kFloat: break;
    case at::kHalf: stype = ScaleType::F16; break;
    case at::kBFloat16: stype = ScaleType::BF16; break;
    default:
      TORCH_CHECK_TYPE(false, "weight_scale has dtype ", weight_scale.scalar_type(),
                       "; accepted: float32, float16, bfloat16");
  }
  TORCH_CHECK_VALUE(weight_scale.dim() == 2 && weight_scale.size(0) == n && weight_scale.size(1) == groups,
                    "weight_scale has shape ", weight_scale.sizes(), "; expected (", n, ", ", groups, ")");
  const uint8_t* zero = nullptr;
  if (weight_zero_point.has_value() && weight_zero_point->defined()) {
    const at::Tensor& z = *weight_zero_point;
    check_cpu_tensor(z, "weight_zero_point");
    TORCH_CHECK_TYPE(z.scalar_type() == at::kByte, "weight_zero_point has dtype ", z.scalar_type(),
                     "; accepted: uint8");
    TORCH_CHECK_VALUE(z.dim() == 2 && z.size(0) == n && z.size(1) == groups, "weight_zero_point has shape ",
                      z.sizes(), "; expected (", n, ", ", groups, ")");
    zero = z.data_ptr<uint8_t>();
  }
  // Kpad (k2 rounded up to a whole chunk) is >= 16 * meta words.
  const LowbitWeight w = LowbitWeight::view(weight_packed.data_ptr<int32_t>(), code_words, weight_scale.data_ptr(),
                                            stype, zero, n, k2, groups, group, static_cast<int>(bits));

  const Isa isa = active_isa();
  const DequantPermutedFn dequant = dequant_permuted_kernel(isa, w.bits);
  const int64_t full_chunks = k2 / kChunk;
  const bool permuted = bits == 2 || bits == 4;  // 3- and 8-bit chunks decode in natural order
  const RowValuesFn row_values = [&w, dequant, full_chunks, permuted, isa](int64_t r, float* buf) {
    dequant(w, r, r + 1, buf);
    if (!permuted) return;
    if (isa == Isa::Avx512) gemv_avx512::unpermute_chunks(w.bits, buf, full_chunks);
    else unpermute_chunks_scalar(w.bits, buf, full_chunks);
  };
  FusedRowFn fused;
  const int64_t m_rows = k == 0 ? 0 : x.numel() / k;
  if (isa == Isa::Avx512 && bits == 4 && m_rows >= 1 && m_rows <= kMaxGemvBatch) {
    const Lowbit4RowDotFn fn = lowbit4_row_dot_kernel(static_cast<int>(m_rows));
    fused = [&w, fn](int64_t r, const uint32_t* mrow, const float* xs, int64_t x_stride, float* sums) {
      fn(w, r, mrow, xs, x_stride, sums);
    };
  }
  return run(x, meta, bias, n, k, w.Kpad, row_values, nullptr, fused);
}

}  // namespace llmlite::cpu
