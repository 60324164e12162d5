"""A torch model of the CUDA kernel in csrc/cuda/lowbit_a16_gemm.cu, for CPU tests (no GPU here).

Each function mirrors one piece of the kernel from the *thread's* side, with the same index arithmetic:
which word and bit field a lane reads (``decode_like_kernel``, with the same magic-number / byte-permute
arithmetic), what ``ldmatrix.x4`` delivers from the swizzled activation tile, what ``mma.m16n8k16``
computes from per-lane fragments (PTX fragment layouts), the striped partition of the host plan, and the
whole GEMM (``model_gemm``: M slices, pipeline units, split-K partial slots and arrival counters).
"""
import torch

from llmlite_kernels.formats.mma_repack import TILE_K, TILE_N, padded_out_features

# Formats the CUDA GEMM supports, shared by its repack and kernel-model tests.
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


CASES = [  # (bits, group_size, symmetric, N, K)
    (4, 32, False, 72, 256), (4, 64, True, 200, 128), (4, 128, False, 136, 384), (4, -1, True, 72, 640),
    (4, 256, False, 40, 384), (8, 32, True, 72, 256), (8, 64, False, 130, 128), (8, 128, True, 72, 384),
    (8, -1, False, 264, 128),
]


def case_id(case):
    bits, g, sym, n, k = case
    return f"w{bits}-g{g}-{'sym' if sym else 'asym'}-{n}x{k}"

LANES = torch.arange(32)
K_STEPS = TILE_K // 16  # MMA k-steps per k-tile
CHUNKS = TILE_K // 8    # 16-byte chunks of activations per row of a k-tile


def group_shift(g, k):
    """The kernel's group_shift: log2(g), or 31 for per-channel (every k-tile in group 0)."""
    return 31 if g == k else g.bit_length() - 1


def staged_group_rows(shift):
    """Scale rows a k-tile touches (load_stage copies them), and the row each k-step uses."""
    rows = TILE_K >> shift if shift <= 7 else 1
    return rows, [(16 * j) >> shift if shift < 7 else 0 for j in range(K_STEPS)]


def byte_perm(x: torch.Tensor, y: int, selector: int) -> torch.Tensor:
    """CUDA ``__byte_perm`` on int64 tensors holding 32-bit words."""
    both = (x & 0xFFFFFFFF) | (y << 32)
    out = torch.zeros_like(x)
    for i in range(4):
        src = (selector >> (4 * i)) & 7
        out |= ((both >> (8 * src)) & 0xFF) << (8 * i)
    return out


def half_of(reg: torch.Tensor, high: torch.Tensor, dtype) -> torch.Tensor:
    """The low or high 16-bit half of a 32-bit register, as a ``dtype`` value (returned in float32)."""
    bits16 = (reg >> (16 * high)) & 0xFFFF
    bits16 = torch.where(bits16 >= 2**15, bits16 - 2**16, bits16).to(torch.int16)
    return bits16.view(dtype).float()


