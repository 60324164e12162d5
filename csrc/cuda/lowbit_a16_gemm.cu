// W4A16 / W8A16 small-batch GEMM: out = x @ dequant(W)^T (+ bias) on mma.sync m16n8k16 tensor cores.
//
// Design (for M = 1..64, memory bound on the weight stream):
// * A thread block owns a 128-column tile of W (8 warps x 16 columns) and walks K in 128-wide stages.
//   The weight arrives pre-shuffled (formats/mma_repack.py) so that bits/2 16-byte shared loads per
//   lane give that lane exactly its B fragments for the 8 MMA k-steps: no shuffles, no ldmatrix.
//   128-wide stages amortise the per-stage work (barrier, copy issue, bookkeeping) over 8 KiB of W4.
// * x (<= 64 rows) is staged per k-tile in swizzled shared memory and read with ldmatrix.x4.
// * cp.async multi-stage pipeline; each stage = codes + activations + the tile's scales / zero points.
// * Dequantization is two half2 ops per pair of weights: a magic-number conversion (codes OR-ed into
//   the mantissa of 1024.0 (fp16) / 128.0 (bf16) / 2^23 (fp32, W8 bf16)) whose bias subtraction also
//   subtracts the zero point (exact: q - z is a small integer), then one multiply by the scale: the
//   only rounding, the same one the fp32 reference makes when it casts (q - z) * s.
// * Striped partitioning: the (n-tile, k-tile) units, k fastest, are cut into equal contiguous runs,
//   one per resident block, so every SM streams the same number of bytes for any N, K. An n-tile
//   covered by several blocks is reduced by the last one to finish (arrival counter), in fixed order.
#include "lowbit_a16_gemm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

