// llmlite::lowbit_linear / lowbit_linear_a8 / lowbit_dequantize / cpu_isa on CPU: argument checks, activation permutation,
// and the choice between the GEMV kernels (small batches: stream the packed weight once per 8 rows) and
// the tiled GEMM (dequantize tiles of W to fp32, multiply with at::mm).
#include "cpu/lowbit_ops.h"

#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "cpu/isa.h"
#include "cpu/lowbit_a8.h"
#include "cpu/lowbit_kernels.h"
#include "cpu/lowbit_unpack.h"

namespace llmlite::cpu {
namespace {

constexpr int64_t kGemmTileBytes = 32 << 20;
// Batches up to this many rows run the GEMV kernels (in passes of 8); larger ones the tiled GEMM.
constexpr int64_t kGemvMaxBatch = 48;

// Errors are raised as the Python checks raise them (llmlite_kernels/_checks.py): TypeError for a
// wrong dtype, ValueError for a wrong value, shape, layout or device, with the same wording.
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kByte: return "uint8";
    case at::kChar: return "int8";
    case at::kBool: return "bool";
    default: return c10::toString(t);
  }
}

void check_dtype(const at::Tensor& t, const char* name, std::initializer_list<at::ScalarType> accepted) {
  for (at::ScalarType a : accepted)
    if (t.scalar_type() == a) return;
  std::string names;
  for (at::ScalarType a : accepted) names += (names.empty() ? "" : ", ") + dtype_name(a);
  TORCH_CHECK_TYPE(false, name, " has dtype ", dtype_name(t.scalar_type()), "; accepted: ", names);
}

void check_cpu_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " is undefined");
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " is on ", t.device(), "; the CPU kernel needs CPU tensors");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, name, " must be a dense (strided) tensor");
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

ScaleType scale_type_of(const at::Tensor& s) {
  check_dtype(s, "weight_scale", {at::kFloat, at::kHalf, at::kBFloat16});
  return s.scalar_type() == at::kHalf ? ScaleType::F16
         : s.scalar_type() == at::kBFloat16 ? ScaleType::BF16 : ScaleType::F32;
}

void check_format(int64_t bits, int64_t group_size) {
  TORCH_CHECK_VALUE(bits == 2 || bits == 3 || bits == 4 || bits == 8, "bits=", bits,
              " is not supported; accepted: 2, 3, 4, 8");
  TORCH_CHECK_VALUE(group_size == 32 || group_size == 64 || group_size == 128 || group_size == 256 || group_size == -1,
              "group_size=", group_size, " is not supported; accepted: 32, 64, 128, 256, -1");
}

// Validates the packed weight (the same rules as formats.lowbit.check_packed) and wraps its pointers.
LowbitWeight make_weight(const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                         const std::optional<at::Tensor>& weight_zero_point, int64_t bits, int64_t group_size,
                         int64_t in_features) {
  check_format(bits, group_size);
  TORCH_CHECK_VALUE(in_features >= 1, "in_features must be >= 1, got ", in_features);
  check_cpu_tensor(weight_packed, "weight_packed");
  check_dtype(weight_packed, "weight_packed", {at::kInt});
  TORCH_CHECK_VALUE(weight_packed.dim() == 2, "weight_packed must be 2-D, got shape ", weight_packed.sizes());
  const int64_t n = weight_packed.size(0);
  const int64_t words = (in_features * bits + 31) / 32;
  TORCH_CHECK_VALUE(weight_packed.size(1) == words, "weight_packed has shape ", weight_packed.sizes(),
              "; for in_features=", in_features, " at bits=", bits, " expected [out_features, ", words, "]");
  const int64_t group = group_size == -1 ? in_features : group_size;
  const int64_t groups = (in_features + group - 1) / group;
  check_cpu_tensor(weight_scale, "weight_scale");
  const ScaleType stype = scale_type_of(weight_scale);
  TORCH_CHECK_VALUE(weight_scale.dim() == 2 && weight_scale.size(0) == n && weight_scale.size(1) == groups,
              "weight_scale has shape ", weight_scale.sizes(), "; expected (", n, ", ", groups, ")");
  const uint8_t* zero = nullptr;
  if (weight_zero_point.has_value() && weight_zero_point->defined()) {
    const at::Tensor& z = *weight_zero_point;
    check_cpu_tensor(z, "weight_zero_point");
    check_dtype(z, "weight_zero_point", {at::kByte});
    TORCH_CHECK_VALUE(z.dim() == 2 && z.size(0) == n && z.size(1) == groups, "weight_zero_point has shape ", z.sizes(),
                "; expected (", n, ", ", groups, ")");
    zero = z.data_ptr<uint8_t>();
  }
  return LowbitWeight::view(weight_packed.data_ptr<int32_t>(), words, weight_scale.data_ptr(), stype, zero, n,
                            in_features, groups, group, static_cast<int>(bits));
}

