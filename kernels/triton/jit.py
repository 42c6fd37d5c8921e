"""The Triton programs: a GEMV for decode, a tensor-core tile kernel, a split-K reduction and a dequantizer.

All of them read the device layout built by `layout.py`. In short: a row of the weight is a run of int32 words;
four consecutive words form a *block* of 4 * PLANES elements, and word `l` of block `b` carries, in its bit
plane `i` (a nibble for 4-bit formats, a byte for 8-bit ones), element `b * 4 * PLANES + 4 * i + l`.
So one 16-byte load fetches a whole block, and plane `i` of that block lines up with four *consecutive*
activations - every activation load is a vector load as well, and no reshuffle of x is needed.

Codes become floats without int->float conversions (slow on GPUs): masking a code into the mantissa of a
float 2**e (e chosen so the code's lowest bit weighs 1) and subtracting 2**e (+ the code offset) gives the
exact value in two ALU ops. fp8 codes are widened
into fp16 bit patterns (e4m3 lands 2**8 too small, which `layout.py` folds into the scale).
"""

from __future__ import annotations

import triton
import triton.language as tl

from xpullm.kernels.triton.lut_pairs import E2M1_LEVELS, NF4_LEVELS, pair_ptx, quad_f32_ptx, quad_ptx
from xpullm.kernels.triton.pdl import wait_for_inputs

# Format codes, passed as constexpr so each format compiles to its own straight-line decode. Globals read
# inside a jitted function must be `tl.constexpr` instances; `.value` gives the plain int to the host side.
SYM_INT4 = tl.constexpr(0)
ASYM_INT4 = tl.constexpr(1)
LUT4 = tl.constexpr(2)  # nf4 and fp4: 16-entry codebook
SYM_INT8 = tl.constexpr(3)  # two's complement bytes; decoded as (byte ^ 0x80) - 128
FP8_E4M3 = tl.constexpr(4)
FP8_E5M2 = tl.constexpr(5)
_SIGN_BITS8 = tl.constexpr(-2139062144)  # 0x80808080 as an int32: each byte's sign bit


@triton.jit
def _magic_plane(w, PLANE: tl.constexpr, BITS: tl.constexpr, OFFSET: tl.constexpr):
    """Bit plane PLANE of `w` as the exact float (code - OFFSET), for unsigned codes of BITS bits.

    The code is masked in place into the mantissa of a float whose exponent gives the plane's lowest bit the
    weight 1, so the float is 2**EXP + code: one LOP3 and one FADD, no int->float conversion. Planes above
    bit 22 are shifted down first (one shift, shared by all of them after CSE).
    """
    PER_WORD: tl.constexpr = 32 // BITS
    LOW: tl.constexpr = 23 // BITS  # planes that fit below the exponent field (bits 0..22)
    HIGH: tl.constexpr = PLANE >= LOW
    J: tl.constexpr = PLANE - HIGH * (PER_WORD - LOW)
    EXP: tl.constexpr = 23 - BITS * J
    src = w >> (HIGH * BITS * (PER_WORD - LOW))
    bits = (src & (((1 << BITS) - 1) << (BITS * J))) | ((127 + EXP) << 23)
    return bits.to(tl.float32, bitcast=True) - ((1 << EXP) + OFFSET)


@triton.jit
def _decode_plane(w, PLANE: tl.constexpr, lut_ptr, FMT: tl.constexpr):
    """Codes of bit plane `PLANE` of the int32 words `w`, as float32 values before the group scale."""
    if FMT == SYM_INT4:
        v = _magic_plane(w, PLANE, 4, 8)
    elif FMT == ASYM_INT4:
        v = _magic_plane(w, PLANE, 4, 0)
    elif FMT == LUT4:
        v = tl.load(lut_ptr + ((w >> (4 * PLANE)) & 0xF))
    elif FMT == SYM_INT8:
        v = _magic_plane(w ^ _SIGN_BITS8, PLANE, 8, 128)  # signed bytes -> code + 128 (the XOR is shared)
    elif FMT == FP8_E4M3:
        q = (w >> (8 * PLANE)) & 0xFF
        # sign to bit 15, exponent+mantissa to bits 7..13: an fp16 equal to the e4m3 value * 2**-8, exact
        # for subnormals too.
        h = ((q & 0x80) << 8) | ((q & 0x7F) << 7)
        v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        # e5m2 is the top byte of an fp16.
        q = (w >> (8 * PLANE)) & 0xFF
        v = (q << 8).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return v