namespace llmlite {
namespace {

constexpr int kThreads = 256;
constexpr int kTileN = 128;  // 8 warps x 16 columns
constexpr int kTileK = 128;  // 8 MMA k-steps of 16
constexpr int kKSteps = kTileK / 16;
constexpr int kChunks = kTileK / 8;  // 16-byte chunks (8 halves) per row of an activation tile
constexpr int kMaxRows = 64;  // rows of x per launch (M slice)
constexpr int kMaxDevices = 64;

// Shared memory of one pipeline stage, in 16-byte units.
template <int BITS, int MB>
struct StageLayout {
  static constexpr int kWeight = kTileN * kTileK * BITS / 128;  // codes of the 128 x 128 tile
  static constexpr int kAct = MB * 16 * kChunks;                 // MB*16 rows x 128 halves
  static constexpr int kScale = 4 * kTileN * 2 / 16;            // up to 4 groups (g = 32) x 128 columns
  static constexpr int kActOffset = kWeight;
  static constexpr int kScaleOffset = kWeight + kAct;
  static constexpr int kZeroOffset = kScaleOffset + kScale;
  static constexpr int kSize = kZeroOffset + kScale;
  static constexpr int kStages = MB == 4 ? 3 : 4;  // <= 106 KiB: two blocks per SM on sm_90
  static constexpr int kSmemBytes = kStages * kSize * 16;
};

template <typename To, typename From>
__device__ __forceinline__ To bit_cast(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast size");
  To out;
  memcpy(&out, &v, sizeof(To));
  return out;
}

// ---- asynchronous copies and tensor-core primitives -------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16_s(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// ---- per-dtype arithmetic: MMA, group constants, dequantization ------------------------------------

// Per (group, 8-column MMA tile) constants of one lane: scale pair and the zero-point-including biases.
struct GroupConst {
  uint32_t scale2;  // (s, s)
  uint32_t bias2;   // (magic + z, magic + z): subtracted from the magic-number codes
  uint32_t bias2b;  // fp16 W4 odd nibbles: -(magic/16 + z), added after the 1/16 rescale
  float biasf;      // bf16 W8: 2^23 + z in fp32
};

template <typename T>
struct Act;

template <>
struct Act<__half> {
  using T2 = __half2;
  static __device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
  static __device__ __forceinline__ uint32_t dup(__half v) { return bit_cast<uint32_t>(__half2half2(v)); }
  static __device__ __forceinline__ uint32_t splat(float v) { return bit_cast<uint32_t>(__float2half2_rn(v)); }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return bit_cast<uint32_t>(__floats2half2_rn(lo, hi));
  }
  static __device__ __forceinline__ uint32_t sub(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hsub2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t add(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hadd2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hmul2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t fma(uint32_t a, uint32_t b, uint32_t c) {
    return bit_cast<uint32_t>(__hfma2(bit_cast<T2>(a), bit_cast<T2>(b), bit_cast<T2>(c)));
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

template <>
struct Act<__nv_bfloat16> {
  using T2 = __nv_bfloat162;
  static __device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  static __device__ __forceinline__ uint32_t dup(__nv_bfloat16 v) { return bit_cast<uint32_t>(__bfloat162bfloat162(v)); }
  static __device__ __forceinline__ uint32_t splat(float v) {
    return bit_cast<uint32_t>(__float2bfloat162_rn(v));
  }
  static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
    return bit_cast<uint32_t>(__floats2bfloat162_rn(lo, hi));
  }
  static __device__ __forceinline__ uint32_t sub(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hsub2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t add(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hadd2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t mul(uint32_t a, uint32_t b) {
    return bit_cast<uint32_t>(__hmul2(bit_cast<T2>(a), bit_cast<T2>(b)));
  }
  static __device__ __forceinline__ uint32_t fma(uint32_t a, uint32_t b, uint32_t c) {
    return bit_cast<uint32_t>(__hfma2(bit_cast<T2>(a), bit_cast<T2>(b), bit_cast<T2>(c)));
  }
  static __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
};

// Opaque to the compiler: a value computed once per thread stays in a register instead of being
// recomputed in the main loop.
__device__ __forceinline__ void pin(uint32_t& v) { asm volatile("" : "+r"(v)); }
template <typename P>
__device__ __forceinline__ void pin(const P*& p) { asm volatile("" : "+l"(p)); }

// (a & b) | c in one LOP3 (the compiler splits it in two when b and c are both immediates).
template <uint32_t B, uint32_t C>
__device__ __forceinline__ uint32_t and_or(uint32_t a) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xea;\n" : "=r"(r) : "r"(a), "n"(B), "n"(C));
  return r;
}

// From a group's scale and zero point (an exact integer in T), in half2 arithmetic (all exact):
// fp16: bias2 = 1024 + z, bias2b = -(1024 + z) + 960 = -(64 + z); bf16 W4: bias2 = 128 + z;
// bf16 W8: biasf = 2^23 + z.
template <typename T, int BITS>
__device__ __forceinline__ GroupConst make_group_const(T scale, T zero) {
  using A = Act<T>;
  GroupConst c;
  c.scale2 = A::dup(scale);
  const uint32_t z2 = A::dup(zero);
  if constexpr (std::is_same<T, __half>::value) {
    c.bias2 = A::add(z2, 0x64006400u);                    // + 1024
    c.bias2b = A::fma(c.bias2, 0xbc00bc00u, 0x63806380u);  // * -1 + 960
  } else {
    c.bias2 = A::add(z2, 0x43004300u);  // + 128
    c.biasf = A::to_float(zero) + 8388608.0f;
  }
  return c;
}

// B fragments of MMA k-step j for the lane's two 8-column tiles t = 0, 1 (b[t] = {b0b1, b2b3}).
// Code placement (defined in formats/mma_repack.py): for W4 word j holds fragment element r of tile t
// in nibble (2t + r/2) + 4*(r%2); for W8 word 2j+t holds element r in byte r/2 + 2*(r%2). So one mask
// extracts a (low, high) half2 pair: nibbles (p, p+4) or bytes (p, p+2).
template <typename T, int BITS>
struct Dequant;

template <>
struct Dequant<__half, 4> {
  template <int J>
  static __device__ __forceinline__ void run(const uint32_t (&w)[8], const GroupConst (&g)[2], uint32_t (&b)[2][2]) {
    using A = Act<__half>;
    constexpr uint32_t kMagic = 0x64006400u;      // 1024.0 in each half
    constexpr uint32_t kSixteenth = 0x2c002c00u;  // 1/16 in each half
    const uint32_t lo = w[J];
    const uint32_t hi = lo >> 8;
    b[0][0] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(lo), g[0].bias2), g[0].scale2);
    b[0][1] = A::mul(A::fma(and_or<0x00f000f0u, kMagic>(lo), kSixteenth, g[0].bias2b), g[0].scale2);
    b[1][0] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(hi), g[1].bias2), g[1].scale2);
    b[1][1] = A::mul(A::fma(and_or<0x00f000f0u, kMagic>(hi), kSixteenth, g[1].bias2b), g[1].scale2);
  }
};

template <>
struct Dequant<__nv_bfloat16, 4> {
  template <int J>
  static __device__ __forceinline__ void run(const uint32_t (&w)[8], const GroupConst (&g)[2], uint32_t (&b)[2][2]) {
    using A = Act<__nv_bfloat16>;
    constexpr uint32_t kMagic = 0x43004300u;  // 128.0 in each bf16: 7 mantissa bits, so shift per nibble
    const uint32_t v = w[J];
    b[0][0] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(v), g[0].bias2), g[0].scale2);
    b[0][1] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(v >> 4), g[0].bias2), g[0].scale2);
    b[1][0] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(v >> 8), g[1].bias2), g[1].scale2);
    b[1][1] = A::mul(A::sub(and_or<0x000f000fu, kMagic>(v >> 12), g[1].bias2), g[1].scale2);
  }
};