// x [M, K] -> fp32 [M, Kpad]: every full chunk reordered as the decoders emit W (chunk_code_index),
// the tail chunk in natural order, zero-padded.
at::Tensor permute_activations(const at::Tensor& x2d, const LowbitWeight& w) {
  const int64_t m_rows = x2d.size(0), k = w.K, kpad = w.Kpad, full = k / kChunk;
  at::Tensor xp = at::empty({m_rows, kpad}, x2d.options().dtype(at::kFloat));
  int perm[kChunk];
  for (int p = 0; p < kChunk; ++p) perm[p] = chunk_code_index(w.bits, p);
  float* dst = xp.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x2d.scalar_type(), "permute_activations", [&] {
    const scalar_t* src = x2d.data_ptr<scalar_t>();
    at::parallel_for(0, m_rows, std::max<int64_t>(1, 16384 / kpad), [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const scalar_t* xs = src + m * k;
        float* xd = dst + m * kpad;
        for (int64_t c = 0; c < full; ++c)
          for (int p = 0; p < kChunk; ++p) xd[c * kChunk + p] = static_cast<float>(xs[c * kChunk + perm[p]]);
        for (int64_t i = full * kChunk; i < kpad; ++i) xd[i] = i < k ? static_cast<float>(xs[i]) : 0.f;
      }
    });
  });
  return xp;
}

// Batches of up to 8 rows per pass over W (each pass streams the packed weight once).
void gemv(Isa isa, const LowbitWeight& w, const at::Tensor& xp, const float* bias, float* out) {
  const int64_t m_rows = xp.size(0);
  for (int64_t m0 = 0; m0 < m_rows; m0 += kMaxGemvRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kMaxGemvRows, m_rows - m0));
    const GemvFn fn = gemv_kernel(isa, w.bits, rows);
    const float* x = xp.data_ptr<float>() + m0 * w.Kpad;
    float* o = out + m0 * w.N;
    at::parallel_for(0, w.N, 16, [&](int64_t n0, int64_t n1) { fn(w, x, bias, o, n0, n1); });
  }
}

// Tiles of W (up to kGemmTileBytes of fp32) dequantized by all threads, then one at::mm per tile
// (MKL/oneDNN, all threads) writing straight into out's columns.
void gemm(Isa isa, const LowbitWeight& w, const at::Tensor& xp, const float* bias, at::Tensor& out) {
  const DequantPermutedFn dequant = dequant_permuted_kernel(isa, w.bits);
  const int64_t tile_rows = std::min(w.N, std::max<int64_t>(64, kGemmTileBytes / (4 * w.Kpad) / 64 * 64));
  at::Tensor tile = at::empty({tile_rows, w.Kpad}, xp.options());
  float* buf = tile.data_ptr<float>();
  for (int64_t t0 = 0; t0 < w.N; t0 += tile_rows) {
    const int64_t rows = std::min(tile_rows, w.N - t0);
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { dequant(w, t0 + r0, t0 + r1, buf + r0 * w.Kpad); });
    at::Tensor dst = out.narrow(1, t0, rows);
    at::mm_out(dst, xp, tile.narrow(0, 0, rows).t());
  }
  if (bias != nullptr) out.add_(at::from_blob(const_cast<float*>(bias), {w.N}, out.options()));
}