@triton.jit
def _gemv_load(
    w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0, kw_end, NG, stride_wn, stride_sn,
    GROUP_WORDS: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_KB: tl.constexpr,
    EVEN: tl.constexpr = False,
):  # fmt: skip
    """The weight words [BN, BKB, 4], scales and zero points (or the scales again) of the K step at `kw0`.

    Everything at or past `kw_end` (the split's end) reads as zero, so a prefetch past the last step is harmless.
    EVEN (the launcher checked that the tile's rows exist and every K step is whole): the only masked load is a
    prefetch past the split's end, with one predicate for the whole step, and its values are never used.
    """
    kw3 = kw0 + b3 * 4 + l3  # word index [1, BKB, 4]
    if EVEN:
        live = (n3 * 0 + kw0) < kw_end  # [BN, 1, 1], one value: tensor-shaped for the interpreter
        w = tl.load(w_ptr + n3 * stride_wn + kw3, mask=live)
    else:
        w = tl.load(w_ptr + n3 * stride_wn + kw3, mask=n_ok & (kw3 < kw_end), other=0)
    if SCALE_PER_TILE:
        g = kw0 // GROUP_WORDS
        s_ok = n_ok & ((n3 * 0 + g) < NG) & ((n3 * 0 + kw0) < kw_end)  # tensor-shaped for the interpreter
        s_off = n3 * stride_sn + g  # [BN, 1, 1]
    else:
        g3 = (kw0 + b3 * 4) // GROUP_WORDS  # [1, BKB, 1]
        s_ok = n_ok & (g3 < NG)
        s_off = n3 * stride_sn + g3  # [BN, BKB, 1]
    if EVEN:
        s = tl.load(s_ptr + s_off, mask=live).to(tl.float32)
    else:
        s = tl.load(s_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
    if not HAS_ZERO:
        z = s
    elif EVEN:
        z = tl.load(z_ptr + s_off, mask=live).to(tl.float32)
    else:
        z = tl.load(z_ptr + s_off, mask=s_ok, other=0.0).to(tl.float32)
    return w, s, z


_NF4_QUAD_F32 = tl.constexpr(quad_f32_ptx(NF4_LEVELS))
_FP4_QUAD_F32 = tl.constexpr(quad_f32_ptx(E2M1_LEVELS))


@triton.jit
def _lut_quad_f32(t, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """Codebook codes in bits 0-3, 16-19, 4-7 and 20-23 of int32 `t` -> their exact fp32 levels, by byte permutes
    of four byte tables in registers (`lut_pairs.quad_f32_ptx`): no table loads."""
    if EMULATE:  # the interpreter runs no PTX: the register decode (the same fp32 levels)
        return (
            _decode_codes(t & 0xF, 0, LUT4, CODEBOOK),
            _decode_codes((t >> 16) & 0xF, 0, LUT4, CODEBOOK),
            _decode_codes((t >> 4) & 0xF, 0, LUT4, CODEBOOK),
            _decode_codes((t >> 20) & 0xF, 0, LUT4, CODEBOOK),
        )
    asm: tl.constexpr = _NF4_QUAD_F32 if CODEBOOK == 1 else _FP4_QUAD_F32
    return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r", [t], dtype=(tl.float32,) * 4, is_pure=True, pack=1)


@triton.jit
def _pick8(i: tl.constexpr, v0, v1, v2, v3, v4, v5, v6, v7):
    """v_i for a compile-time index i (a Triton function: no dict of tensors)."""
    if i == 0:  # noqa: SIM116
        return v0
    elif i == 1:
        return v1
    elif i == 2:
        return v2
    elif i == 3:
        return v3
    elif i == 4:
        return v4
    elif i == 5:
        return v5
    elif i == 6:
        return v6
    else:
        return v7


@triton.jit
def _gemv_step(
    w, s, z, x_row, xp_row, kw0, KW, b3, l3, lut_ptr,
    FMT: tl.constexpr, PLANES: tl.constexpr, HAS_ZERO: tl.constexpr, BLOCK_KB: tl.constexpr,
    X_BF16: tl.constexpr, CODEBOOK: tl.constexpr = 0, EMULATE: tl.constexpr = False,
):  # fmt: skip
    """One K step's contribution [BN, BKB, 4] to the per-word accumulator: sum over planes of code * x, scaled.

    Activations are loaded as a [1, BKB, 4] tile that broadcasts over the rows in registers, so a thread holding
    several rows of the same words loads and widens each activation once. CODEBOOK (nf4 1, fp4 2; 0 = loads from
    the level table): the eight planes' levels come from two byte-permute decodes of four codes each
    (`_lut_quad_f32`), the same fp32 values summed in the same order.
    """
    CHUNK: tl.constexpr = 4 * PLANES  # elements per 4-word block
    x_ok = (kw0 + b3 * 4 + l3) < KW
    x_tile = x_row + (kw0 // 4 + b3) * CHUNK + l3  # plane-0 activation of every word
    if X_BF16:
        p3 = tl.arange(0, 2)[None, None, :]
        x_pairs = xp_row + (kw0 // 4 + b3) * (CHUNK // 2) + p3  # [1, BKB, 2] int32 = bf16 pairs
        p_ok = (kw0 + b3 * 4 + p3 * 0) < KW
    if CODEBOOK:
        c0, c4, c1, c5 = _lut_quad_f32(w, CODEBOOK, EMULATE)
        c2, c6, c3, c7 = _lut_quad_f32(w >> 8, CODEBOOK, EMULATE)
    for i in tl.static_range(PLANES):
        if CODEBOOK:
            v = _pick8(i, c0, c1, c2, c3, c4, c5, c6, c7)
        else:
            v = _decode_plane(w, i, lut_ptr, FMT)
        if X_BF16:
            # Two bf16 activations per int32 load; each widens to fp32 with one shift or one mask.
            xp = tl.load(x_pairs + 2 * i, mask=p_ok, other=0)
            lo = (xp << 16).to(tl.float32, bitcast=True)
            hi = (xp & -65536).to(tl.float32, bitcast=True)
            xv = tl.reshape(tl.join(lo, hi), (1, BLOCK_KB, 4))
        else:
            xv = tl.load(x_tile + 4 * i, mask=x_ok, other=0.0).to(tl.float32)
        if i == 0:
            part = v * xv
            if HAS_ZERO:
                xsum = xv
        else:
            part += v * xv
            if HAS_ZERO:
                xsum += xv
    if HAS_ZERO:
        # sum (q s + z) x = s sum q x + z sum x; the activation sums are per thread, not per row.
        return part * s + xsum * z
    else:
        return part * s


@triton.jit
def gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, y_ptr,
    M, N, KW, NG, words_per_split,
    stride_xm, stride_wn, stride_sn, stride_ym, stride_ys,
    GROUP_WORDS: tl.constexpr, FMT: tl.constexpr, PLANES: tl.constexpr,
    HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, USE_WS: tl.constexpr,
    X_BF16: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr, CODEBOOK: tl.constexpr = 0,
    EMULATE: tl.constexpr = False,
):  # fmt: skip
    """y[m, n] = sum_k x[m, k] * W[n, k] on CUDA cores, one activation row per program (decode).

    The accumulator keeps one lane per weight word, so the inner loop is pure FMAs and the only cross-thread
    reduction happens once, after the K loop. With PREFETCH the next step's weight words and scales are loaded
    before the current step is computed (double-buffered in registers), so every program keeps two steps of
    HBM reads in flight instead of one: a batch-1 GEMV is bound by the bytes in flight per SM, not by ALU work.
    Grid: (N tiles, K splits, M). With USE_WS each split writes fp32 partials to its workspace slice.
    CODEBOOK (nf4 / fp4, `pairs` configs): levels by byte permutes in registers instead of table loads.
    BLOCK_M is accepted for signature parity with `dot_kernel` and must be 1.
    """
    tl.static_assert(BLOCK_M == 1)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2)
    STEP: tl.constexpr = BLOCK_KB * 4

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]  # [BN, 1, 1]
    b3 = tl.arange(0, BLOCK_KB)[None, :, None]  # [1, BKB, 1]
    l3 = tl.arange(0, 4)[None, None, :]  # [1, 1, 4]
    n_ok = n3 < N
    x_row = x_ptr + row * stride_xm
    xp_row = x_ptr.to(tl.pointer_type(tl.int32)) + row * (stride_xm // 2)  # read only when X_BF16

    acc = tl.zeros([BLOCK_N, BLOCK_KB, 4], dtype=tl.float32)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    if PREFETCH:
        w, s, z = _gemv_load(
            w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw_begin, kw_end, NG, stride_wn, stride_sn,
            GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
        )  # fmt: skip
        wait_for_inputs(PDL)  # the first weight tile is in flight while the previous kernel drains
        for kw0 in range(kw_begin, kw_end, STEP):
            w_next, s_next, z_next = _gemv_load(
                w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0 + STEP, kw_end, NG, stride_wn, stride_sn,
                GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
            )  # fmt: skip
            acc += _gemv_step(
                w, s, z, x_row, xp_row, kw0, KW, b3, l3, lut_ptr, FMT, PLANES, HAS_ZERO, BLOCK_KB, X_BF16, CODEBOOK,
                EMULATE,
            )  # fmt: skip
            w, s, z = w_next, s_next, z_next
    else:
        wait_for_inputs(PDL)
        for kw0 in range(kw_begin, kw_end, STEP):
            w, s, z = _gemv_load(
                w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0, kw_end, NG, stride_wn, stride_sn,
                GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
            )  # fmt: skip
            acc += _gemv_step(
                w, s, z, x_row, xp_row, kw0, KW, b3, l3, lut_ptr, FMT, PLANES, HAS_ZERO, BLOCK_KB, X_BF16, CODEBOOK,
                EMULATE,
            )  # fmt: skip
    y = tl.sum(tl.sum(acc, axis=2), axis=1)  # [BN]
    n_store = offs_n < N
    if not USE_WS:
        tl.store(y_ptr + row * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_store)
    else:
        tl.store(y_ptr + pid_k * stride_ys + row * stride_ym + offs_n, y, mask=n_store)


@triton.jit
def dot_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, y_ptr,
    M, N, KW, NG, words_per_split,
    stride_xm, stride_wn, stride_sn, stride_ym, stride_ys,
    GROUP_WORDS: tl.constexpr, FMT: tl.constexpr, PLANES: tl.constexpr,
    HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, USE_WS: tl.constexpr,
    DOT_F32: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """The same product on tensor cores (`tl.dot`): dequantize a weight tile in registers, one dot per plane.

    Used for 5..16 rows (BLOCK_M = 16) and for prefill tiles. The K order inside a dot does not matter, so
    plane `i` of every block is multiplied with the activations it lines up with, no reshuffle needed.
    Grid: (M tiles * N tiles, K splits); M varies fastest so neighbouring programs share a weight tile in L2.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m
    CHUNK: tl.constexpr = 4 * PLANES
    BKW: tl.constexpr = BLOCK_KB * 4

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_KB)
    offs_l = tl.arange(0, 4)
    n3 = offs_n[:, None, None]
    b3 = offs_b[None, :, None]
    l3 = offs_l[None, None, :]
    m3 = offs_m[:, None, None]
    n_ok = n3 < N
    m_ok = m3 < M

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    wait_for_inputs(PDL)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    for kw0 in range(kw_begin, kw_end, BKW):
        kw3 = kw0 + b3 * 4 + l3
        w_ok = n_ok & (kw3 < KW)
        w = tl.load(w_ptr + n3 * stride_wn + kw3, mask=w_ok, other=0)
        if SCALE_PER_TILE:
            g = kw0 // GROUP_WORDS
            s_ok = n_ok & ((n3 * 0 + g) < NG)  # tensor-shaped: the interpreter rejects scalar masks here
            s = tl.load(s_ptr + n3 * stride_sn + g, mask=s_ok, other=0.0).to(tl.float32)
        else:
            g3 = (kw0 + b3 * 4) // GROUP_WORDS
            s_ok = n_ok & (g3 < NG)
            s = tl.load(s_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32)
        if HAS_ZERO:
            if SCALE_PER_TILE:
                z = tl.load(z_ptr + n3 * stride_sn + g, mask=s_ok, other=0.0).to(tl.float32)
            else:
                z = tl.load(z_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32)
        e3 = (kw0 // 4 + b3) * CHUNK + l3  # [1, BKB, 4]
        x_ok = m_ok & (kw3 < KW)
        # With one scale per row for the whole step and no zero point, the codes go into the dot unscaled
        # (exact in bf16/fp16) and the scale is applied to the step's fp32 sum; otherwise it is folded in first.
        POST_SCALE: tl.constexpr = SCALE_PER_TILE and not HAS_ZERO
        step = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for i in tl.static_range(PLANES):
            v = _decode_plane(w, i, lut_ptr, FMT)
            if HAS_ZERO:
                v = v * s + z
            elif not POST_SCALE:
                v = v * s
            xv = tl.load(x_ptr + m3 * stride_xm + e3 + 4 * i, mask=x_ok, other=0.0)
            wt = tl.reshape(v.to(xv.dtype), (BLOCK_N, BKW))
            xt = tl.reshape(xv, (BLOCK_M, BKW))
            if DOT_F32:  # the Triton interpreter multiplies bf16 operands as raw integers
                step += tl.dot(xt.to(tl.float32), tl.trans(wt).to(tl.float32))
            else:
                step = tl.dot(xt, tl.trans(wt), step)
        if POST_SCALE:
            acc += step * tl.reshape(s, (1, BLOCK_N))
        else:
            acc += step
    m2 = offs_m[:, None]
    n2 = offs_n[None, :]
    out_ok = (m2 < M) & (n2 < N)
    if not USE_WS:
        tl.store(y_ptr + m2 * stride_ym + n2, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
    else:
        tl.store(y_ptr + pid_k * stride_ys + m2 * stride_ym + n2, acc, mask=out_ok)


@triton.jit
def _last_split_sums(
    ws_ptr, out_ptr, cnt_ptr, offs, ok, stride_ys, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr
):
    """The in-kernel split-K reduction (`mma_t_kernel`'s FIXUP), after this program stored its partial: count
    the arrival on this output tile; the tile's last split sums all partials in split order into out_ptr.

    Ordering: the barrier puts every thread's partial before the counter's release (acq_rel at GPU scope); the
    last program's acquire makes the other splits' partials visible, read past L1 (.cg: a line of this
    workspace may sit in L1 from an earlier call).
    """
    tl.debug_barrier()
    tile = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    splits = tl.num_programs(1)
    arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
    if arrived == splits - 1:
        total = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for s in range(0, splits):
            total += tl.load(ws_ptr + s * stride_ys + offs, mask=ok, other=0.0, cache_modifier=".cg")
        tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=ok)
        tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def store_t_tile(
    acc, y_ptr, out_ptr, cnt_ptr, m_row, n2, ok, pid_k, stride_ym, stride_ys,
    USE_WS: tl.constexpr, FIXUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Write a transposed tile's result acc [BLOCK_N, BLOCK_M] (y^T): into y [M, N], or as this program's fp32
    split partial (USE_WS), summed by the tile's last split here (FIXUP) or by `splitk_reduce_kernel`."""
    if not USE_WS:
        tl.store(y_ptr + m_row * stride_ym + n2, acc.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(y_ptr + pid_k * stride_ys + m_row * stride_ym + n2, acc, mask=ok)
        if FIXUP:
            _last_split_sums(y_ptr, out_ptr, cnt_ptr, m_row * stride_ym + n2, ok, stride_ys, BLOCK_N, BLOCK_M)


@triton.jit
def splitk_reduce_kernel(
    ws_ptr, y_ptr, numel, stride_ys, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr
):  # fmt: skip
    """y = sum over the SPLIT_K fp32 partial products, cast to y's dtype (every element written)."""
    wait_for_inputs(PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    total = tl.load(ws_ptr + offs, mask=ok, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        total += tl.load(ws_ptr + s * stride_ys + offs, mask=ok, other=0.0)
    tl.store(y_ptr + offs, total.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def dequant_kernel(
    w_ptr, s_ptr, z_ptr, lut_ptr, out_ptr,
    N, K, KW, NG, stride_wn, stride_sn, stride_on,
    GROUP_WORDS: tl.constexpr, FMT: tl.constexpr, PLANES: tl.constexpr, HAS_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
):  # fmt: skip
    """Decode the device layout back to a dense row-major [N, K] weight (for the dequantize + GEMM path).

    The tile is [rows, blocks, planes, 4 words]: element (b, i, l) is output column b * 4 * PLANES + 4 * i + l,
    so the tile's row-major order is the output's. Each word is loaded once and shifted per plane."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]
    b3 = pid_k * BLOCK_KB + tl.arange(0, BLOCK_KB)[None, :, None]  # global block index
    kw3 = b3 * 4 + tl.arange(0, 4)[None, None, :]
    n_ok = n3 < N
    w = tl.load(w_ptr + n3 * stride_wn + kw3, mask=n_ok & (kw3 < KW), other=0)
    g3 = (b3 * 4) // GROUP_WORDS
    s_ok = n_ok & (g3 < NG)
    s = tl.expand_dims(tl.load(s_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32), 2)
    v = _decode_tile(w, lut_ptr, FMT, PLANES)  # [BN, BKB, PLANES, 4]
    if HAS_ZERO:
        z = tl.load(z_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32)
        v = v * s + tl.expand_dims(z, 2)
    else:
        v = v * s
    # Stored as [rows, columns]: the tile's row-major order is the output's, so the addresses are visibly
    # contiguous along a row and a warp's stores coalesce (stored as the 4-D tile, Triton gave each thread 4
    # elements and spread a warp over rows and blocks: 8-byte pieces 4 * PLANES elements apart).
    BLOCK_K: tl.constexpr = BLOCK_KB * 4 * PLANES
    v2 = tl.reshape(v, (BLOCK_N, BLOCK_K))
    k2 = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    n2 = offs_n[:, None]
    tl.store(out_ptr + n2 * stride_on + k2, v2.to(out_ptr.dtype.element_ty), mask=(n2 < N) & (k2 < K))


# -- int4 x int8 GEMV (CUDA): weights stay 4-bit, activations are quantized to int8 per block of 32 -------------
#
# The float GEMV above spends ~5.5 instructions per weight (decode, widen, FMA) and is issue-bound at batch 1.
# With int8 activations one `dp4a` multiplies four weights by four activations and adds them into an int32:
# `w & 0x0F0F0F0F` puts nibbles 0, 2, 4, 6 of a word (elements l, 8+l, 16+l, 24+l of its block) into four
# bytes, `(w >> 4) & 0x0F0F0F0F` nibbles 1, 3, 5, 7; `quantize_x_q8_kernel` packs the activations of each block
# in exactly that order. About 0.7 instructions per weight remain. Same scheme as llama.cpp's Q4 x Q8 dot.

QK_LO_MASK = tl.constexpr(0x0F0F0F0F)


@triton.jit
def _dp4a(a, b, c, EMULATE: tl.constexpr):
    """c + sum over the 4 bytes t of (unsigned byte t of a) * (signed byte t of b), as int32.

    One PTX `dp4a` on CUDA; EMULATE spells it out in integer ops (Triton's interpreter, other backends).
    """
    if EMULATE:
        acc = c
        for t in tl.static_range(4):
            acc += ((a >> (8 * t)) & 0xFF) * ((b << (24 - 8 * t)) >> 24)
        return acc
    else:
        return tl.inline_asm_elementwise(
            "dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32, is_pure=True, pack=1
        )


@triton.jit
def round_half_even(v):
    """v rounded to the nearest integer, ties to even, as fp32 (by hand: the interpreter has no rint) - the
    rounding of torch.round, which the quantizers' twins use."""
    r = tl.floor(v + 0.5)
    odd = (r.to(tl.int32) & 1) == 1
    return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)


@triton.jit
def quantize_blocks_q8(x, blk, ok, xq_row, xs_row, xss_row, BLOCKS: tl.constexpr):
    """Quantize and store activation blocks x [BLOCKS, 32] (fp32) of one row, in `gemv_q8_kernel`'s order.

    Scale absmax / 127 and round half to even - the CPU kernels' scheme, so
    `cpu_native.reference_int8_activations(..., divide=True)` is the twin. Block `blk[j]` (stored where `ok[j]`) becomes 8 words
    at xq_row[8 blk : 8 blk + 8]: words 0-3 hold elements (l, 8+l, 16+l, 24+l) for l = 0..3 (one per byte,
    byte t = element 8t + l), words 4-7 elements (4+l, 12+l, 20+l, 28+l). xs_row[blk] is the block's scale,
    xss_row[blk] = scale * the sum of its int8 values (for zero points / the int4 offset). Shared by the
    stand-alone quantizer below and the fused producers in `decode_ops.py` (RMSNorm, SwiGLU).
    """
    amax = tl.max(tl.abs(x), axis=1)  # [BLOCKS]
    scale = tl.div_rn(amax, 127.0)
    # IEEE division (`/` may lower to an approximate one) so every rounding decision matches the twin's.
    v = tl.div_rn(x, tl.where(scale > 0, scale, 1.0)[:, None])  # all-zero blocks (padding) give zeros
    q = round_half_even(v).to(tl.int32)  # in [-127, 127]
    qsum = tl.sum(q, axis=1)
    # element e = 8t + 4h + l -> byte t of word 4h + l
    q4 = tl.reshape(q & 0xFF, (BLOCKS, 4, 8))  # [block, t, 4h + l]
    shift = (tl.arange(0, 4) * 8)[None, :, None]
    words = tl.sum(q4 << shift, axis=1)  # [BLOCKS, 8]: disjoint bytes, so the sum is an OR
    w_idx = tl.arange(0, 8)
    tl.store(xq_row + blk[:, None] * 8 + w_idx[None, :], words, mask=ok[:, None])
    tl.store(xs_row + blk, scale, mask=ok)
    tl.store(xss_row + blk, scale * qsum.to(tl.float32), mask=ok)


@triton.jit
def quantize_x_q8_kernel(
    x_ptr, xq_ptr, xs_ptr, xss_ptr, K, KB, stride_xm, stride_qm, stride_sm, BLOCKS: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """Activations x [M, K] -> int8 per block of 32 (`quantize_blocks_q8`); KB = ceil(K / 32) blocks, the
    tail of the last one read as zeros. Grid: (rows, block chunks of BLOCKS)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    blk = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)  # [BLOCKS]
    ok = blk < KB
    k = blk[:, None] * 32 + tl.arange(0, 32)[None, :]
    x = tl.load(x_ptr + row * stride_xm + k, mask=k < K, other=0.0).to(tl.float32)
    quantize_blocks_q8(
        x, blk, ok, xq_ptr + row * stride_qm, xs_ptr + row * stride_sm, xss_ptr + row * stride_sm, BLOCKS
    )


@triton.jit
def _q8_x(
    xq_row, xs_row, xss_row, kw0, kw_end, KBX, b3, l3, b2, EVEN: tl.constexpr
):  # fmt: skip
    """The int8 activations of the K step at `kw0`, as `_q8_apply` takes them: words [1, BKB, 4] pairing with the
    weights' low and high nibbles, block scales and scaled sums [1, BKB]. Past `kw_end` or KBX they read as zero.

    EVEN: the step is whole and inside the activation row, so the loads need no masks.
    """
    kb0 = kw0 // 4
    if EVEN:
        x_lo = tl.load(xq_row + (kb0 + b3) * 8 + l3)  # [1, BKB, 4]
        x_hi = tl.load(xq_row + (kb0 + b3) * 8 + 4 + l3)
    else:
        x_ok = ((kw0 + b3 * 4 + l3) < kw_end) & ((kb0 + b3) < KBX)
        x_lo = tl.load(xq_row + (kb0 + b3) * 8 + l3, mask=x_ok, other=0)
        x_hi = tl.load(xq_row + (kb0 + b3) * 8 + 4 + l3, mask=x_ok, other=0)
    # Declared non-contiguous so each thread loads single blocks, in the layout the dot products have: read as
    # pairs, the block scales' layout differs from theirs and every step pays register shuffles between them.
    blk = tl.max_contiguous(kb0 + b2, [1, 1])  # [1, BKB]
    if EVEN:
        xs = tl.load(xs_row + blk)
        xss = tl.load(xss_row + blk)
    else:
        blk_ok = ((kw0 + b2 * 4) < kw_end) & (blk < KBX)
        xs = tl.load(xs_row + blk, mask=blk_ok, other=0.0)
        xss = tl.load(xss_row + blk, mask=blk_ok, other=0.0)
    return x_lo, x_hi, xs, xss


@triton.jit
def _q8_apply(
    w, s, z, x_lo, x_hi, xs, xss,
    HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    """One K step's [BN, BKB] contribution of `gemv_q8_kernel`: per block, 8 dp4a then the fp32 scaling."""
    return _q8_apply_codes(
        w & QK_LO_MASK, (w >> 4) & QK_LO_MASK, s, z, x_lo, x_hi, xs, xss, HAS_ZERO, SCALE_PER_TILE, BLOCK_N,
        BLOCK_KB, EMULATE,
    )  # fmt: skip


@triton.jit
def _q8_apply_codes(
    lo, hi, s, z, x_lo, x_hi, xs, xss,
    HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    """`_q8_apply` on weight words already split into their low and high nibbles (`lo`, `hi`: unpacked once per
    step, then met by every activation row of a multi-row program)."""
    d = _dp4a(lo, tl.broadcast_to(x_lo, lo.shape), tl.zeros_like(lo), EMULATE)
    d = _dp4a(hi, tl.broadcast_to(x_hi, hi.shape), d, EMULATE)
    dot = tl.sum(d, axis=2).to(tl.float32)  # [BN, BKB]
    if SCALE_PER_TILE:
        s2 = tl.reshape(s, (BLOCK_N, 1))
    else:
        s2 = tl.reshape(s, (BLOCK_N, BLOCK_KB))
    if HAS_ZERO:
        if SCALE_PER_TILE:
            z2 = tl.reshape(z, (BLOCK_N, 1))
        else:
            z2 = tl.reshape(z, (BLOCK_N, BLOCK_KB))
        return dot * xs * s2 + xss * z2
    else:
        return (dot * xs - 8.0 * xss) * s2


@triton.jit
def _q8_tile(pid_n, t, N, TILES: tl.constexpr, BLOCK_N: tl.constexpr):
    """Rows [BN] of a program's t-th weight tile, as [BN, 1, 1] too, and which of them exist."""
    offs_n = (pid_n * TILES + t) * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]
    return offs_n, n3, n3 < N


@triton.jit
def _q8_tile_load(
    w_ptr, s_ptr, z_ptr, pid_n, t, N, b3, l3, kw0, kw_end, NG, stride_wn, stride_sn,
    GROUP_WORDS: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_KB: tl.constexpr, TILES: tl.constexpr, EVEN: tl.constexpr,
):  # fmt: skip
    """`_gemv_load` of the K step at `kw0` for a program's t-th tile, and the tile's rows."""
    offs_n, n3, n_ok = _q8_tile(pid_n, t, N, TILES, BLOCK_N)
    w, s, z = _gemv_load(
        w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0, kw_end, NG, stride_wn, stride_sn,
        GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB, EVEN,
    )  # fmt: skip
    return offs_n, w, s, z


@triton.jit
def _q8_store(
    y_ptr, acc, offs_n, N, pid_k, row, stride_ym, stride_ys, USE_WS: tl.constexpr, EVEN: tl.constexpr
):
    """Reduce a tile's [BN, BKB] partial products over K and store them (fp32 per split with USE_WS)."""
    y = tl.sum(acc, axis=1)
    if EVEN:
        n_store = None
    else:
        n_store = offs_n < N
    if not USE_WS:
        tl.store(y_ptr + row * stride_ym + offs_n, y.to(y_ptr.dtype.element_ty), mask=n_store)
    else:
        tl.store(y_ptr + pid_k * stride_ys + row * stride_ym + offs_n, y, mask=n_store)


@triton.jit
def gemv_q8_kernel(
    xq_ptr, xs_ptr, xss_ptr, w_ptr, s_ptr, z_ptr, y_ptr,
    M, N, KW, KBX, NG, words_per_split,
    stride_qm, stride_sm, stride_wn, stride_sn, stride_ym, stride_ys,
    GROUP_WORDS: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, USE_WS: tl.constexpr, EMULATE: tl.constexpr,
    PREFETCH: tl.constexpr, TILES: tl.constexpr, EVEN: tl.constexpr, ONE_STEP: tl.constexpr,
    PDL: tl.constexpr, ROWS: tl.constexpr = 1,
):  # fmt: skip
    """y[m, n] = sum_k x[m, k] W[n, k] for 4-bit integer weights (sym_int4 / asym_int4) and int8 activations.

    Per block of 32: one int32 dot from 8 dp4a, then in fp32 s_w * (s_x * dot - 8 * s_x * sum) (sym, codes
    stored as q + 8) or s_w * s_x * dot + z * s_x * sum (asym). Grid and split-K as in `gemv_kernel`, and
    PREFETCH double-buffers the weight words as there: with ~0.7 instructions per weight this kernel waits on
    memory rather than on issue, so two K steps in flight per program can pay off here.
    Each program walks TILES consecutive tiles of BLOCK_N weight rows in turn: on short rows (K = 4096) that
    makes fewer, longer-lived programs.
    KBX: activation blocks per row (ceil(K / 32)); weight words past them (row padding) meet zeros.
    EVEN (`launch.whole_tiles`): every tile lies inside N and every K step inside the row, so the loads and
    stores go unmasked - a quarter fewer instructions per step on the Llama shapes, where issue, not only
    memory, limits this kernel.
    ONE_STEP (the launcher's `words_per_split == 4 * BLOCK_KB`): a split is one K step, so every tile meets the
    same activations: they are loaded once per program, the first tile's weights before waiting for the
    previous kernel, and PREFETCH then loads the next tile while this one is computed.
    ROWS (1..8; grid axis 2 counts tiles of ROWS activation rows): each weight step is loaded and split into its
    nibbles once and met by ROWS rows in turn (one accumulator each), so a batch of decode rows streams the
    weight once instead of once per row. A row's activations are loaded per step (ONE_STEP: per tile), from L1
    / L2 after the first program; rows past M re-read the last row and store nothing.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row0 = tl.program_id(2) * ROWS
    STEP: tl.constexpr = BLOCK_KB * 4
    AHEAD: tl.constexpr = STEP if PREFETCH else 0  # how far past the step being computed the loads run
    b3 = tl.arange(0, BLOCK_KB)[None, :, None]
    l3 = tl.arange(0, 4)[None, None, :]
    b2 = tl.arange(0, BLOCK_KB)[None, :]
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    if ONE_STEP:
        offs_n, w, s, z = _q8_tile_load(
            w_ptr, s_ptr, z_ptr, pid_n, 0, N, b3, l3, kw_begin, kw_end, NG, stride_wn, stride_sn,
            GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, TILES, EVEN,
        )  # fmt: skip
        wait_for_inputs(PDL)
        if ROWS == 1:
            x_lo, x_hi, xs, xss = _q8_x(
                xq_ptr + row0 * stride_qm, xs_ptr + row0 * stride_sm, xss_ptr + row0 * stride_sm, kw_begin,
                kw_end, KBX, b3, l3, b2, EVEN,
            )  # fmt: skip
        for t in tl.static_range(TILES):
            if PREFETCH and t + 1 < TILES:  # the next tile's weights are in flight while this one is computed
                offs_in, w_in, s_in, z_in = _q8_tile_load(
                    w_ptr, s_ptr, z_ptr, pid_n, t + 1, N, b3, l3, kw_begin, kw_end, NG, stride_wn, stride_sn,
                    GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, TILES, EVEN,
                )  # fmt: skip
            if ROWS == 1:
                acc = _q8_apply(
                    w, s, z, x_lo, x_hi, xs, xss, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, EMULATE
                )
                _q8_store(y_ptr, acc, offs_n, N, pid_k, row0, stride_ym, stride_ys, USE_WS, EVEN)
            else:
                lo = w & QK_LO_MASK
                hi = (w >> 4) & QK_LO_MASK
                for r in tl.static_range(ROWS):
                    row = tl.minimum(row0 + r, M - 1)
                    x_lo, x_hi, xs, xss = _q8_x(
                        xq_ptr + row * stride_qm, xs_ptr + row * stride_sm, xss_ptr + row * stride_sm,
                        kw_begin, kw_end, KBX, b3, l3, b2, EVEN,
                    )  # fmt: skip
                    acc = _q8_apply_codes(
                        lo, hi, s, z, x_lo, x_hi, xs, xss, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, EMULATE
                    )  # fmt: skip
                    if row0 + r < M:
                        _q8_store(y_ptr, acc, offs_n, N, pid_k, row, stride_ym, stride_ys, USE_WS, EVEN)
            if t + 1 < TILES:
                if not PREFETCH:
                    offs_in, w_in, s_in, z_in = _q8_tile_load(
                        w_ptr, s_ptr, z_ptr, pid_n, t + 1, N, b3, l3, kw_begin, kw_end, NG, stride_wn,
                        stride_sn, GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, TILES, EVEN,
                    )  # fmt: skip
                offs_n, w, s, z = offs_in, w_in, s_in, z_in
    else:
        for t in tl.static_range(TILES):
            offs_n, n3, n_ok = _q8_tile(pid_n, t, N, TILES, BLOCK_N)
            a0 = tl.zeros([BLOCK_N, BLOCK_KB], dtype=tl.float32)
            a1, a2, a3, a4, a5, a6, a7 = a0, a0, a0, a0, a0, a0, a0  # rows 1.. (unused ones fold away)
            if PREFETCH:  # the first step's weights are in flight while the previous kernel drains
                w, s, z = _gemv_load(
                    w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw_begin, kw_end, NG, stride_wn, stride_sn,
                    GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB, EVEN,
                )  # fmt: skip
            if t == 0:
                wait_for_inputs(PDL)
            for kw0 in range(kw_begin, kw_end, STEP):
                # With PREFETCH this loads the next step (used in the next iteration), else this one.
                w_in, s_in, z_in = _gemv_load(
                    w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0 + AHEAD, kw_end, NG, stride_wn, stride_sn,
                    GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB, EVEN,
                )  # fmt: skip
                if not PREFETCH:
                    w, s, z = w_in, s_in, z_in
                lo = w & QK_LO_MASK
                hi = (w >> 4) & QK_LO_MASK
                # a0 holds row r's accumulator in turn; eight rotations (renames, no code) restore the order
                for r in tl.static_range(8):
                    if r < ROWS:
                        row = tl.minimum(row0 + r, M - 1)
                        x_lo, x_hi, xs, xss = _q8_x(
                            xq_ptr + row * stride_qm, xs_ptr + row * stride_sm, xss_ptr + row * stride_sm, kw0,
                            kw_end, KBX, b3, l3, b2, EVEN,
                        )  # fmt: skip
                        a0 += _q8_apply_codes(
                            lo, hi, s, z, x_lo, x_hi, xs, xss, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB,
                            EMULATE,
                        )  # fmt: skip
                    a0, a1, a2, a3, a4, a5, a6, a7 = a1, a2, a3, a4, a5, a6, a7, a0
                if PREFETCH:
                    w, s, z = w_in, s_in, z_in
            for r in tl.static_range(ROWS):  # row r's accumulator is a0 after r shifts
                if row0 + r < M:
                    _q8_store(y_ptr, a0, offs_n, N, pid_k, row0 + r, stride_ym, stride_ys, USE_WS, EVEN)
                a0, a1, a2, a3, a4, a5, a6 = a1, a2, a3, a4, a5, a6, a7


@triton.jit
def _q8_rows_step(
    w, s, z, xq_ptr, xs_ptr, xss_ptr, rows4, rows3, r_ok4, r_ok3, stride_qm, stride_sm, kw0, kw_end, KBX,
    b4, l4, b3,
    HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
    EMULATE: tl.constexpr,
):  # fmt: skip
    """`_q8_x` + `_q8_apply` for ROWS activation rows at once: the weight words [BN, BKB, 4] are unpacked once and meet
    every row's int8 codes; returns the [ROWS, BN, BKB] contribution."""
    kb0 = kw0 // 4
    x_ok = r_ok4 & ((kw0 + b4 * 4 + l4) < kw_end) & ((kb0 + b4) < KBX)
    x_off = rows4 * stride_qm + (kb0 + b4) * 8 + l4  # [ROWS, 1, BKB, 4]
    x_lo = tl.load(xq_ptr + x_off, mask=x_ok, other=0)
    x_hi = tl.load(xq_ptr + x_off + 4, mask=x_ok, other=0)
    lo = tl.expand_dims(w & QK_LO_MASK, 0)  # [1, BN, BKB, 4]
    hi = tl.expand_dims((w >> 4) & QK_LO_MASK, 0)
    shape: tl.constexpr = (x_lo.shape[0], BLOCK_N, BLOCK_KB, 4)
    d = _dp4a(tl.broadcast_to(lo, shape), tl.broadcast_to(x_lo, shape), tl.zeros(shape, tl.int32), EMULATE)
    d = _dp4a(tl.broadcast_to(hi, shape), tl.broadcast_to(x_hi, shape), d, EMULATE)
    dot = tl.sum(d, axis=3).to(tl.float32)  # [ROWS, BN, BKB]
    blk_ok = r_ok3 & ((kw0 + b3 * 4) < kw_end) & ((kb0 + b3) < KBX)
    xs = tl.load(xs_ptr + rows3 * stride_sm + kb0 + b3, mask=blk_ok, other=0.0)  # [ROWS, 1, BKB]
    xss = tl.load(xss_ptr + rows3 * stride_sm + kb0 + b3, mask=blk_ok, other=0.0)
    if SCALE_PER_TILE:
        s3 = tl.reshape(s, (1, BLOCK_N, 1))
    else:
        s3 = tl.reshape(s, (1, BLOCK_N, BLOCK_KB))
    if HAS_ZERO:
        if SCALE_PER_TILE:
            z3 = tl.reshape(z, (1, BLOCK_N, 1))
        else:
            z3 = tl.reshape(z, (1, BLOCK_N, BLOCK_KB))
        return dot * xs * s3 + xss * z3
    else:
        return (dot * xs - 8.0 * xss) * s3


@triton.jit
def gemv_q8_rows_kernel(
    xq_ptr, xs_ptr, xss_ptr, w_ptr, s_ptr, z_ptr, y_ptr,
    M, N, KW, KBX, NG, words_per_split,
    stride_qm, stride_sm, stride_wn, stride_sn, stride_ym, stride_ys,
    GROUP_WORDS: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE_PER_TILE: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, USE_WS: tl.constexpr,
    EMULATE: tl.constexpr, PREFETCH: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """`gemv_q8_kernel` for 2..16 decode rows: each program multiplies its weight tile with ROWS activation
    rows, so the weight is read from memory once for all of them (a one-row program per row would stream it
    ROWS times, from L2 at best). Grid (N tiles, K splits, row tiles of ROWS)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    STEP: tl.constexpr = BLOCK_KB * 4
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]
    b3 = tl.arange(0, BLOCK_KB)[None, :, None]
    l3 = tl.arange(0, 4)[None, None, :]
    n_ok = n3 < N
    offs_r = tl.program_id(2) * ROWS + tl.arange(0, ROWS)
    rows4 = offs_r[:, None, None, None]
    rows3 = offs_r[:, None, None]
    r_ok4 = rows4 < M
    r_ok3 = rows3 < M
    b4 = tl.arange(0, BLOCK_KB)[None, None, :, None]
    l4 = tl.arange(0, 4)[None, None, None, :]
    bb3 = tl.arange(0, BLOCK_KB)[None, None, :]
    acc = tl.zeros([ROWS, BLOCK_N, BLOCK_KB], dtype=tl.float32)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    if PREFETCH:
        w, s, z = _gemv_load(
            w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw_begin, kw_end, NG, stride_wn, stride_sn,
            GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
        )  # fmt: skip
        wait_for_inputs(PDL)
        for kw0 in range(kw_begin, kw_end, STEP):
            w_next, s_next, z_next = _gemv_load(
                w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0 + STEP, kw_end, NG, stride_wn, stride_sn,
                GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
            )  # fmt: skip
            acc += _q8_rows_step(
                w, s, z, xq_ptr, xs_ptr, xss_ptr, rows4, rows3, r_ok4, r_ok3, stride_qm, stride_sm, kw0, kw_end,
                KBX, b4, l4, bb3, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, EMULATE,
            )  # fmt: skip
            w, s, z = w_next, s_next, z_next
    else:
        wait_for_inputs(PDL)
        for kw0 in range(kw_begin, kw_end, STEP):
            w, s, z = _gemv_load(
                w_ptr, s_ptr, z_ptr, n3, n_ok, b3, l3, kw0, kw_end, NG, stride_wn, stride_sn,
                GROUP_WORDS, HAS_ZERO, SCALE_PER_TILE, BLOCK_KB,
            )  # fmt: skip
            acc += _q8_rows_step(
                w, s, z, xq_ptr, xs_ptr, xss_ptr, rows4, rows3, r_ok4, r_ok3, stride_qm, stride_sm, kw0, kw_end,
                KBX, b4, l4, bb3, HAS_ZERO, SCALE_PER_TILE, BLOCK_N, BLOCK_KB, EMULATE,
            )  # fmt: skip
    y = tl.sum(acc, axis=2)  # [ROWS, BN]
    r2 = offs_r[:, None]
    n2 = offs_n[None, :]
    ok = (r2 < M) & (n2 < N)
    if not USE_WS:
        tl.store(y_ptr + r2 * stride_ym + n2, y.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        tl.store(y_ptr + pid_k * stride_ys + r2 * stride_ym + n2, y, mask=ok)


# -- batched tensor-core GEMM (2..256 activation rows): dequantize a whole tile in registers, one dot per step -----
#
# `dot_kernel` issues one small dot per bit plane (K = 4 * BLOCK_KB each). Here the decoded planes are laid out
# back into element order in registers - word l, plane p of block b is element 32 b + 4 p + l for 4-bit codes -
# so a K step is ONE dot of K = BLOCK_KB * 4 * PLANES against a contiguous activation tile: fewer, larger
# MMAs, contiguous activation loads, and the weight words loaded as 16-byte vectors that Triton's pipeliner
# can keep `num_stages` steps ahead.


@triton.jit
def _decode_tile(w, lut_ptr, FMT: tl.constexpr, PLANES: tl.constexpr):
    """Words w [BN, BKB, 4] -> code values [BN, BKB, PLANES, 4] in fp32 (before scales); element order inside
    a block is (plane, word), i.e. the weight's own K order."""
    BITS: tl.constexpr = 32 // PLANES
    MASK: tl.constexpr = (1 << BITS) - 1
    shift = (tl.arange(0, PLANES) * BITS)[None, None, :, None]  # [1, 1, PLANES, 1]
    q = (tl.expand_dims(w, 2) >> shift) & MASK  # [BN, BKB, PLANES, 4]
    return _decode_codes(q, lut_ptr, FMT, 0)


@triton.jit
def _mma_x_q8(
    xq_ptr, xs_ptr, m4, m_ok4, kb0, BLOCK_KB: tl.constexpr, KBX, stride_qm, stride_sm
):  # fmt: skip
    """Int8 activations (`quantize_blocks_q8`'s layout) of blocks kb0.. as fp32 [BM, BKB, 8, 4] values in element
    order: element 4 p + l of a block is byte p // 2 of word 4 (p % 2) + l."""
    b4 = tl.arange(0, BLOCK_KB)[None, :, None, None]
    p4 = tl.arange(0, 8)[None, None, :, None]
    l4 = tl.arange(0, 4)[None, None, None, :]
    blk = kb0 + b4
    ok = m_ok4 & (blk < KBX)
    word = tl.load(xq_ptr + m4 * stride_qm + blk * 8 + (p4 % 2) * 4 + l4, mask=ok, other=0)
    code = (word << (24 - 8 * (p4 // 2))) >> 24  # sign-extended byte
    xs = tl.load(xs_ptr + m4 * stride_sm + blk, mask=ok, other=0.0)  # [BM, BKB, 1, 1]
    return code.to(tl.float32) * xs


@triton.jit
def mma_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, y_ptr,
    M, N, KW, KBX, NG, words_per_split,
    stride_xm, stride_xsm, stride_wn, stride_sn, stride_ym, stride_ys,
    GROUP_WORDS: tl.constexpr, FMT: tl.constexpr, PLANES: tl.constexpr, HAS_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, USE_WS: tl.constexpr,
    X_Q8: tl.constexpr, POST_SCALE: tl.constexpr, DOT_F32: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """y[m, n] = sum_k x[m, k] W[n, k] on tensor cores for a batch of activation rows (decode at batch 2..256).

    Per K step each program loads a [BLOCK_N, BLOCK_KB, 4] tile of words, decodes it in registers (shift, mask,
    magic-float subtraction or codebook lookup; one group scale per 4-word block, and the zero point), and
    multiplies it with the [BLOCK_M, BLOCK_KB * 4 * PLANES] activation tile in one `tl.dot` with fp32
    accumulation. Activations are x's dtype (bf16 / fp16), or with X_Q8 int8 codes + fp32 block scales
    (`Q8Activations`: x_ptr the codes, xs_ptr the scales), widened in registers to fp16 (4-bit formats only;
    fp16 operands keep the int8 x scale products and the 4-bit codes nearly exact).
    POST_SCALE (one scale per row for the whole K step, no zero point): the codes go into the dot unscaled (exact
    in bf16 for the integer and fp8 formats) and the step's fp32 product is scaled per column - one multiply per
    output instead of one per weight.
    Grid: (M tiles * N tiles, K splits), M fastest so the programs sharing a weight tile run together.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_m
    pid_n = pid // num_m
    CHUNK: tl.constexpr = 4 * PLANES
    BKW: tl.constexpr = BLOCK_KB * 4
    BK: tl.constexpr = BLOCK_KB * CHUNK

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n3 = offs_n[:, None, None]
    b3 = tl.arange(0, BLOCK_KB)[None, :, None]
    l3 = tl.arange(0, 4)[None, None, :]
    n_ok = n3 < N
    m2 = offs_m[:, None]
    m_ok2 = m2 < M
    m4 = offs_m[:, None, None, None]
    m_ok4 = m4 < M
    k2 = tl.arange(0, BK)[None, :]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    wait_for_inputs(PDL)
    for kw0 in range(kw_begin, kw_end, BKW):
        kw3 = kw0 + b3 * 4 + l3
        w = tl.load(w_ptr + n3 * stride_wn + kw3, mask=n_ok & (kw3 < kw_end), other=0)
        v = _decode_tile(w, lut_ptr, FMT, PLANES)  # [BN, BKB, PLANES, 4]
        if POST_SCALE:
            s_row = tl.load(s_ptr + offs_n * stride_sn + kw0 // GROUP_WORDS, mask=offs_n < N, other=0.0)
        else:
            g3 = (kw0 + b3 * 4) // GROUP_WORDS  # [1, BKB, 1]
            s_ok = n_ok & (g3 < NG)
            s = tl.load(s_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(z_ptr + n3 * stride_sn + g3, mask=s_ok, other=0.0).to(tl.float32)
                v = v * tl.expand_dims(s, 3) + tl.expand_dims(z, 3)
            else:
                v = v * tl.expand_dims(s, 3)
        if X_Q8:
            xv = _mma_x_q8(x_ptr, xs_ptr, m4, m_ok4, kw0 // 4, BLOCK_KB, KBX, stride_xm, stride_xsm)
            xt = tl.reshape(xv, (BLOCK_M, BK)).to(tl.float16)  # 11-bit mantissa: int8 x scale nearly exact
        else:
            e2 = (kw0 // 4) * CHUNK + k2
            xt = tl.load(x_ptr + m2 * stride_xm + e2, mask=m_ok2 & (e2 < kw_end * PLANES), other=0.0)
        wt = tl.reshape(v, (BLOCK_N, BK)).to(xt.dtype)
        if DOT_F32:  # the Triton interpreter multiplies bf16 operands as raw integers
            part = tl.dot(xt.to(tl.float32), tl.trans(wt).to(tl.float32))
        elif POST_SCALE:
            part = tl.dot(xt, tl.trans(wt))
        else:
            acc = tl.dot(xt, tl.trans(wt), acc)
        if POST_SCALE:
            acc += part * s_row.to(tl.float32)[None, :]
        elif DOT_F32:
            acc += part
    n2 = offs_n[None, :]
    out_ok = m_ok2 & (n2 < N)
    if not USE_WS:
        tl.store(y_ptr + m2 * stride_ym + n2, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
    else:
        tl.store(y_ptr + pid_k * stride_ys + m2 * stride_ym + n2, acc, mask=out_ok)


# -- batched decode with the weight as the dot's LEFT operand (`mma_t`) -----------------------------------------
# `mma_kernel` multiplies x [BM, K] by the decoded weight tile [K, BN]: on Hopper the right operand of a wgmma
# must sit in shared memory, so every decoded weight makes a register -> shared -> tensor-core round trip, and
# the 4-D decode tile needs a reshape (another shuffle). Here the product is computed transposed,
# y^T [BN, BM] = W [BN, K] @ x^T [K, BM]: the decoded weight is the left operand, which the tensor cores take
# from registers, and the small activation tile is the one staged in shared memory. Rows of the batch become
# the dot's narrow side (16..64 columns), so the weight tile (64..128 rows) fills the MMA's tall side.
#
# K order: the dot sums over K, so any order works if weights and activations agree. A step covers BKW words
# (BKW / 4 blocks). `PLANE_DOTS`: one dot per bit plane p, over the BKW words' plane-p codes, whose elements
# are 32 b + 4 p + l for word 4 b + l (4-bit); the activation rows are gathered in that order. Otherwise one
# dot over all BKW * PLANES codes, flattened (word, plane) - again with the activations gathered to match.
# Codebook decode (`CODEBOOK`): 0 = the 16-entry table in memory, 1 = NF4 by a select tree in registers,
# 2 = e2m1 (fp4) by its bit pattern (an fp16 with the sign, exponent and mantissa moved into place, x 2**14).


@triton.jit
def _nf4_levels(q):
    """NF4 codes (0..15, int32) -> their levels in fp32, by a 4-level select tree on the code bits (no memory)."""
    b0 = (q & 1) != 0
    b1 = (q & 2) != 0
    b2 = (q & 4) != 0
    b3 = (q & 8) != 0
    t0 = tl.where(b0, -0.6961928009986877, -1.0)
    t1 = tl.where(b0, -0.39491748809814453, -0.5250730514526367)
    t2 = tl.where(b0, -0.18477343022823334, -0.28444138169288635)
    t3 = tl.where(b0, 0.0, -0.09105003625154495)
    t4 = tl.where(b0, 0.16093020141124725, 0.07958029955625534)
    t5 = tl.where(b0, 0.33791524171829224, 0.24611230194568634)
    t6 = tl.where(b0, 0.5626170039176941, 0.44070982933044434)
    t7 = tl.where(b0, 1.0, 0.7229568362236023)
    u0 = tl.where(b1, t1, t0)
    u1 = tl.where(b1, t3, t2)
    u2 = tl.where(b1, t5, t4)
    u3 = tl.where(b1, t7, t6)
    return tl.where(b3, tl.where(b2, u3, u2), tl.where(b2, u1, u0))


@triton.jit
def _decode_codes(q, lut_ptr, FMT: tl.constexpr, CODEBOOK: tl.constexpr):
    """Unsigned codes q (already shifted and masked, int32) -> fp32 values before the group scale."""
    if FMT == SYM_INT4:
        v = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0  # 2**23 + code - 8
    elif FMT == ASYM_INT4:
        v = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    elif FMT == LUT4:
        if CODEBOOK == 1:
            v = _nf4_levels(q)
        elif CODEBOOK == 2:
            h = ((q & 8) << 12) | ((q & 7) << 9)  # e2m1 -> fp16 bits; the value is that fp16 x 2**14
            v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32) * 16384.0
        else:
            v = tl.load(lut_ptr + q)
    elif FMT == SYM_INT8:
        v = ((q ^ 0x80) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0  # 2**23 + (code + 128) - 128
    elif FMT == FP8_E4M3:
        h = ((q & 0x80) << 8) | ((q & 0x7F) << 7)
        v = h.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        v = (q << 8).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return v


@triton.jit
def _int4_pair_bf16(t, EMULATE: tl.constexpr):
    """sym_int4 codes in bits 0-3 and 16-19 of int32 `t` -> (code - 8) of each as bf16 (exact), the two in one
    bf16x2 register: the codes are masked into the mantissas of 2**7 (bf16 0x4300 = 128, ulp 1) and one packed
    `fma.rn.bf16x2` subtracts 136 - about 1.5 instructions per weight instead of ~4.5 through fp32."""
    if EMULATE:  # the interpreter runs no PTX: the same values through fp32
        lo = ((t & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
        hi = (((t >> 16) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388616.0
        return lo.to(tl.bfloat16), hi.to(tl.bfloat16)
    return tl.inline_asm_elementwise(
        """{
        .reg .b32 q;
        .reg .b32 one, bias;
        mov.b32 one, 0x3F803F80;
        mov.b32 bias, 0xC308C308;
        lop3.b32 q, $2, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 q, q, one, bias;
        mov.b32 {$0, $1}, q;
        }""",
        "=h,=h,r",
        [t],
        dtype=(tl.bfloat16, tl.bfloat16),
        is_pure=True,
        pack=1,
    )


@triton.jit
def _int4_pair_bf16_scaled(t, sb, EMULATE: tl.constexpr):
    """`_int4_pair_bf16` times the bf16 scale `sb`: (code - 8) exactly, then one packed `fma.rn.bf16x2` with the
    scale (and -0), so each weight is round_bf16((code - 8) * s) as a dequantize to bf16 gives it."""
    if EMULATE:
        lo, hi = _int4_pair_bf16(t, True)
        sf = sb.to(tl.float32)
        return (lo.to(tl.float32) * sf).to(tl.bfloat16), (hi.to(tl.float32) * sf).to(tl.bfloat16)
    return tl.inline_asm_elementwise(
        """{
        .reg .b32 q, one, bias, ss, nz;
        mov.b32 one, 0x3F803F80;
        mov.b32 bias, 0xC308C308;
        mov.b32 nz, 0x80008000;
        lop3.b32 q, $2, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 q, q, one, bias;
        mov.b32 ss, {$3, $3};
        fma.rn.bf16x2 q, q, ss, nz;
        mov.b32 {$0, $1}, q;
        }""",
        "=h,=h,r,h",
        [t, sb],
        dtype=(tl.bfloat16, tl.bfloat16),
        is_pure=True,
        pack=1,
    )


# Byte-permute pair decodes of the two codebooks (`lut_pairs.py`), unscaled and times a bf16 scale.
_NF4_PAIR = tl.constexpr(pair_ptx(NF4_LEVELS, scaled=False))
_NF4_PAIR_SCALED = tl.constexpr(pair_ptx(NF4_LEVELS, scaled=True))
_FP4_PAIR = tl.constexpr(pair_ptx(E2M1_LEVELS, scaled=False))
_FP4_PAIR_SCALED = tl.constexpr(pair_ptx(E2M1_LEVELS, scaled=True))


@triton.jit
def _lut_pair_bf16(t, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """Codebook codes (CODEBOOK 1 = nf4, 2 = fp4) in bits 0-3 and 16-19 of int32 `t` -> their levels as bf16
    (rounded to nearest), the two in one bf16x2 register, by byte permutes over the levels' bf16 bytes
    (`lut_pairs.py`)."""
    if EMULATE:  # the interpreter runs no PTX: the same values through the register decode
        lo = _decode_codes(t & 0xF, 0, LUT4, CODEBOOK)
        return lo.to(tl.bfloat16), _decode_codes((t >> 16) & 0xF, 0, LUT4, CODEBOOK).to(tl.bfloat16)
    asm: tl.constexpr = _NF4_PAIR if CODEBOOK == 1 else _FP4_PAIR
    return tl.inline_asm_elementwise(
        asm, "=h,=h,r", [t], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1
    )


@triton.jit
def _lut_pair_bf16_scaled(t, sb, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """`_lut_pair_bf16` times the bf16 scale `sb` in one packed `fma.rn.bf16x2`: round_bf16(bf16(level) * sb)."""
    if EMULATE:
        lo, hi = _lut_pair_bf16(t, CODEBOOK, True)
        sf = sb.to(tl.float32)
        return (lo.to(tl.float32) * sf).to(tl.bfloat16), (hi.to(tl.float32) * sf).to(tl.bfloat16)
    asm: tl.constexpr = _NF4_PAIR_SCALED if CODEBOOK == 1 else _FP4_PAIR_SCALED
    return tl.inline_asm_elementwise(
        asm, "=h,=h,r,h", [t, sb], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1
    )


_NF4_QUAD = tl.constexpr(quad_ptx(NF4_LEVELS, scaled=False))
_NF4_QUAD_SCALED = tl.constexpr(quad_ptx(NF4_LEVELS, scaled=True))
_FP4_QUAD = tl.constexpr(quad_ptx(E2M1_LEVELS, scaled=False))
_FP4_QUAD_SCALED = tl.constexpr(quad_ptx(E2M1_LEVELS, scaled=True))


@triton.jit
def _lut_quad_bf16(t, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """Codebook codes in bits 0-3, 16-19, 4-7 and 20-23 of int32 `t` -> their levels as bf16, as two bf16x2
    registers (bits 0-3 / 16-19, then 4-7 / 20-23), by byte permutes with one table gather for all four
    (`lut_pairs.quad_ptx`)."""
    if EMULATE:
        lo_a, hi_a = _lut_pair_bf16(t, CODEBOOK, True)
        lo_b, hi_b = _lut_pair_bf16(t >> 4, CODEBOOK, True)
        return lo_a, hi_a, lo_b, hi_b
    asm: tl.constexpr = _NF4_QUAD if CODEBOOK == 1 else _FP4_QUAD
    return tl.inline_asm_elementwise(
        asm, "=h,=h,=h,=h,r", [t], dtype=(tl.bfloat16,) * 4, is_pure=True, pack=1
    )


@triton.jit
def _lut_quad_bf16_scaled(t, sb, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """`_lut_quad_bf16` times the bf16 scale `sb` in two packed `fma.rn.bf16x2`: round_bf16(bf16(level) * sb)."""
    if EMULATE:
        lo_a, hi_a = _lut_pair_bf16_scaled(t, sb, CODEBOOK, True)
        lo_b, hi_b = _lut_pair_bf16_scaled(t >> 4, sb, CODEBOOK, True)
        return lo_a, hi_a, lo_b, hi_b
    asm: tl.constexpr = _NF4_QUAD_SCALED if CODEBOOK == 1 else _FP4_QUAD_SCALED
    return tl.inline_asm_elementwise(
        asm, "=h,=h,=h,=h,r,h", [t, sb], dtype=(tl.bfloat16,) * 4, is_pure=True, pack=1
    )


@triton.jit
def _pair_bf16(t, FMT: tl.constexpr, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """Planes p and p + 4 of the words' low bits, unscaled, as two bf16 tiles (sym_int4: code - 8; nf4 / fp4:
    level)."""
    if FMT == SYM_INT4:
        return _int4_pair_bf16(t, EMULATE)
    else:
        return _lut_pair_bf16(t, CODEBOOK, EMULATE)


@triton.jit
def _pair_bf16_scaled(t, sb, FMT: tl.constexpr, CODEBOOK: tl.constexpr, EMULATE: tl.constexpr):
    """`_pair_bf16` times the bf16 scales `sb` (one rounding per weight)."""
    if FMT == SYM_INT4:
        return _int4_pair_bf16_scaled(t, sb, EMULATE)
    else:
        return _lut_pair_bf16_scaled(t, sb, CODEBOOK, EMULATE)


@triton.jit
def _mma_t_operands(
    w, s, z, lut_ptr, x_ptr, m_row, m_ok, stride_xm, e, e_end,
    FMT: tl.constexpr, CODEBOOK: tl.constexpr, MASK: tl.constexpr, HAS_ZERO: tl.constexpr, SCALE: tl.constexpr,
    EVEN: tl.constexpr,
):  # fmt: skip
    """(weight operand, activation operand) of one dot: the codes in the low bits of `w` decoded (and scaled
    with s / z when SCALE), and the activations at elements `e` (1-D, the dot's K order) as [K, BLOCK_M]."""
    v = _decode_codes(w & MASK, lut_ptr, FMT, CODEBOOK)
    if SCALE:
        if HAS_ZERO:
            v = v * s + z
        else:
            v = v * s
    xt = _mma_t_x(x_ptr, m_row, m_ok, stride_xm, e, e_end, EVEN)
    return v.to(xt.dtype), xt


@triton.jit
def _mma_t_x(x_ptr, m_row, m_ok, stride_xm, e, e_end, EVEN: tl.constexpr):
    """Activations at elements `e` (1-D, the dot's K order) of rows m_row, as [K, BLOCK_M]."""
    e2 = e[:, None]
    if EVEN:
        return tl.load(x_ptr + m_row * stride_xm + e2, mask=m_ok, other=0.0)
    return tl.load(x_ptr + m_row * stride_xm + e2, mask=m_ok & (e2 < e_end), other=0.0)


@triton.jit
def _joined_k(RUNS: tl.constexpr, BKW: tl.constexpr, CHUNK: tl.constexpr, PLANES: tl.constexpr):
    """The element offsets (from the step's first element and the first plane) of a joined dot's K positions:
    RUNS runs of BKW words, run r = (pair r // 2, half r % 2) holding plane pair + half x PLANES / 2 of every word,
    the words in `_mma_t_x`'s order. Computed arithmetically and marked as runs of 4 contiguous, 4-aligned
    elements: through a reshape the compiler loses that, and Triton 3.6 then loads the tile synchronously instead
    of pipelining it with `cp.async` (sm_90 compile)."""
    t = tl.arange(0, RUNS * BKW)
    run = t // BKW
    tw = t % BKW
    plane = run // 2 + (run % 2) * (PLANES // 2)
    rel = (tw // 4) * CHUNK + tw % 4 + 4 * plane
    return tl.max_contiguous(tl.multiple_of(rel, 4), 4)


@triton.jit
def _mma_t_dot(wt, xt, acc, DOT_F32: tl.constexpr):
    if DOT_F32:  # the Triton interpreter multiplies bf16 operands as raw integers
        return acc + tl.dot(wt.to(tl.float32), xt.to(tl.float32))
    return tl.dot(wt, xt, acc)


@triton.jit
def _zeros7(BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    z = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    return z, z, z, z, z, z, z


@triton.jit
def _dot_into(a: tl.constexpr, wt, xt, DOT_F32: tl.constexpr, p0, p1, p2, p3, p4, p5, p6, p7):
    """Accumulators p0..p7 with the dot wt @ xt added into accumulator `a` (a compile-time index)."""
    if a == 0:
        p0 = _mma_t_dot(wt, xt, p0, DOT_F32)
    elif a == 1:
        p1 = _mma_t_dot(wt, xt, p1, DOT_F32)
    elif a == 2:
        p2 = _mma_t_dot(wt, xt, p2, DOT_F32)
    elif a == 3:
        p3 = _mma_t_dot(wt, xt, p3, DOT_F32)
    elif a == 4:
        p4 = _mma_t_dot(wt, xt, p4, DOT_F32)
    elif a == 5:
        p5 = _mma_t_dot(wt, xt, p5, DOT_F32)
    elif a == 6:
        p6 = _mma_t_dot(wt, xt, p6, DOT_F32)
    else:
        p7 = _mma_t_dot(wt, xt, p7, DOT_F32)
    return p0, p1, p2, p3, p4, p5, p6, p7


@triton.jit
def _sum_accs(ACCS: tl.constexpr, p0, p1, p2, p3, p4, p5, p6, p7):
    """p0 + ... + p(ACCS-1), pairwise."""
    if ACCS >= 2:
        p0 += p1
    if ACCS >= 4:
        p0 += p2 + p3
    if ACCS == 8:
        p0 += (p4 + p5) + (p6 + p7)
    return p0


@triton.jit
def _step_pair(
    w, p: tl.constexpr, s, POST_SCALE: tl.constexpr, FMT: tl.constexpr, CODEBOOK: tl.constexpr,
    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BKW: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    """Planes p and p + 4 of a K step's words as two bf16 tiles: unscaled (POST_SCALE: the step's product is
    scaled after the dots) or times each word's scale `s` (the row's step scale, or its group's)."""
    if POST_SCALE:
        return _pair_bf16(w >> (p * BITS), FMT, CODEBOOK, DOT_F32)
    sb = tl.broadcast_to(s.to(tl.bfloat16), (BLOCK_N, BKW))
    return _pair_bf16_scaled(w >> (p * BITS), sb, FMT, CODEBOOK, DOT_F32)


@triton.jit
def _step_quad(
    w, q: tl.constexpr, s, POST_SCALE: tl.constexpr, FMT: tl.constexpr, CODEBOOK: tl.constexpr,
    BITS: tl.constexpr, BLOCK_N: tl.constexpr, BKW: tl.constexpr, DOT_F32: tl.constexpr, QUADS: tl.constexpr,
):  # fmt: skip
    """Planes 2q, 2q + 4, 2q + 1 and 2q + 5 of a K step's words as four bf16 tiles: `_step_pair` of pairs 2q and
    2q + 1, or with QUADS (a codebook) all four from one byte-permute gather (`_lut_quad_bf16`), the same values.
    sym_int4's pair decode is already two instructions per pair."""
    if FMT == SYM_INT4 or not QUADS:
        lo_a, hi_a = _step_pair(w, 2 * q, s, POST_SCALE, FMT, CODEBOOK, BITS, BLOCK_N, BKW, DOT_F32)
        lo_b, hi_b = _step_pair(w, 2 * q + 1, s, POST_SCALE, FMT, CODEBOOK, BITS, BLOCK_N, BKW, DOT_F32)
        return lo_a, hi_a, lo_b, hi_b
    if POST_SCALE:
        return _lut_quad_bf16(w >> (2 * q * BITS), CODEBOOK, DOT_F32)
    sb = tl.broadcast_to(s.to(tl.bfloat16), (BLOCK_N, BKW))
    return _lut_quad_bf16_scaled(w >> (2 * q * BITS), sb, CODEBOOK, DOT_F32)


@triton.jit
def _word_scales(
    s_ptr, n2, n_ok, kw0, NG, stride_sn, GROUP_WORDS: tl.constexpr, BLOCK_N: tl.constexpr, BKW: tl.constexpr
):  # fmt: skip
    """The scale (or zero point) of every word of a K step that spans BKW / GROUP_WORDS whole groups, as fp32
    [BLOCK_N, BKW]: the step's group scales are loaded as one contiguous run per row ([BLOCK_N, groups]: 4 - 16
    bytes, which Triton pipelines into shared memory like the weight) and repeated over each group's words in
    registers. A per-word gather instead (one 2-byte load per word) is a plain load in the weight's blocked
    layout, and the decoded weight then takes a shared-memory round trip per plane dot to reach the dot's
    register layout (sm_90, `bench/triton_static.py --group-size 32`: 8 per step, 0 this way)."""
    GROUPS: tl.constexpr = BKW // GROUP_WORDS
    g = kw0 // GROUP_WORDS + tl.arange(0, GROUPS)[None, :]
    sg = tl.load(s_ptr + n2 * stride_sn + g, mask=n_ok & (g < NG), other=0.0)
    return tl.reshape(tl.broadcast_to(sg[:, :, None], (BLOCK_N, GROUPS, GROUP_WORDS)), (BLOCK_N, BKW)).to(
        tl.float32
    )


@triton.jit
def mma_t_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, lut_ptr, y_ptr,
    M, N, KW, NG, words_per_split,
    stride_xm, stride_wn, stride_sn, stride_ym, stride_ys, out_ptr, cnt_ptr,
    GROUP_WORDS: tl.constexpr, FMT: tl.constexpr, PLANES: tl.constexpr, HAS_ZERO: tl.constexpr,
    CODEBOOK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BKW: tl.constexpr,
    PLANE_DOTS: tl.constexpr, PAIRS: tl.constexpr, NATURAL: tl.constexpr, USE_WS: tl.constexpr,
    POST_SCALE: tl.constexpr, ROW_SCALE: tl.constexpr, ACCS: tl.constexpr,
    EVEN: tl.constexpr, DOT_F32: tl.constexpr, PDL: tl.constexpr, FIXUP: tl.constexpr = False,
    JOIN: tl.constexpr = 1, TMA: tl.constexpr = False, QUADS: tl.constexpr = False,
):  # fmt: skip
    """y[m, n] = sum_k x[m, k] W[n, k] for a batch of activation rows, as y^T = W @ x^T on tensor cores.

    Per K step a program loads a [BLOCK_N, BKW] tile of weight words (BKW a multiple of 4: whole blocks),
    decodes it in registers (shift, mask, magic-float subtraction / codebook / fp8 bit pattern; group scale and
    zero point), and multiplies it with the matching activations [K, BLOCK_M] (see the K-order note above).
    POST_SCALE (one scale and zero point per weight row for the whole step): codes go into the dot unscaled,
    the fp32 step product is scaled per row and the zero point enters as zero x the step's activation sums.
    ROW_SCALE (one scale per row per step; POST_SCALE implies it) without POST_SCALE (the `fold` configs): that
    scale goes into the decoded weight instead, so the accumulators carry over the steps with no per-step
    rescaling of the dots' results.
    NATURAL (one dot per step): the tile is decoded in the weight's own K order and the activations are read
    as one contiguous run. EVEN: every weight row tile lies inside N and every step is
    whole (no masks on the weight stream). PAIRS (sym_int4, nf4 or fp4, PLANE_DOTS, bf16 x): planes p and p + 4
    decode together in bf16x2 (`_pair_bf16`), scaled after the step's dots (POST_SCALE) or in the decode; JOIN
    (PAIRS: planes per dot, 1, 2 or 4): 2 puts a pair's two planes into one dot of K = 2 BKW, 4 two pairs into one
    of K = 4 BKW - fewer dots and fewer draining waits (sm_90, sym_int4 g128, 16 rows: 8 / 4 / 2 per 16-word step
    at 62 / 56 / 72 registers). ACCS (PLANE_DOTS: 1, 2, 4 or 8): the step's plane dots go
    round-robin into this many accumulators, summed once per step (POST_SCALE) or at the end. Triton waits for
    each tensor-core dot before the next one that adds into the same accumulator when the weight operand lives in
    registers; dots into different accumulators overlap.
    Grid: (N tiles, K splits, M tiles); x [M, KX] bf16 / fp16; output y [M, N] (or fp32 split partials).
    FIXUP (USE_WS): the split partials are summed here instead of in `splitk_reduce_kernel`: each program
    counts its arrival on its output tile (cnt_ptr, int32 per tile, zero between calls), and the last of a
    tile's splits adds the partials in split order - the reduce kernel's order, so the same numbers - writes
    out_ptr [M, N] (stride stride_ym) and sets the count back to zero. No second launch, and the partials are
    read while they are still in L2.
    TMA (EVEN only): w_ptr is a tensor descriptor of the words [N, KW] with blocks [BLOCK_N, BKW]; each step's
    weight tile comes by one bulk tensor copy (Hopper's TMA) instead of per-thread loads.
    QUADS (PAIRS, nf4 / fp4): four codes per byte-permute gather instead of two (`_step_quad`), the same values.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    BITS: tl.constexpr = 32 // PLANES
    MASK: tl.constexpr = (1 << BITS) - 1
    CHUNK: tl.constexpr = 4 * PLANES  # elements per 4-word block

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n2 = offs_n[:, None]
    n_ok = n2 < N
    m_row = offs_m[None, :]  # activation rows run along the dot's narrow side
    m_ok = m_row < M
    j = tl.arange(0, BKW)  # word of the step
    # element (relative to the step's first element) of plane 0 of word j: 4-word blocks of CHUNK elements
    e0 = (j // 4) * CHUNK + j % 4

    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    # accumulators 1.. of ACCS (without POST_SCALE they carry over the steps; unused ones fold away)
    acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _zeros7(BLOCK_N, BLOCK_M)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    wait_for_inputs(PDL)
    for kw0 in range(kw_begin, kw_end, BKW):
        kw2 = kw0 + j[None, :]
        if TMA:
            w = w_ptr.load([pid_n * BLOCK_N, kw0])
        elif EVEN:
            w = tl.load(w_ptr + n2 * stride_wn + kw2)
        else:
            w = tl.load(w_ptr + n2 * stride_wn + kw2, mask=n_ok & (kw2 < kw_end), other=0)
        if ROW_SCALE:  # one scale (and zero point) per row for the step
            s_row = tl.load(s_ptr + offs_n * stride_sn + kw0 // GROUP_WORDS, mask=offs_n < N, other=0.0)
            s = s_row.to(tl.float32)[:, None]
            z = s
            if HAS_ZERO and not POST_SCALE:  # folded into the decode (POST_SCALE adds it after the dots)
                z_row = tl.load(z_ptr + offs_n * stride_sn + kw0 // GROUP_WORDS, mask=offs_n < N, other=0.0)
                z = z_row.to(tl.float32)[:, None]
        else:  # several whole groups per step (BKW a multiple of GROUP_WORDS: step and split boundaries align)
            s = _word_scales(s_ptr, n2, n_ok, kw0, NG, stride_sn, GROUP_WORDS, BLOCK_N, BKW)
            z = s
            if HAS_ZERO:
                z = _word_scales(z_ptr, n2, n_ok, kw0, NG, stride_sn, GROUP_WORDS, BLOCK_N, BKW)
        if POST_SCALE:  # the operands go into the dots unscaled; the step's product is scaled per row
            part = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            part1, part2, part3, part4, part5, part6, part7 = _zeros7(BLOCK_N, BLOCK_M)
        else:
            part, part1, part2, part3, part4, part5, part6, part7 = acc, acc1, acc2, acc3, acc4, acc5, acc6, acc7  # fmt: skip
        xsum = tl.zeros([BLOCK_M], dtype=tl.float32)  # the step's activation sums (zero-point term)
        x0 = kw0 * PLANES  # the step's first element
        if PAIRS and JOIN == 4:
            # two pair decodes (planes 2q, 2q + 4, 2q + 1, 2q + 5) in one dot of K = 4 BKW, K order (pair, half, word)
            for q in tl.static_range(PLANES // 4):
                lo_a, hi_a, lo_b, hi_b = _step_quad(
                    w, q, s, POST_SCALE, FMT, CODEBOOK, BITS, BLOCK_N, BKW, DOT_F32, QUADS
                )
                both = tl.join(tl.join(lo_a, hi_a), tl.join(lo_b, hi_b))  # [BN, BKW, half, pair]
                wt = tl.reshape(tl.permute(both, (0, 3, 2, 1)), (BLOCK_N, 4 * BKW))
                e = x0 + 4 * (2 * q) + _joined_k(4, BKW, CHUNK, PLANES)
                xt = _mma_t_x(x_ptr, m_row, m_ok, stride_xm, e, kw_end * PLANES, EVEN)
                part, part1, part2, part3, part4, part5, part6, part7 = _dot_into(
                    q % ACCS, wt, xt, DOT_F32, part, part1, part2, part3, part4, part5, part6, part7,
                )  # fmt: skip
        elif PAIRS:
            for q in tl.static_range(PLANES // 4):  # pairs 2q and 2q + 1 decode together (`_step_quad`)
                lo_a, hi_a, lo_b, hi_b = _step_quad(
                    w, q, s, POST_SCALE, FMT, CODEBOOK, BITS, BLOCK_N, BKW, DOT_F32, QUADS
                )
                for i in tl.static_range(2):
                    lo = lo_b if i else lo_a
                    hi = hi_b if i else hi_a
                    if (
                        JOIN == 2
                    ):  # both planes in one dot of K = 2 BKW: [lo | hi], activations in the same order
                        wt = tl.reshape(tl.permute(tl.join(lo, hi), (0, 2, 1)), (BLOCK_N, 2 * BKW))
                        e = x0 + 4 * (2 * q + i) + _joined_k(2, BKW, CHUNK, PLANES)
                        xt = _mma_t_x(x_ptr, m_row, m_ok, stride_xm, e, kw_end * PLANES, EVEN)
                        part, part1, part2, part3, part4, part5, part6, part7 = _dot_into(
                            (2 * q + i) % ACCS, wt, xt, DOT_F32, part, part1, part2, part3, part4, part5, part6, part7,
                        )  # fmt: skip
                    else:
                        for half in tl.static_range(2):
                            e = x0 + e0 + 4 * (2 * q + i + half * (PLANES // 2))
                            xt = _mma_t_x(x_ptr, m_row, m_ok, stride_xm, e, kw_end * PLANES, EVEN)
                            part, part1, part2, part3, part4, part5, part6, part7 = _dot_into(
                                (4 * q + 2 * i + half) % ACCS, hi if half else lo, xt, DOT_F32,
                                part, part1, part2, part3, part4, part5, part6, part7,
                            )  # fmt: skip
        elif PLANE_DOTS:
            for p in tl.static_range(PLANES):
                wt, xt = _mma_t_operands(
                    w >> (p * BITS), s, z, lut_ptr, x_ptr, m_row, m_ok, stride_xm, x0 + e0 + 4 * p,
                    kw_end * PLANES, FMT, CODEBOOK, MASK, HAS_ZERO, not POST_SCALE, EVEN,
                )  # fmt: skip
                part, part1, part2, part3, part4, part5, part6, part7 = _dot_into(
                    p % ACCS, wt, xt, DOT_F32, part, part1, part2, part3, part4, part5, part6, part7
                )
                if POST_SCALE and HAS_ZERO:
                    xsum += tl.sum(xt.to(tl.float32), axis=0)
        elif NATURAL:
            # [BN, BKW/4 blocks, PLANES, 4 words]: element 4 p + l of each block - the weight's own K order,
            # so the activations are one contiguous run
            w4 = tl.expand_dims(tl.reshape(w, (BLOCK_N, BKW // 4, 4)), 2)
            sh = (tl.arange(0, PLANES) * BITS)[None, None, :, None]
            if POST_SCALE:
                s4 = s[:, :, None, None]
                z4 = s4
            else:
                s4 = tl.expand_dims(tl.reshape(s, (BLOCK_N, BKW // 4, 4)), 2)
                z4 = tl.expand_dims(tl.reshape(z, (BLOCK_N, BKW // 4, 4)), 2)
            wt, xt = _mma_t_operands(
                w4 >> sh, s4, z4, lut_ptr, x_ptr, m_row, m_ok, stride_xm, x0 + tl.arange(0, BKW * PLANES),
                kw_end * PLANES, FMT, CODEBOOK, MASK, HAS_ZERO, not POST_SCALE, EVEN,
            )  # fmt: skip
            part = _mma_t_dot(tl.reshape(wt, (BLOCK_N, BKW * PLANES)), xt, part, DOT_F32)
            if POST_SCALE and HAS_ZERO:
                xsum += tl.sum(xt.to(tl.float32), axis=0)
        else:
            sh = (tl.arange(0, PLANES) * BITS)[None, None, :]
            e = x0 + (e0[:, None] + 4 * tl.arange(0, PLANES)[None, :])  # [BKW, PLANES]
            wt, xt = _mma_t_operands(
                tl.expand_dims(w, 2) >> sh, tl.expand_dims(s, 2), tl.expand_dims(z, 2), lut_ptr, x_ptr, m_row,
                m_ok, stride_xm, tl.reshape(e, (BKW * PLANES,)), kw_end * PLANES, FMT, CODEBOOK, MASK, HAS_ZERO,
                not POST_SCALE, EVEN,
            )  # fmt: skip
            part = _mma_t_dot(tl.reshape(wt, (BLOCK_N, BKW * PLANES)), xt, part, DOT_F32)
            if POST_SCALE and HAS_ZERO:
                xsum += tl.sum(xt.to(tl.float32), axis=0)
        if POST_SCALE:
            part = _sum_accs(ACCS, part, part1, part2, part3, part4, part5, part6, part7)
            acc += part * s
            if HAS_ZERO:
                z_row = tl.load(z_ptr + offs_n * stride_sn + kw0 // GROUP_WORDS, mask=offs_n < N, other=0.0)
                acc += z_row.to(tl.float32)[:, None] * xsum[None, :]
        else:
            acc, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = part, part1, part2, part3, part4, part5, part6, part7  # fmt: skip
    if not POST_SCALE:
        acc = _sum_accs(ACCS, acc, acc1, acc2, acc3, acc4, acc5, acc6, acc7)
    store_t_tile(
        acc, y_ptr, out_ptr, cnt_ptr, m_row, n2, n_ok & m_ok, pid_k, stride_ym, stride_ys, USE_WS, FIXUP,
        BLOCK_N, BLOCK_M,
    )  # fmt: skip