template <>
struct Dequant<__half, 8> {
  template <int J>
  static __device__ __forceinline__ void run(const uint32_t (&w)[16], const GroupConst (&g)[2], uint32_t (&b)[2][2]) {
    using A = Act<__half>;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const uint32_t v = w[2 * J + t];
      // prmt: (byte0, 0x64, byte2, 0x64) = (1024 + q0, 1024 + q2) and likewise bytes 1, 3.
      b[t][0] = A::mul(A::sub(__byte_perm(v, 0x64646464u, 0x4240u), g[t].bias2), g[t].scale2);
      b[t][1] = A::mul(A::sub(__byte_perm(v, 0x64646464u, 0x4341u), g[t].bias2), g[t].scale2);
    }
  }
};

template <>
struct Dequant<__nv_bfloat16, 8> {
  template <int J>
  static __device__ __forceinline__ void run(const uint32_t (&w)[16], const GroupConst (&g)[2], uint32_t (&b)[2][2]) {
    using A = Act<__nv_bfloat16>;
    // bf16 cannot hold 128 + q for q > 127: go through fp32 (2^23 + q), exact until the scale multiply.
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const uint32_t v = w[2 * J + t];
      const float q0 = __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7440u)) - g[t].biasf;
      const float q1 = __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7442u)) - g[t].biasf;
      const float q2 = __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7441u)) - g[t].biasf;
      const float q3 = __uint_as_float(__byte_perm(v, 0x4b000000u, 0x7443u)) - g[t].biasf;
      b[t][0] = A::mul(A::pack(q0, q1), g[t].scale2);
      b[t][1] = A::mul(A::pack(q2, q3), g[t].scale2);
    }
  }
};

// ---- the kernel -------------------------------------------------------------------------------------

struct GemmArgs {
  const void* x;        // [rows, K] of this M slice
  const int4* weight;   // repacked codes
  const void* scale;    // [G, n_pad]
  const void* zero;     // [G, n_pad] or nullptr
  const void* bias;     // [N] or nullptr
  void* out;            // [rows, N] of this M slice
  float* partials;      // [n_tiles, max_slots, MB*16, 128]
  int* counters;        // [n_tiles]
  int rows, N, K, n_pad, k_tiles, total_units, units_per_block, max_slots;
  int group_shift;  // log2(group_size); 31 for per-channel (every k-tile in group 0)
};