// The validated arguments of lowbit_linear / lowbit_linear_a8.
struct LinearArgs {
  LowbitWeight w;
  at::Tensor bias_f;  // fp32, or undefined
  std::vector<int64_t> out_shape;
  int64_t m_rows;
  const float* bias() const { return bias_f.defined() ? bias_f.data_ptr<float>() : nullptr; }
};

// Validates x [..., K]; returns K.
int64_t check_activations(const at::Tensor& x) {
  check_cpu_tensor(x, "x");
  check_dtype(x, "x", {at::kFloat, at::kHalf, at::kBFloat16});
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have at least 1 dimension [..., in_features], got shape ", x.sizes());
  return x.size(-1);
}

// The validated bias [n] in fp32, or an undefined tensor.
at::Tensor float_bias(const std::optional<at::Tensor>& bias, const at::Tensor& x, int64_t n) {
  if (!bias.has_value() || !bias->defined()) return {};
  check_cpu_tensor(*bias, "bias");
  check_dtype(*bias, "bias", {x.scalar_type()});
  TORCH_CHECK_VALUE(bias->dim() == 1, "bias must be 1-D, got shape ", bias->sizes());
  TORCH_CHECK_VALUE(bias->size(0) == n, "bias has ", bias->size(0), " elements; expected out_features=", n);
  return bias->to(at::kFloat).contiguous();
}

std::vector<int64_t> out_shape_of(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

LinearArgs check_linear(const at::Tensor& x, const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                        const std::optional<at::Tensor>& weight_zero_point, const std::optional<at::Tensor>& bias,
                        int64_t bits, int64_t group_size) {
  const int64_t k = check_activations(x);
  LinearArgs args{make_weight(weight_packed, weight_scale, weight_zero_point, bits, group_size, k), {}, {}, 0};
  args.bias_f = float_bias(bias, x, args.w.N);
  args.out_shape = out_shape_of(x, args.w.N);
  args.m_rows = x.numel() / k;
  return args;
}

// x [M, K] (any float dtype) quantized to int8 per row and 128-input block: xq [M, Kb * 128], sx [M, Kb].
std::pair<at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x, int64_t m_rows, int64_t k) {
  const int64_t kb = (k + kA8Block - 1) / kA8Block;
  const at::Tensor xf = x.reshape({m_rows, k}).to(at::kFloat).contiguous();
  at::Tensor xq = at::empty({m_rows, kb * kA8Block}, xf.options().dtype(at::kChar));
  at::Tensor sx = at::empty({m_rows, kb}, xf.options());
  quantize_activations_a8(xf.data_ptr<float>(), m_rows, k, xq.data_ptr<int8_t>(), sx.data_ptr<float>());
  return {xq, sx};
}

// fp32 [M, N] = x2d @ W^T + bias: the GEMV kernels for small batches, the tiled GEMM above.
at::Tensor linear_fp32(const LinearArgs& args, const at::Tensor& x2d) {
  const Isa isa = active_isa();
  const at::Tensor xp = permute_activations(x2d, args.w);
  at::Tensor out = at::empty({args.m_rows, args.w.N}, x2d.options().dtype(at::kFloat));
  if (args.m_rows <= kGemvMaxBatch) {
    gemv(isa, args.w, xp, args.bias(), out.data_ptr<float>());
  } else {
    gemm(isa, args.w, xp, args.bias(), out);
  }
  return out;
}

bool a8_uses_vnni(const LowbitWeight& w) {
  return active_isa() == Isa::Avx512 && cpu_has_vnni() && a8_vnni_format(w.bits, w.group, w.K);
}