def decode_like_kernel(word, t, r, bits, dtype, scale, zero):
    """Element r of tile t from the lane's word(s), as the kernel's ``Dequant<T, BITS>`` computes it."""
    hi_half = r % 2
    scale = scale.to(dtype)
    if bits == 4 and dtype == torch.float16:
        src = word >> (8 * t)                          # lo = w (tile 0), hi = w >> 8 (tile 1)
        mask = torch.where(r < 2, 0x000F000F, 0x00F000F0)
        v = half_of((src & mask) | 0x64006400, hi_half, dtype)
        q_minus_z = torch.where(r < 2, v - (1024 + zero), v * (1 / 16) - (64 + zero))
    elif bits == 4:
        src = word >> (4 * (2 * t + r // 2))
        v = half_of((src & 0x000F000F) | 0x43004300, hi_half, dtype)
        q_minus_z = v - (128 + zero)
    elif dtype == torch.float16:
        reg = torch.where(r < 2, byte_perm(word, 0x64646464, 0x4240), byte_perm(word, 0x64646464, 0x4341))
        q_minus_z = half_of(reg, hi_half, dtype) - (1024 + zero)
    else:
        byte = torch.tensor([0, 2, 1, 3])[r]
        f = torch.zeros_like(word)
        for p in range(4):
            f = torch.where(byte == p, byte_perm(word, 0x4B000000, 0x7440 | p), f)
        f = torch.where(f >= 2**31, f - 2**32, f).to(torch.int32).view(torch.float32)
        q_minus_z = (f - (8388608.0 + zero)).to(dtype).float()
    # The integer step is exact in every path; the scale multiply is the one rounding (in dtype).
    return (q_minus_z.to(dtype) * scale).float()


def emulate_kernel_weight(rw, dtype):
    """W [N, K] as the CUDA kernel's lanes see it, built from the lanes' side of the mapping."""
    bits, n, k = rw.bits, rw.out_features, rw.in_features
    n_tiles, k_tiles = rw.weight.shape[0], rw.weight.shape[1]
    g = rw.kernel_group_size
    grid = torch.meshgrid(torch.arange(n_tiles), torch.arange(k_tiles), torch.arange(8), torch.arange(32),
                          torch.arange(K_STEPS), torch.arange(2), torch.arange(4), indexing="ij")
    nt, kt, warp, lane, j, t, r = (a.reshape(-1) for a in grid)
    # Which 16-byte vector v and component c of the lane hold k-step j (tile t): see compute_stage.
    lane_vectors = bits // 2
    word_of_lane = j if bits == 4 else 2 * j + t
    v, c = word_of_lane // 4, word_of_lane % 4
    flat = ((warp * lane_vectors + v) * 32 + lane) * 4 + c
    words = rw.weight.to(torch.int64).reshape(n_tiles, k_tiles, -1)[nt, kt, flat] & 0xFFFFFFFF
    # Scale row: the k-tile's first group g0 plus the staged row of k-step j; the lane's column.
    shift = group_shift(g, k)
    _, row_of_step = staged_group_rows(shift)
    col = nt * TILE_N + warp * 16 + t * 8 + lane // 4
    group_row = ((kt * TILE_K) >> shift) + torch.tensor(row_of_step)[j]
    scale = rw.scale[group_row, col].float()
    zero = (rw.zero[group_row, col].float() if rw.zero is not None
            else torch.full_like(scale, 2 ** (bits - 1)))
    vals = decode_like_kernel(words, t, r, bits, dtype, scale, zero)
    # PTX m16n8k16 B fragment: b{r}: k = 2*(lane%4) + r%2 + 8*(r//2), n = lane//4.
    n_idx = col
    k_idx = kt * TILE_K + 16 * j + 2 * (lane % 4) + r % 2 + 8 * (r // 2)
    w = torch.full((padded_out_features(n), k), float("nan"))
    w[n_idx, k_idx] = vals
    return w[:n]


def stripes(n_tiles, k_tiles, slots_available):
    """Mirror of lowbit_a16_gemm_plan: (blocks, units per block, max partial slots per n-tile)."""
    total = n_tiles * k_tiles
    blocks = min(slots_available, total)
    per_block = -(-total // blocks)
    blocks = -(-total // per_block)
    max_slots = -(-(k_tiles - 1) // per_block) + 1
    return blocks, per_block, max_slots


def stage_activations(xs, kt, m_blocks):
    """load_stage's activation tile: 16-byte chunks [MB*16*CHUNKS, 8]; chunk c of row r at
    r*CHUNKS + (c ^ r%8)."""
    smem = torch.zeros(m_blocks * 16 * CHUNKS, 8, dtype=torch.float64)  # rows past the last stay zero
    rows = xs.shape[0]
    r = torch.arange(rows).unsqueeze(1)
    c = torch.arange(CHUNKS).unsqueeze(0)
    chunks = xs[:, kt * TILE_K:(kt + 1) * TILE_K].double().reshape(rows, CHUNKS, 8)
    smem[(r * CHUNKS + (c ^ (r & 7))).reshape(-1)] = chunks.reshape(-1, 8)
    return smem


def ldmatrix_x4_a(smem, mb, j):
    """A fragments [32 lanes, 8] (a0..a7) that compute_stage's ldmatrix.x4 addresses deliver."""
    r = mb * 16 + (LANES & 7) + ((LANES >> 3) & 1) * 8
    addr = r * CHUNKS + ((2 * j + (LANES >> 4)) ^ (r & 7))
    regs = []
    for i in range(4):  # register i <- matrix i: row lane/4 comes from the address of lane 8i + lane/4
        chunk = smem[addr[8 * i + LANES // 4]]
        regs += [chunk[LANES, 2 * (LANES % 4)], chunk[LANES, 2 * (LANES % 4) + 1]]
    return torch.stack(regs, 1)


def mma_m16n8k16(a, b, c):
    """D = A @ B + C from per-lane fragments in the PTX layouts: a [..., 32, 8], b [..., 32, 4],
    c [..., 32, 4] (leading dims: independent warps)."""
    g, q = LANES // 4, LANES % 4
    lead = b.shape[:-2]
    A = torch.full((*lead, 16, 16), float("nan"), dtype=torch.float64)
    B = torch.full((*lead, 16, 8), float("nan"), dtype=torch.float64)
    a = a.expand(*lead, 32, 8)
    for i in range(8):
        A[..., g + 8 * ((i >> 1) & 1), 2 * q + (i & 1) + 8 * (i >> 2)] = a[..., i]
    for i in range(4):
        B[..., 2 * q + (i & 1) + 8 * (i >> 1), g] = b[..., i]
    D = (A.unsqueeze(-1) * B.unsqueeze(-3)).sum(-2)  # tiny batched fp64 matmul; bmm is slow here
    return torch.stack([D[..., g + 8 * (i >> 1), 2 * q + (i & 1)] for i in range(4)], -1) + c


def model_gemm(x, rw, bias, slots_available):
    """out [M, N] as the kernel computes it with ``slots_available`` resident blocks (poisoned buffers)."""
    dtype, bits = x.dtype, rw.bits
    M, K = x.shape
    N = rw.out_features
    rows_max = min(M, 64)
    m_blocks = 1 if rows_max <= 16 else (2 if rows_max <= 32 else 4)
    n_tiles, k_tiles = padded_out_features(N) // TILE_N, K // TILE_K
    blocks, per_block, max_slots = stripes(n_tiles, k_tiles, slots_available)
    shift = group_shift(rw.kernel_group_size, K)
    group_rows, row_of_step = staged_group_rows(shift)
    total = n_tiles * k_tiles
    words_all = rw.weight.to(torch.int64) & 0xFFFFFFFF
    out = torch.full((M, N), float("nan"), dtype=dtype)
    partials = torch.full((n_tiles, max_slots, m_blocks * 16, TILE_N), float("nan"), dtype=torch.float64)
    counters = torch.zeros(n_tiles, dtype=torch.int64)
    # Accumulator element (mb, t, warp, lane, i): C fragment row / column inside the n-tile.
    mb_i, t_i, w_i, l_i, e_i = torch.meshgrid(torch.arange(m_blocks), torch.arange(2), torch.arange(8), LANES,
                                              torch.arange(4), indexing="ij")
    acc_row = mb_i * 16 + l_i // 4 + 8 * (e_i >> 1)
    acc_col = w_i * 16 + t_i * 8 + (l_i % 4) * 2 + (e_i & 1)
    bias_f = torch.zeros(N, dtype=torch.float64) if bias is None else bias.double()

    for m0 in range(0, M, 64):
        rows = min(64, M - m0)
        xs = x[m0:m0 + rows]

        def finish_tile(b, nt, acc):
            first, last = nt * k_tiles // per_block, (nt * k_tiles + k_tiles - 1) // per_block
            n = nt * TILE_N + acc_col
            if first == last:
                keep = (acc_row < rows) & (n < N)
                out[m0 + acc_row[keep], n[keep]] = (acc[keep] + bias_f[n[keep]]).to(dtype)
                return
            keep = acc_row < rows
            partials[nt, b - first, acc_row[keep], acc_col[keep]] = acc[keep]
            counters[nt] += 1
            if counters[nt] == last - first + 1:
                total_tile = partials[nt, :last - first + 1, :rows].sum(0)  # slots in order
                cols = min(TILE_N, N - nt * TILE_N)
                out[m0:m0 + rows, nt * TILE_N:nt * TILE_N + cols] = \
                    (total_tile[:, :cols] + bias_f[nt * TILE_N:nt * TILE_N + cols]).to(dtype)
                counters[nt] = 0

        for b in range(blocks):
            acc = torch.zeros(m_blocks, 2, 8, 32, 4, dtype=torch.float64)
            u_end = min((b + 1) * per_block, total)
            for u in range(b * per_block, u_end):
                nt, kt = divmod(u, k_tiles)
                smem_a = stage_activations(xs, kt, m_blocks)
                g0 = (kt * TILE_K) >> shift
                cols = slice(nt * TILE_N, (nt + 1) * TILE_N)
                s_rows = rw.scale[g0:g0 + group_rows, cols].float()
                z_rows = None if rw.zero is None else rw.zero[g0:g0 + group_rows, cols].float()
                tile = words_all[nt, kt]
                warps = torch.arange(8).unsqueeze(1)  # all 8 warps at once: tensors [8 warps, 32 lanes]
                words = [tile[((warps * (bits // 2) + wi // 4) * 32 + LANES) * 4 + wi % 4] for wi in range(2 * bits)]
                for j in range(K_STEPS):
                    gr = row_of_step[j]
                    b_frag = []
                    for t in range(2):
                        col = warps * 16 + t * 8 + LANES // 4
                        s = s_rows[gr, col]
                        z = z_rows[gr, col] if z_rows is not None else torch.full_like(s, 2 ** (bits - 1))
                        word = words[j if bits == 4 else 2 * j + t]
                        b_frag.append(torch.stack([
                            decode_like_kernel(word, torch.tensor(t), torch.tensor(r), bits, dtype, s, z)
                            for r in range(4)], -1).double())
                    for mb in range(m_blocks):
                        a = ldmatrix_x4_a(smem_a, mb, j)
                        for t in range(2):
                            acc[mb, t] = mma_m16n8k16(a, b_frag[t], acc[mb, t])
                if kt == k_tiles - 1 or u == u_end - 1:
                    finish_tile(b, nt, acc)
                    acc = torch.zeros_like(acc)
    assert not counters.any(), "an arrival counter was left non-zero"
    return out