template <typename T, int BITS, int MB>
__global__ void __launch_bounds__(kThreads, 2) lowbit_a16_gemm_kernel(const GemmArgs args) {
  using L = StageLayout<BITS, MB>;
  using A = Act<T>;
  constexpr int kStages = L::kStages;
  constexpr int kLaneInt4 = BITS / 2;  // 16-byte code vectors per lane and stage

  extern __shared__ int4 smem[];
  __shared__ int last_arrival;

  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const T* __restrict__ x = static_cast<const T*>(args.x);
  const T* __restrict__ scale = static_cast<const T*>(args.scale);
  const T* __restrict__ zero = static_cast<const T*>(args.zero);
  const int K = args.K;
  const int k_tiles = args.k_tiles;
  const int group_shift = args.group_shift;
  // g < 128 (shift 5, 6): a k-tile spans 128 >> shift groups, one staged scale row each; else one row.
  const bool multi_group = group_shift < 7;
  const bool has_zero = zero != nullptr;

  const int u_begin = blockIdx.x * args.units_per_block;
  const int u_end = min(u_begin + args.units_per_block, args.total_units);
  const int n_units = u_end - u_begin;
  if (n_units <= 0) return;

  // Per-thread copy assignments, fixed for the whole kernel; load_stage only adds the unit's offsets.
  const uint32_t smem_base = smem_addr(smem);
  // Codes: the repacked tensor is [n-tile][k-tile][128x128 tile] and a block's units are consecutive,
  // so the block streams one contiguous range: 2 (W4) or 4 (W8) 16-byte copies per thread per unit.
  const int4* w_src = args.weight + static_cast<size_t>(u_begin) * L::kWeight + tid;
  uint32_t w_dst = tid * 16;
  // Activations (valid rows only; the rest are zeroed once below): row r, 16-byte chunk c (8 halves)
  // lands at chunk c ^ (r % 8) of the row, so the 8 rows an ldmatrix reads at one logical chunk hit 8
  // different bank groups. Thread tid copies chunk tid % 16 of rows tid / 16 + 16 * pass.
  constexpr int kActRowsPerPass = kThreads / kChunks;  // 16; (row + 16) % 8 == row % 8
  const int a_row = tid / kChunks, a_chunk = tid % kChunks;
  const T* a_src = x + a_row * K + a_chunk * 8;  // rows <= 64, K < 2^24: int offsets suffice
  uint32_t a_dst = (L::kActOffset + a_row * kChunks + (a_chunk ^ (a_row & 7))) * 16;
  uint32_t a_passes = 0;  // bit p: row a_row + 16p exists
#pragma unroll
  for (int pass = 0; pass < MB; ++pass) a_passes |= (a_row + pass * kActRowsPerPass < args.rows ? 1u : 0u) << pass;
  // Scales / zero points: threads 0-63 copy the scale rows, 64-127 the zero-point rows, of the group
  // row(s) the k-tile touches (16 chunks of 8 columns per row). Copied only when the unit's (group,
  // n-tile) differs from the previous unit's: compute_stage reads them exactly then.
  const int group_rows = multi_group ? kTileK >> group_shift : 1;
  const bool is_zero_thread = tid >= 64;
  const int sz_id = is_zero_thread ? tid - 64 : tid;
  uint32_t sz_flag = sz_id < 16 * group_rows && tid < 128 && (!is_zero_thread || has_zero);
  const T* sz_src = (is_zero_thread && has_zero ? zero : scale) + (sz_id >> 4) * args.n_pad + (sz_id & 15) * 8;
  uint32_t sz_dst = ((is_zero_thread ? L::kZeroOffset : L::kScaleOffset) + sz_id) * 16;
  int loaded_group = -1, loaded_nt = -1;
  // Keep these in registers: otherwise ptxas re-derives them from threadIdx in every pipeline step.
  pin(w_dst);
  pin(a_src);
  pin(a_dst);
  pin(a_passes);
  pin(sz_src);
  pin(sz_dst);
  pin(sz_flag);

  // Issue the copies of the block's next unit (n-tile nt, k-tile kt) into the slot at shared address st.
  auto load_stage = [&](uint32_t st, int nt, int kt) {
#pragma unroll
    for (int i = 0; i < L::kWeight / kThreads; ++i) cp_async16_s(st + w_dst + i * kThreads * 16, w_src + i * kThreads);
    w_src += L::kWeight;
#pragma unroll
    for (int pass = 0; pass < MB; ++pass) {
      if (a_passes & (1u << pass))
        cp_async16_s(st + a_dst + pass * kActRowsPerPass * kChunks * 16,
                     a_src + pass * kActRowsPerPass * K + kt * kTileK);
    }
    const int group = (kt * kTileK) >> group_shift;
    if (group != loaded_group || nt != loaded_nt) {
      loaded_group = group;
      loaded_nt = nt;
      if (sz_flag) cp_async16_s(st + sz_dst, sz_src + group * args.n_pad + nt * kTileN);
    }
  };

  float acc[MB][2][4];
  auto clear_acc = [&]() {
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mb][t][e] = 0.0f;
  };
  clear_acc();

  const T sym_zero = A::from_float(static_cast<float>(1 << (BITS - 1)));  // implicit z when symmetric
  // Constants of group row `gr` of the staged tile for this lane's two MMA column tiles.
  auto group_consts = [&](const int4* st, int gr, GroupConst (&g)[2]) {
    const T* s = reinterpret_cast<const T*>(st + L::kScaleOffset) + gr * kTileN;
    const T* z = reinterpret_cast<const T*>(st + L::kZeroOffset) + gr * kTileN;
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int col = warp * 16 + t * 8 + (lane >> 2);
      g[t] = make_group_const<T, BITS>(s[col], has_zero ? z[col] : sym_zero);
    }
  };

  // ldmatrix.x4 row addresses (offsets in a slot) of MMA row block 0 for k-steps J = 0..3: lanes 0-7 /
  // 8-15 / 16-23 / 24-31 give rows of the four 8x8 matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15), i.e.
  // the a0a1, a2a3, a4a5, a6a7 registers of the A fragment. k-steps 4-7 read logical chunks 8-15,
  // which the swizzle (on the low 3 bits) keeps 8 chunks = 128 bytes further; row block mb adds 16 rows.
  uint32_t ld_offset[4];
  {
    const int r = (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      ld_offset[j] = (L::kActOffset + r * kChunks + ((2 * j + (lane >> 4)) ^ (r & 7))) * 16;
      pin(ld_offset[j]);
    }
  }

  // Group constants of the current k-step. At k-step 0 of a stage they are rebuilt when the stage's
  // group (or n-tile) differs from the last one built (g >= 128: every g/128 stages; per-channel: once
  // per n-tile); for g < 128 also at each k-step that starts a group.
  GroupConst gc[2];
  int const_nt = -1, const_group = -1;
  uint32_t reload_steps = 0;  // bit J: k-step J (> 0) starts a new group (g = 32: even J; g = 64: J = 4)
  if (multi_group) {
#pragma unroll
    for (int j = 1; j < kKSteps; ++j) reload_steps |= (((16 * j) & ((1 << group_shift) - 1)) == 0 ? 1u : 0u) << j;
  }
  pin(reload_steps);

  auto compute_stage = [&](int slot, int nt, int kt) {
    const int4* st = smem + slot * L::kSize;
    uint32_t w[2 * BITS];
#pragma unroll
    for (int v = 0; v < kLaneInt4; ++v) {
      const int4 q = st[(warp * kLaneInt4 + v) * 32 + lane];
      w[4 * v + 0] = q.x;
      w[4 * v + 1] = q.y;
      w[4 * v + 2] = q.z;
      w[4 * v + 3] = q.w;
    }
    const int group = (kt * kTileK) >> group_shift;
    if (group != const_group || nt != const_nt) {
      const_group = group;
      const_nt = nt;
      group_consts(st, 0, gc);
    }
    const uint32_t slot_addr = smem_base + slot * (L::kSize * 16);

    auto kstep = [&](auto j_const) {
      constexpr int J = decltype(j_const)::value;
      if (J > 0 && (reload_steps & (1u << J))) group_consts(st, (16 * J) >> group_shift, gc);
      uint32_t a[MB][4];
#pragma unroll
      for (int mb = 0; mb < MB; ++mb)
        ldmatrix_x4(a[mb], slot_addr + ld_offset[J & 3] + (J >> 2) * 128 + mb * (16 * kChunks * 16));
      uint32_t b[2][2];
      Dequant<T, BITS>::template run<J>(w, gc, b);
#pragma unroll
      for (int mb = 0; mb < MB; ++mb) {
        A::mma(acc[mb][0], a[mb], b[0]);
        A::mma(acc[mb][1], a[mb], b[1]);
      }
    };
    kstep(std::integral_constant<int, 0>{});
    kstep(std::integral_constant<int, 1>{});
    kstep(std::integral_constant<int, 2>{});
    kstep(std::integral_constant<int, 3>{});
    kstep(std::integral_constant<int, 4>{});
    kstep(std::integral_constant<int, 5>{});
    kstep(std::integral_constant<int, 6>{});
    kstep(std::integral_constant<int, 7>{});
    static_assert(kKSteps == 8, "k-steps unrolled by hand above");
  };

  // C fragment of (mb, t): elements 0,1 at row mb*16 + lane/4, columns 2*(lane%4) + {0,1} of the warp's
  // 8-column tile t; elements 2,3 eight rows below.
  auto finish_tile = [&](int nt) {
    const int first = nt * k_tiles / args.units_per_block;
    const int last = (nt * k_tiles + k_tiles - 1) / args.units_per_block;
    const int N = args.N;
    T* __restrict__ out = static_cast<T*>(args.out);
    const T* __restrict__ bias = static_cast<const T*>(args.bias);
    if (first == last) {  // this block covered the whole K range of the tile
      const bool pairs = (N % 2 == 0) && (reinterpret_cast<uintptr_t>(out) % 4 == 0);
#pragma unroll
      for (int mb = 0; mb < MB; ++mb)
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int row = mb * 16 + (lane >> 2) + 8 * h;
            const int n = nt * kTileN + warp * 16 + t * 8 + (lane & 3) * 2;
            if (row >= args.rows || n >= N) continue;
            float v0 = acc[mb][t][2 * h], v1 = acc[mb][t][2 * h + 1];
            if (bias != nullptr) {
              v0 += A::to_float(bias[n]);
              if (n + 1 < N) v1 += A::to_float(bias[n + 1]);
            }
            T* dst = out + static_cast<size_t>(row) * N + n;
            if (pairs) {
              *reinterpret_cast<uint32_t*>(dst) = A::pack(v0, v1);
            } else {
              dst[0] = A::from_float(v0);
              if (n + 1 < N) dst[1] = A::from_float(v1);
            }
          }
      return;
    }
    // Shared tile: write this block's fp32 partial into its slot; the last arrival sums the slots.
    const int slots = last - first + 1;
    const size_t slot_floats = static_cast<size_t>(MB) * 16 * kTileN;
    float* tile_partials = args.partials + static_cast<size_t>(nt) * args.max_slots * slot_floats;
    float* mine = tile_partials + (blockIdx.x - first) * slot_floats;