// lowbit_linear_a8 on int8 activations with VNNI, 8 rows per pass over the weight.
at::Tensor linear_a8_vnni(const LinearArgs& args, const at::Tensor& xq, const at::Tensor& sx) {
  const LowbitWeight& w = args.w;
  const int64_t kb = sx.size(1);
  at::Tensor ordered = at::empty_like(xq);
  at::Tensor sxsum = at::empty_like(sx);
  a8_vnni_order(xq.data_ptr<int8_t>(), sx.data_ptr<float>(), args.m_rows, kb, w.bits, ordered.data_ptr<int8_t>(),
                sxsum.data_ptr<float>());
  at::Tensor out = at::empty({args.m_rows, w.N}, sx.options());
  for (int64_t m0 = 0; m0 < args.m_rows; m0 += kMaxGemvRows) {
    const int64_t rows = std::min<int64_t>(kMaxGemvRows, args.m_rows - m0);
    const A8Activations a{ordered.data_ptr<int8_t>() + m0 * kb * kA8Block, sx.data_ptr<float>() + m0 * kb,
                          sxsum.data_ptr<float>() + m0 * kb, rows, kb};
    float* o = out.data_ptr<float>() + m0 * w.N;
    at::parallel_for(0, w.N, 16, [&](int64_t n0, int64_t n1) { avx512_vnni::gemv_a8(w, a, args.bias(), o, n0, n1); });
  }
  return out;
}

}  // namespace

at::Tensor lowbit_linear_cpu(const at::Tensor& x, const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                             const std::optional<at::Tensor>& weight_zero_point,
                             const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  const LinearArgs args = check_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size);
  if (args.m_rows == 0 || args.w.N == 0) return at::empty(args.out_shape, x.options());
  const at::Tensor out = linear_fp32(args, x.reshape({args.m_rows, args.w.K}));
  return (x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type())).view(args.out_shape);
}

at::Tensor lowbit_linear_a8_cpu(const at::Tensor& x, const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                                const std::optional<at::Tensor>& weight_zero_point,
                                const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size) {
  const LinearArgs args = check_linear(x, weight_packed, weight_scale, weight_zero_point, bias, bits, group_size);
  if (args.m_rows == 0 || args.w.N == 0) return at::empty(args.out_shape, x.options());
  const int64_t k = args.w.K, kb = (k + kA8Block - 1) / kA8Block;
  const auto [xq, sx] = quantize_rows(x, args.m_rows, k);
  at::Tensor out;
  if (args.m_rows <= kGemvMaxBatch && a8_uses_vnni(args.w)) {
    out = linear_a8_vnni(args, xq, sx);
  } else {  // the fake-quantized activations xq * sx through the fp32 kernels
    const at::Tensor xhat = (xq.to(at::kFloat).view({args.m_rows, kb, kA8Block}) * sx.unsqueeze(2))
                                .view({args.m_rows, kb * kA8Block}).narrow(1, 0, k).contiguous();
    out = linear_fp32(args, xhat);
  }
  return (x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type())).view(args.out_shape);
}

std::string cpu_a8_path(int64_t bits, int64_t group_size, int64_t in_features) {
  LowbitWeight w{};
  w.bits = static_cast<int>(bits);
  w.K = in_features;
  w.group = group_size == -1 ? in_features : group_size;
  if (a8_uses_vnni(w)) return "vnni";
  return std::string("fake-quant+") + isa_name(active_isa());
}