#pragma unroll
    for (int mb = 0; mb < MB; ++mb)
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = mb * 16 + (lane >> 2) + 8 * h;
          const int col = warp * 16 + t * 8 + (lane & 3) * 2;
          if (row < args.rows)
            *reinterpret_cast<float2*>(mine + row * kTileN + col) =
                make_float2(acc[mb][t][2 * h], acc[mb][t][2 * h + 1]);
        }
    __threadfence();
    __syncthreads();
    if (tid == 0) last_arrival = atomicAdd(args.counters + nt, 1) == slots - 1;
    __syncthreads();
    if (!last_arrival) return;
    __threadfence();
    for (int i = tid; i < args.rows * (kTileN / 4); i += kThreads) {
      const int row = i / (kTileN / 4), col = (i % (kTileN / 4)) * 4;
      float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
      for (int s = 0; s < slots; ++s) {  // fixed order: the result does not depend on arrival order
        const float4 p = __ldcg(reinterpret_cast<const float4*>(tile_partials + s * slot_floats + row * kTileN + col));
        sum.x += p.x;
        sum.y += p.y;
        sum.z += p.z;
        sum.w += p.w;
      }
      const float vals[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int n = nt * kTileN + col + e;
        if (n < N) {
          const float b = bias != nullptr ? A::to_float(bias[n]) : 0.0f;
          out[static_cast<size_t>(row) * N + n] = A::from_float(vals[e] + b);
        }
      }
    }
    if (tid == 0) args.counters[nt] = 0;  // every other block of this tile has arrived: reset for reuse
  };

  // Rows of the MMA blocks past the last row of x stay zero in every slot (ordered before their first
  // read by the pipeline's barrier).
  for (int i = tid; i < kStages * L::kAct; i += kThreads) {
    const int slot = i / L::kAct, chunk = i - slot * L::kAct;
    if (chunk / kChunks >= args.rows) smem[slot * L::kSize + L::kActOffset + chunk] = make_int4(0, 0, 0, 0);
  }

  // Pipeline: slot i % kStages holds unit u_begin + i; kStages - 1 units are in flight ahead. Unit
  // coordinates and slots advance incrementally (no integer division in the loop).
  int load_nt = u_begin / k_tiles;
  int load_kt = u_begin - load_nt * k_tiles;
  int nt = load_nt, kt = load_kt;
  int read_slot = 0;
  uint32_t load_st = smem_base;  // shared address of the slot the next unit is copied into
  auto advance = [&](int& tile_n, int& tile_k) {
    if (++tile_k == k_tiles) {
      tile_k = 0;
      ++tile_n;
    }
  };
  auto issue_next = [&](int unit) {
    if (unit < n_units) {
      load_stage(load_st, load_nt, load_kt);
      advance(load_nt, load_kt);
      load_st = load_st == smem_base + (kStages - 1) * (L::kSize * 16) ? smem_base : load_st + L::kSize * 16;
    }
    cp_async_commit();
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) issue_next(s);
  for (int i = 0; i < n_units; ++i) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // unit i visible to all; the slot of unit i - 1 is no longer read by anyone
    issue_next(i + kStages - 1);
    compute_stage(read_slot, nt, kt);
    read_slot = read_slot == kStages - 1 ? 0 : read_slot + 1;
    if (kt == k_tiles - 1 || i == n_units - 1) {
      finish_tile(nt);
      clear_acc();
    }
    advance(nt, kt);
  }
  cp_async_wait<0>();
}