at::Tensor lowbit_linear_a8_interleaved_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                            const at::Tensor& zero, const std::optional<at::Tensor>& bias,
                                            int64_t bits, int64_t group_size, int64_t out_features) {
  const int64_t k = check_activations(x);
  check_format(bits, group_size);
  TORCH_CHECK_VALUE(out_features >= 1, "out_features must be >= 1, got ", out_features);
  TORCH_CHECK_VALUE(k >= 1, "x has 0 features in its last dimension");
  const int64_t group = group_size == -1 ? k : group_size, groups = (k + group - 1) / group;
  const int64_t blocks = (out_features + kInterleaveRows - 1) / kInterleaveRows;
  const InterleavedSegments seg = InterleavedSegments::make(static_cast<int>(bits), group, k);
  const std::vector<std::pair<const at::Tensor*, const char*>> parts = {{&weight, "weight"}, {&scale, "scale"},
                                                                        {&zero, "zero"}};
  for (const auto& [t, name] : parts) check_cpu_tensor(*t, name);
  check_dtype(weight, "weight", {at::kByte});
  check_dtype(scale, "scale", {at::kFloat});
  check_dtype(zero, "zero", {at::kByte});
  const int64_t vectors = seg.steps * seg.step_bytes / 64;
  TORCH_CHECK_VALUE(weight.sizes() == at::IntArrayRef({blocks, vectors, kInterleaveRows, 4}), "weight has shape ",
                    weight.sizes(), "; expected [", blocks, ", ", vectors, ", 16, 4]");
  for (const auto& [t, name] : {parts[1], parts[2]})
    TORCH_CHECK_VALUE(t->sizes() == at::IntArrayRef({blocks, groups, kInterleaveRows}), name, " has shape ",
                      t->sizes(), "; expected [", blocks, ", ", groups, ", 16]");
  const at::Tensor bias_f = float_bias(bias, x, out_features);
  const std::vector<int64_t> out_shape = out_shape_of(x, out_features);
  const int64_t m_rows = x.numel() / k;
  if (m_rows == 0) return at::empty(out_shape, x.options());

  const int64_t kb = (k + kA8Block - 1) / kA8Block;
  const auto [xq, sx] = quantize_rows(x, m_rows, k);
  std::vector<int32_t> sums(m_rows * seg.count);
  interleaved_segment_sums(xq.data_ptr<int8_t>(), m_rows, kb, seg, sums.data());
  const InterleavedWeight w{weight.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero.data_ptr<uint8_t>(),
                            out_features, k, groups, static_cast<int>(bits), seg};
  const A8Activations a{xq.data_ptr<int8_t>(), sx.data_ptr<float>(), nullptr, m_rows, kb};
  at::Tensor out = at::empty({m_rows, out_features}, sx.options());
  const float* b = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  const bool vnni = active_isa() == Isa::Avx512 && cpu_has_vnni();
  const auto run = [&](int64_t b0, int64_t b1) {
    if (vnni) avx512_vnni::gemv_a8_interleaved(w, a, sums.data(), b, out.data_ptr<float>(), b0, b1);
    else scalar::gemv_a8_interleaved(w, a, sums.data(), b, out.data_ptr<float>(), b0, b1);
  };
  // Every size runs on all threads: alone, a small layer in cache is faster on one thread, but in a
  // decode step the weights come from DRAM, and SmolLM2 W4 decoded 33 tokens/s on two vs 27 on one.
  at::parallel_for(0, blocks, 4, run);
  return (x.scalar_type() == at::kFloat ? out : out.to(x.scalar_type())).view(out_shape);
}

at::Tensor lowbit_dequantize_cpu(const at::Tensor& weight_packed, const at::Tensor& weight_scale,
                                 const std::optional<at::Tensor>& weight_zero_point, int64_t bits,
                                 int64_t group_size, int64_t in_features, at::ScalarType dtype) {
  const LowbitWeight w = make_weight(weight_packed, weight_scale, weight_zero_point, bits, group_size, in_features);
  at::Tensor out = at::empty({w.N, w.K}, weight_packed.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  // Natural order, computed exactly as the reference does: float(q - z) * s.
  at::parallel_for(0, w.N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = w.row(n);
      for (int64_t gi = 0; gi < w.G; ++gi) {
        const float s = w.scale_at(n, gi);
        const int z = w.zero_at(n, gi);
        const int64_t k1 = std::min(w.K, (gi + 1) * w.group);
        for (int64_t k = gi * w.group; k < k1; ++k)
          dst[n * w.K + k] = static_cast<float>(static_cast<int>(code_at(row, k, w.bits)) - z) * s;
      }
    }
  });
  return dtype == at::kFloat ? out : out.to(dtype);
}

std::string cpu_isa() { return isa_name(active_isa()); }

}  // namespace llmlite::cpu