// ---- host side ---------------------------------------------------------------------------------------

template <typename T, int BITS, int MB>
cudaError_t blocks_per_sm(int device, int* out) {
  static int cached[kMaxDevices] = {0};  // benign race: every writer stores the same value
  if (device < kMaxDevices && cached[device] > 0) {
    *out = cached[device];
    return cudaSuccess;
  }
  auto kernel = lowbit_a16_gemm_kernel<T, BITS, MB>;
  constexpr int smem = StageLayout<BITS, MB>::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  int n = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, smem);
  if (err != cudaSuccess) return err;
  if (n < 1) return cudaErrorInvalidConfiguration;
  if (device < kMaxDevices) cached[device] = n;
  *out = n;
  return cudaSuccess;
}

template <typename T, int BITS, int MB>
cudaError_t launch(const GemmArgs& args, int blocks, cudaStream_t stream) {
  lowbit_a16_gemm_kernel<T, BITS, MB>
      <<<blocks, kThreads, StageLayout<BITS, MB>::kSmemBytes, stream>>>(args);
  return cudaGetLastError();
}

// Calls f.template operator()<T, BITS, MB>() for the runtime (dtype, bits, m_blocks).
template <typename F>
cudaError_t dispatch(ActDtype dtype, int bits, int m_blocks, F&& f) {
#define LLMLITE_MB(T, B)                                   \
  switch (m_blocks) {                                      \
    case 1: return f.template operator()<T, B, 1>();       \
    case 2: return f.template operator()<T, B, 2>();       \
    case 4: return f.template operator()<T, B, 4>();       \
    default: return cudaErrorInvalidValue;                 \
  }
  if (dtype == ActDtype::kFloat16) {
    if (bits == 4) LLMLITE_MB(__half, 4)
    if (bits == 8) LLMLITE_MB(__half, 8)
  } else {
    if (bits == 4) LLMLITE_MB(__nv_bfloat16, 4)
    if (bits == 8) LLMLITE_MB(__nv_bfloat16, 8)
  }
#undef LLMLITE_MB
  return cudaErrorInvalidValue;
}

struct OccupancyQuery {
  int device;
  int* out;
  template <typename T, int BITS, int MB>
  cudaError_t operator()() const { return blocks_per_sm<T, BITS, MB>(device, out); }
};

struct Launcher {
  const GemmArgs* args;
  int blocks;
  cudaStream_t stream;
  template <typename T, int BITS, int MB>
  cudaError_t operator()() const { return launch<T, BITS, MB>(*args, blocks, stream); }
};

}  // namespace

cudaError_t lowbit_a16_gemm_plan(ActDtype dtype, int bits, int M, int N, int K, LowbitGemmPlan* plan) {
  if (M < 1 || N < 1 || K < kTileK || K % kTileK != 0 || (bits != 4 && bits != 8)) return cudaErrorInvalidValue;
  const int rows = M < kMaxRows ? M : kMaxRows;
  plan->m_blocks = rows <= 16 ? 1 : (rows <= 32 ? 2 : 4);
  plan->n_tiles = (N + kTileN - 1) / kTileN;
  plan->k_tiles = K / kTileK;

  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = dispatch(dtype, bits, plan->m_blocks, OccupancyQuery{device, &per_sm});
  if (err != cudaSuccess) return err;

  // One wave of equal stripes: every resident block streams the same number of weight tiles.
  // LLMLITE_CUDA_GEMM_BLOCKS_PER_SM (benchmarking only) overrides the occupancy-derived count.
  static const int override_per_sm = [] {
    const char* v = std::getenv("LLMLITE_CUDA_GEMM_BLOCKS_PER_SM");
    return v != nullptr ? std::atoi(v) : 0;
  }();
  if (override_per_sm > 0) per_sm = override_per_sm;
  const long long total = static_cast<long long>(plan->n_tiles) * plan->k_tiles;
  long long blocks = static_cast<long long>(sms) * per_sm;
  if (blocks > total) blocks = total;
  const long long per_block = (total + blocks - 1) / blocks;
  plan->units_per_block = static_cast<int>(per_block);
  plan->blocks = static_cast<int>((total + per_block - 1) / per_block);
  // An n-tile's k_tiles consecutive units meet at most ceil((k_tiles - 1) / per_block) + 1 stripes.
  plan->max_slots = static_cast<int>((plan->k_tiles - 1 + per_block - 1) / per_block) + 1;
  plan->workspace_bytes = plan->max_slots > 1 ? static_cast<size_t>(plan->n_tiles) * plan->max_slots *
                                                    plan->m_blocks * 16 * kTileN * sizeof(float)
                                              : 0;
  plan->counter_ints = static_cast<size_t>(plan->n_tiles);
  return cudaSuccess;
}

cudaError_t lowbit_a16_gemm(ActDtype dtype, int bits, const void* x, const int32_t* weight, const void* scale,
                            const void* zero, const void* bias, void* out, float* workspace, int* counters,
                            int M, int N, int K, int group_size, const LowbitGemmPlan& plan,
                            cudaStream_t stream) {
  // Group sizes are powers of two (32..256) or K (per-channel): the kernel finds a k-tile's group by shift.
  int group_shift = 31;
  if (group_size != K) {
    if (group_size < 32 || (group_size & (group_size - 1)) != 0) return cudaErrorInvalidValue;
    group_shift = 0;
    while ((1 << group_shift) < group_size) ++group_shift;
  }
  const size_t elem = 2;  // fp16 / bf16
  GemmArgs args;
  args.weight = reinterpret_cast<const int4*>(weight);
  args.scale = scale;
  args.zero = zero;
  args.bias = bias;
  args.partials = workspace;
  args.counters = counters;
  args.N = N;
  args.K = K;
  args.n_pad = plan.n_tiles * kTileN;
  args.group_shift = group_shift;
  args.k_tiles = plan.k_tiles;
  args.total_units = plan.n_tiles * plan.k_tiles;
  args.units_per_block = plan.units_per_block;
  args.max_slots = plan.max_slots;
  // Rows beyond 64 run as further launches on the same stream; they reuse workspace and counters.
  for (int m0 = 0; m0 < M; m0 += kMaxRows) {
    args.x = static_cast<const char*>(x) + static_cast<size_t>(m0) * K * elem;
    args.out = static_cast<char*>(out) + static_cast<size_t>(m0) * N * elem;
    args.rows = M - m0 < kMaxRows ? M - m0 : kMaxRows;
    cudaError_t err = dispatch(dtype, bits, plan.m_blocks, Launcher{&args, plan.blocks, stream});
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace llmlite
