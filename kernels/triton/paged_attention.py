"""Paged attention on GPUs (CUDA, XPU): the Triton path of `xpullm.kernels.paged.paged_attention`.

Two kernels per layer and step, over the step's N flattened tokens (prefill chunks and decode tokens of many
sequences mixed, vLLM-style varlen):

1. `_paged_write_kernel`, grid (N, H + 2 KV): one head vector each - q heads normalized (Qwen3's q_norm, optional)
   and rotated into a small q buffer, k heads normalized and rotated into their pool slot, v heads copied into
   theirs. Math in fp32, rounded once to the pools' dtype.
2. `_paged_attention_kernel`, grid (N, KV, P): one token and one kv head, with the G query heads that share it as
   one [G, D] tile (GQA), so the keys are read once per kv head. It walks columns of the token's own sequence
   BLOCK_C at a time; each column's physical slot comes from the block table (`table[col // block_size]`, any
   block size: a tile may span several blocks), scores and p @ v run through `tl.dot` with fp32 accumulation,
   and the softmax is online in fp32 (exp2). Columns past pos are never loaded. Split, the last of a (token, kv
   head)'s programs to finish merges its splits into the output (below).

Each token's columns 0..pos are split S ways ("flash decoding"). One program walking a long context tile by tile is
latency-bound (each tile's block-table read gates its K / V loads): at one sequence and 512 columns the unsplit kernel
took 18.4 us a layer on an H100, 0.59 ms of a 2.6 ms int4 step; split, 4.9 us plus 2.5 for the merge. Split s takes
the s-th run of cps = ceil((pos + 1) / S) columns (at least the tile's split floor) rounded up to whole tiles,
computed on the device from the position (nothing on the host depends on it, so one graph serves every position); a
short context leaves the later splits empty, and nothing touches them. Each split stores its running max, sum and
unnormalized output in a workspace; each program adds one to the (token, kv head)'s arrival counter (acquire /
release, zeroed by the write kernel) after storing its splits, and the one that arrives last combines the live splits
in split order - no third launch (on an H100 the separate merge cost 3-4.6 us a layer at 16-32 sequences, and its
launch sat between the attention and the next projection). A token whose columns fit one split stores its output
directly and touches no counter. S (`XPULLM_PAGED_SPLITS`, at most the tiles of the longest context the block table
holds) never depends on N. The P programs of a (token, kv head) take its splits in turn (split p, p + P, ...): P
follows N, about four programs per multiprocessor in all, because at 16 sequences of short context a program per split
cost 8% of the step in empty programs; which program computes a split does not change its result. Steps of more than
`_SPLIT_TOKENS` tokens launch in runs of that many, so the partials stay small.

The attention launches start after the write kernel has written every token's keys, so a prefill chunk's tokens see
the chunk's earlier keys. A token's result depends only on its own columns, S and the `Tile` (which depend on D, the
dtype and the table, never on N), so it does not change with the rest of the batch. `bench/paged_gpu.py` times tiles
against each other and against SDPA over a dense cache. Positions and block tables are read on the device: no host
sync. `reference_paged_attention` in `xpullm.kernels.paged` is the twin.

8-bit pools (`kv_cache_dtype` "int8" or "fp8_e4m3"): the write kernel stores each k / v head vector as codes with
one fp32 scale (int8: max|x| / 127, round half to even; e4m3: max|x| / 448, rounded to nearest even by the
conversion; as `kernels.paged.quantize_kv`); the attention kernel feeds the codes to the dots as they are (exact in
q's dtype) and applies their per-slot scales to the scores' columns and to p's columns. e4m3 pools hold head
vectors in the Walsh-Hadamard basis (`kernels.paged.kv_rotation`, R [D, D], symmetric, R R = I): the write kernel
turns q, k (after RoPE) and v by R, and the attention kernel turns its output back, both as log2(D) butterfly
stages in registers (a [D, D] fp32 R tile spilled registers at D = 128).

Sliding window and sinks (`window` W > 0): the attention kernel walks two column ranges, the sinks [0, min(S, lo))
and the window [lo, pos] with lo = max(0, pos - W + 1), one online softmax over both; block columns go through
the ring mapping of `kernels.paged.table_column` (both kernels). With W = 0 the first range is empty and the
second is 0..pos, as before.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from xpullm.kernels.paged import PagedBatch, PagedLayer, kv_rotated
from xpullm.kernels.triton.attention import _device_limits, _softmax_step
from xpullm.kernels.triton.pdl import launch_options, wait_for_inputs
from xpullm.settings import runtime_settings

__all__ = ["paged_attention", "supports"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 256  # tl.dot needs tile sides >= 16; wider heads would spill
_MIN_GROUP_ROWS = 16  # the query-head tile is padded to a tl.dot-sized row count
_NUM_WARPS = 4
_LOG2E = 1.4426950408889634
_CODES = {"auto": 0, "bf16": 0, "int8": 1, "fp8_e4m3": 2}  # kv_cache_dtype -> the kernels' CODES
_SPLIT_TOKENS = (
    64  # tokens per attention launch when split: bounds the partials (tokens x H x S x (D + 2) fp32)
)


def supports(d: int, h: int, kv: int, dtype: torch.dtype) -> bool:
    """Whether these kernels take the shape: head_dim a power of two in 16..256, float or 8-bit code pools."""
    codes = (torch.int8, torch.float8_e4m3fn)
    return _MIN_HEAD_DIM <= d <= _MAX_HEAD_DIM and d & (d - 1) == 0 and dtype in (*_DTYPES, *codes)


@triton.jit
def _store_codes(dst, scale_dst, x, CODES: tl.constexpr):
    """x [D] fp32 as codes with one scale, as `kernels.paged.quantize_kv` does (0 codes and s = 0 for x = 0).
    CODES 1: int8 round-half-even(x / s), s = max|x| / 127; 2: e4m3 x / s, s = max|x| / 448."""
    top: tl.constexpr = 127.0 if CODES == 1 else 448.0
    s = tl.max(tl.abs(x), axis=0) / top
    inv = tl.where(s > 0, 1.0 / s, 0.0)
    y = tl.minimum(tl.maximum(x * inv, -top), top)
    if CODES == 1:
        r = tl.floor(y + 0.5)
        half = (r - y) == 0.5  # a tie, rounded up: back down to the even neighbour where r is odd
        odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
        r = tl.where(half & odd, r - 1.0, r)
        tl.store(dst, r.to(tl.int8))
    else:
        tl.store(dst, _e4m3_round(y).to(tl.float8e4nv))
    tl.store(scale_dst, s)


@triton.jit
def _butterfly(x, ROWS: tl.constexpr, D: tl.constexpr, H: tl.constexpr):
    """One Walsh-Hadamard stage over x [ROWS, D]: elements i and i + H (bit H of i clear) -> (a + b, a - b)."""
    y = tl.permute(tl.reshape(x, (ROWS, D // (2 * H), 2, H)), (0, 1, 3, 2))
    a, b = tl.split(y)
    return tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (ROWS, D))


@triton.jit
def _walsh_hadamard(x, ROWS: tl.constexpr, D: tl.constexpr):
    """x [ROWS, D] (fp32, D a power of two <= 256) times the orthonormal Sylvester Walsh-Hadamard matrix R
    (`kernels.paged.kv_rotation`: symmetric, R R = I, so the same call turns into the fp8 pools' basis and back),
    as log2(D) butterfly stages in registers: no R tile (a [D, D] fp32 R spilled registers at D = 128)."""
    for stage in tl.static_range(8):  # strides 1, 2, ..., D / 2 (D <= 256)
        if (1 << stage) < D:
            x = _butterfly(x, ROWS, D, 1 << stage)
    return x * (1.0 / tl.sqrt(float(D)))


@triton.jit
def _turn(x, D: tl.constexpr):
    """x [D] (fp32) in the fp8 pools' basis: x R."""
    return tl.reshape(_walsh_hadamard(tl.reshape(x, (1, D)), 1, D), (D,))


@triton.jit
def _e4m3_round(y):
    """y (|y| <= 448) rounded to the nearest e4m3 value, ties to even, in fp32 arithmetic: the result converts to
    e4m3 exactly, so no backend's own rounding is involved (Triton's interpreter mis-rounds when the mantissa
    carries into the exponent). The step is 2^(exponent - 3), and 2^-9 below the smallest normal 2^-6."""
    a = tl.abs(y)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    t = a / step  # exact: a power of two
    r = tl.floor(t + 0.5)
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    r = tl.where(((r - t) == 0.5) & odd, r - 1.0, r)
    return tl.where(y < 0, -r * step, r * step)


@triton.jit
def _column(b, WINDOW: tl.constexpr, SINK_COLS, RING):
    """`kernels.paged.table_column`: the table column of absolute block b (a ring past the sink columns)."""
    if WINDOW:
        b = tl.where((b < SINK_COLS) | (RING < 1), b, SINK_COLS + (b - SINK_COLS) % tl.maximum(RING, 1))
    return b


@triton.jit
def _paged_write_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, seq_ptr, table_ptr, qn_ptr, kn_ptr, q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr,
    cnt_ptr, stride_qkv, stride_cos, stride_sin, stride_t,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    eps, sink_cols, ring,
    H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, HAS_NORM: tl.constexpr,
    CODES: tl.constexpr, WINDOW: tl.constexpr, PDL: tl.constexpr, ROT: tl.constexpr, COUNTERS: tl.constexpr,
):  # fmt: skip
    """One head vector of one token: q -> q buffer [N, H, D], k -> its pool slot (both normalized and rotated),
    v -> its pool slot. Rotation: x * cos + roll(x, D/2) * sin (the caller's sin carries rotate_half's sign).
    CODES (1 int8, 2 e4m3): k and v are stored as codes with their scale (contiguous [num_blocks, KV, BS] scales).
    ROT: q, k and v are turned into the pools' basis (x R, butterflies) first. COUNTERS: the programs of q heads
    0..KV-1 also zero the attention kernel's arrival counters [N, KV] (it runs after this kernel)."""
    n = tl.program_id(0).to(tl.int64)
    hh = tl.program_id(1)
    offs = tl.arange(0, D)
    rolled = (offs + D // 2) % D
    src = qkv_ptr + n * stride_qkv + hh * D
    wait_for_inputs(PDL)
    pos = tl.load(pos_ptr + n)
    seq = tl.load(seq_ptr + n)
    blk = tl.load(table_ptr + seq * stride_t + _column(pos // BS, WINDOW, sink_cols, ring)).to(tl.int64)
    slot = pos % BS
    if COUNTERS:
        tl.store(cnt_ptr + n * KV + hh, 0, mask=hh < KV)
    if hh < H + KV:
        x = tl.load(src + offs).to(tl.float32)
        xr = tl.load(src + rolled).to(tl.float32)
        if HAS_NORM:
            # norm(x)[rolled] = x[rolled] * r * w[rolled]: the same scalar r, so the rolled copy needs no shuffle.
            w_ptr = qn_ptr if hh < H else kn_ptr
            r = tl.rsqrt(tl.sum(x * x, axis=0) / D + eps)
            x = x * r * tl.load(w_ptr + offs).to(tl.float32)
            xr = xr * r * tl.load(w_ptr + rolled).to(tl.float32)
        c = tl.load(cos_ptr + pos * stride_cos + offs).to(tl.float32)
        s = tl.load(sin_ptr + pos * stride_sin + offs).to(tl.float32)
        y = x * c + xr * s
        if ROT:
            y = _turn(y, D)
        if hh < H:
            tl.store(q_ptr + (n * H + hh) * D + offs, y.to(q_ptr.dtype.element_ty))
        else:
            dst = k_ptr + blk * stride_kb + (hh - H) * stride_kh + slot * stride_ks + offs * stride_kd
            if CODES != 0:
                _store_codes(dst, ks_ptr + (blk * KV + hh - H) * BS + slot, y, CODES)
            else:
                tl.store(dst, y.to(k_ptr.dtype.element_ty))
    else:
        v = tl.load(src + offs)
        if ROT:
            v = _turn(v.to(tl.float32), D)
        dst = v_ptr + blk * stride_vb + (hh - H - KV) * stride_vh + slot * stride_vs + offs * stride_vd
        if CODES != 0:
            _store_codes(dst, vs_ptr + (blk * KV + hh - H - KV) * BS + slot, v.to(tl.float32), CODES)
        else:
            tl.store(dst, v.to(v_ptr.dtype.element_ty))


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, pos_ptr, seq_ptr, table_ptr, o_ptr, ws_acc_ptr, ws_ml_ptr, cnt_ptr,
    qk_scale, stride_t, window, sinks, sink_cols, ring, n_rows, programs,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr,
    CODES: tl.constexpr, WINDOW: tl.constexpr, PDL: tl.constexpr, ROT: tl.constexpr, SPLITS: tl.constexpr,
    PREFETCH: tl.constexpr, MIN_SPLIT: tl.constexpr, UNSPLIT: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Attention of the G query heads of one (token, kv head) over columns 0..pos of the token's sequence, or
    (SPLITS > 1) over splits program_id(2), + `programs`, ... of the live ones: for each it stores the running max
    m and sum l (exp2 domain) and unnormalized output in the workspace (acc [S, N * H, D], m and l [2, S, N * H]),
    then counts itself in at cnt[n, j]; the last of min(programs, live) programs merges (`_merge_live`). Split 0
    always holds the first column (and the sinks). Splits are at least MIN_SPLIT columns, and a token of at most
    UNSPLIT columns is one split: a token whose columns fit one split has program 0 store its output directly.
    Which program computes a split never changes its result, so `programs` may follow N; the split length depends
    only on the token's own position.
    CODES != 0: k and v tiles are 8-bit codes, turned into q's dtype times their per-slot scales in registers.
    ROT: q, k and v are in the pools' rotated basis; the output is turned back by R (R R = I, butterflies; a
    split's partial output is turned before the merge, which is linear in it)."""
    n = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    first = tl.program_id(2)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    g_ok = offs_g < G
    heads = j * G + offs_g  # query heads j*G .. j*G+G-1 read kv head j
    wait_for_inputs(PDL)
    pos = tl.load(pos_ptr + n)
    seq = tl.load(seq_ptr + n)
    q = tl.load(q_ptr + (n * (KV * G) + heads[:, None]) * D + offs_d[None, :], mask=g_ok[:, None], other=0.0)
    table = table_ptr + seq * stride_t
    k_base = k_ptr + j * stride_kh
    v_base = v_ptr + j * stride_vh
    lo = 0
    sink_end = 0
    if WINDOW:
        lo = tl.maximum(pos - window + 1, 0)
        sink_end = tl.minimum(sinks, lo)
    if SPLITS == 1:
        m_i, l_i, acc = _attend_span(
            q, k_base, v_base, ks_ptr, vs_ptr, table, sink_end, lo, pos + 1, j,
            qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            KV, D, BS, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES, WINDOW, PREFETCH,
        )  # fmt: skip
        _store_output(o_ptr, n, heads, g_ok, acc, l_i, KV, G, D, BLOCK_G, ROT)
    else:
        # Split s takes the s-th run of cps columns of lo..pos (whole tiles, at least MIN_SPLIT columns; the
        # sinks go with split 0): `live` of them hold columns. This program takes splits first, first + programs,
        # ... of those; the last of the min(programs, live) that have one to finish merges them (no merge launch).
        span = pos + 1 - lo
        cps = tl.cdiv(tl.maximum(tl.cdiv(span, SPLITS), MIN_SPLIT), BLOCK_C) * BLOCK_C
        cps = tl.where(span <= UNSPLIT, span, cps)
        live = tl.cdiv(span, cps)
        # One live split holds every column: program 0 stores the output itself, the others do nothing.
        if live == 1:
            if first == 0:
                m_i, l_i, acc = _attend_span(
                    q, k_base, v_base, ks_ptr, vs_ptr, table, sink_end, lo, pos + 1, j,
                    qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
                    KV, D, BS, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES, WINDOW, PREFETCH,
                )  # fmt: skip
                _store_output(o_ptr, n, heads, g_ok, acc, l_i, KV, G, D, BLOCK_G, ROT)
        elif first < live:
            for split in range(first, live, programs):
                start = lo + split * cps
                m_i, l_i, acc = _attend_span(
                    q, k_base, v_base, ks_ptr, vs_ptr, table, tl.where(split == 0, sink_end, 0), start,
                    tl.minimum(start + cps, pos + 1), j,
                    qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
                    KV, D, BS, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES, WINDOW, PREFETCH,
                )  # fmt: skip
                if ROT:  # the partials are turned back before the merge, which is linear in them
                    acc = _walsh_hadamard(acc, BLOCK_G, D)
                row = split * n_rows + n * (KV * G) + heads
                tl.store(ws_acc_ptr + row[:, None] * D + offs_d[None, :], acc, mask=g_ok[:, None])
                tl.store(ws_ml_ptr + row, m_i, mask=g_ok)
                tl.store(ws_ml_ptr + SPLITS * n_rows + row, l_i, mask=g_ok)
            # Release this program's partials; the one that arrives last (acquire) sees every worker's.
            arrived = tl.atomic_add(cnt_ptr + n * KV + j, 1, sem="acq_rel", scope="gpu")
            if arrived == tl.minimum(programs, live) - 1:
                _merge_live(
                    ws_acc_ptr, ws_ml_ptr, o_ptr, n * (KV * G) + j * G, live, n_rows, G, D, BLOCK_H, SPLITS
                )


@triton.jit
def _merge_live(
    ws_acc_ptr, ws_ml_ptr, o_ptr, base, live, n_rows,
    G: tl.constexpr, D: tl.constexpr, BLOCK_H: tl.constexpr, SPLITS: tl.constexpr,
):  # fmt: skip
    """The output rows base .. base + G - 1 from their first `live` split partials, in split order: sum_s
    2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s with M = max_s m_s. The partials were written by other programs:
    read from L2 (.cg). Both loops are unrolled over SPLITS (splits past `live` masked off), so their loads are
    independent and in flight together; rows are BLOCK_H (G rounded up to a power of two), not the dot's padding."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, D)
    h_ok = offs_h < G
    rows = base + offs_h
    top = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        ok = h_ok & (offs_h * 0 + s < live)  # a tensor comparison (the interpreter masks need one)
        top = tl.maximum(top, tl.load(ws_ml_ptr + s * n_rows + rows, mask=ok, other=float("-inf"),
                                      cache_modifier=".cg"))  # fmt: skip
    top = tl.where(h_ok, top, 0.0)  # padding rows: finite, never stored
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, D], dtype=tl.float32)
    for s in tl.static_range(SPLITS):
        ok = h_ok & (offs_h * 0 + s < live)  # a tensor comparison (the interpreter masks need one)
        row = s * n_rows + rows
        # masked-off splits read m = -inf: weight 0
        w = tl.exp2(tl.load(ws_ml_ptr + row, mask=ok, other=float("-inf"), cache_modifier=".cg") - top)
        l_i += w * tl.load(ws_ml_ptr + SPLITS * n_rows + row, mask=ok, other=0.0, cache_modifier=".cg")
        part = tl.load(ws_acc_ptr + row[:, None] * D + offs_d[None, :], mask=ok[:, None], other=0.0,
                       cache_modifier=".cg")  # fmt: skip
        acc += w[:, None] * part
    out = acc / tl.where(h_ok, l_i, 1.0)[:, None]
    tl.store(o_ptr + rows[:, None] * D + offs_d[None, :], out.to(o_ptr.dtype.element_ty), mask=h_ok[:, None])


@triton.jit
def _store_output(
    o_ptr, n, heads, g_ok, acc, l_i,
    KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, BLOCK_G: tl.constexpr, ROT: tl.constexpr,
):  # fmt: skip
    """Token n's output rows for `heads`: acc / l, turned back to the model's basis (ROT), in o's dtype."""
    out = acc / l_i[:, None]
    if ROT:
        out = _walsh_hadamard(out, BLOCK_G, D)
    offs_d = tl.arange(0, D)
    tl.store(o_ptr + (n * (KV * G) + heads[:, None]) * D + offs_d[None, :], out.to(o_ptr.dtype.element_ty),
             mask=g_ok[:, None])  # fmt: skip


@triton.jit
def _attend_span(
    q, k_base, v_base, ks_ptr, vs_ptr, table, sink_end, start, end, j,
    qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    KV: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr, CODES: tl.constexpr, WINDOW: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    """(m, l, acc) of the online softmax over columns [0, sink_end) and [start, end) (either may be empty).
    PREFETCH: the next tile of [start, end) is loaded before the current one is folded in, so two tiles' loads
    are in flight (Triton does not pipeline these block-table gathers itself)."""
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    m_i, l_i, acc = _attend_range(  # the sinks (empty without a window)
        q, k_base, v_base, ks_ptr, vs_ptr, table, 0, sink_end, j, m_i, l_i, acc,
        qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
        KV, D, BS, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES, WINDOW,
    )  # fmt: skip
    if PREFETCH:
        k, v, k_s, v_s, c_ok = _load_tile(
            k_base, v_base, ks_ptr, vs_ptr, table, start + tl.arange(0, BLOCK_C), end - 1, j, sink_cols, ring,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd, KV, D, BS, CODES, WINDOW,
        )  # fmt: skip
        for c0 in range(start, end, BLOCK_C):
            # the next tile (past `end`: masked, nothing read) while this one is folded in
            nk, nv, nk_s, nv_s, n_ok = _load_tile(
                k_base, v_base, ks_ptr, vs_ptr, table, c0 + BLOCK_C + tl.arange(0, BLOCK_C), end - 1, j,
                sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
                KV, D, BS, CODES, WINDOW,
            )  # fmt: skip
            m_i, l_i, acc = _fold_tile(
                q, k, v, k_s, v_s, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES
            )
            k, v, k_s, v_s, c_ok = nk, nv, nk_s, nv_s, n_ok
    else:
        m_i, l_i, acc = _attend_range(
            q, k_base, v_base, ks_ptr, vs_ptr, table, start, end, j, m_i, l_i, acc,
            qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
            KV, D, BS, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES, WINDOW,
        )  # fmt: skip
    return m_i, l_i, acc


@triton.jit
def _attend_range(
    q, k_base, v_base, ks_ptr, vs_ptr, table, start, end, j, m_i, l_i, acc,
    qk_scale, sink_cols, ring, stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    KV: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_F32: tl.constexpr, IEEE: tl.constexpr, CODES: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """Columns [start, end) folded into the online softmax (m_i, l_i, acc) one tile after another."""
    for c0 in range(start, end, BLOCK_C):
        k, v, k_s, v_s, c_ok = _load_tile(
            k_base, v_base, ks_ptr, vs_ptr, table, c0 + tl.arange(0, BLOCK_C), end - 1, j, sink_cols, ring,
            stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd, KV, D, BS, CODES, WINDOW,
        )  # fmt: skip
        m_i, l_i, acc = _fold_tile(
            q, k, v, k_s, v_s, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G, BLOCK_C, DOT_F32, IEEE, CODES
        )
    return m_i, l_i, acc


@triton.jit
def _load_tile(
    k_base, v_base, ks_ptr, vs_ptr, table, cols, last, j, sink_cols, ring,
    stride_kb, stride_ks, stride_kd, stride_vb, stride_vs, stride_vd,
    KV: tl.constexpr, D: tl.constexpr, BS: tl.constexpr, CODES: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """One tile of columns from the pools: (k, v, k scales, v scales, valid). Columns past `last` are never
    loaded, so their contents (even NaN) cannot leak. Float pools: the scales are a placeholder, never read."""
    offs_d = tl.arange(0, D)
    c_ok = cols <= last
    blk = tl.load(table + _column(cols // BS, WINDOW, sink_cols, ring), mask=c_ok, other=0).to(tl.int64)
    slot = cols % BS
    k = tl.load(
        k_base + blk[:, None] * stride_kb + slot[:, None] * stride_ks + offs_d[None, :] * stride_kd,
        mask=c_ok[:, None],
        other=0.0,
    )
    v = tl.load(
        v_base + blk[:, None] * stride_vb + slot[:, None] * stride_vs + offs_d[None, :] * stride_vd,
        mask=c_ok[:, None],
        other=0.0,
    )
    if CODES != 0:
        scale_at = (blk * KV + j) * BS + slot
        k_s = tl.load(ks_ptr + scale_at, mask=c_ok, other=0.0)
        v_s = tl.load(vs_ptr + scale_at, mask=c_ok, other=0.0)
    else:
        k_s = c_ok.to(tl.float32)
        v_s = k_s
    return k, v, k_s, v_s, c_ok


@triton.jit
def _fold_tile(
    q, k, v, k_s, v_s, c_ok, m_i, l_i, acc, qk_scale,
    BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr, CODES: tl.constexpr,
):  # fmt: skip
    """A loaded tile folded into the online softmax. 8-bit codes are exact in q's dtype (converted through fp32:
    Triton's interpreter casts int8 to bf16 bit for bit); their per-slot scales go onto the scores' and p's
    columns."""
    if CODES == 0:
        return _softmax_step(q, k, v, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G, BLOCK_C, DOT_F32, IEEE)
    k = k.to(tl.float32).to(q.dtype)
    v = v.to(tl.float32).to(q.dtype)
    return _softmax_step(q, k, v, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G, BLOCK_C, DOT_F32, IEEE, k_s, v_s)


def _block_cols(d: int, itemsize: int) -> int:
    """Columns per loop step: 16 KiB k and v tiles, 16..64 columns (never depends on N or the positions)."""
    return min(max(16384 // (d * itemsize), 16), 64)


class Tile(NamedTuple):
    """How the attention kernel walks a token's columns (never depends on N or the positions: a token's result
    depends on it)."""

    cols: int
    """Columns per loop step."""
    warps: int
    """Warps per program."""
    prefetch: bool
    """Load the next tile before folding in the current one (two tiles' loads in flight)."""
    min_split: int
    """The shortest split, in columns: a context of at most this many is one split, written without a merge."""
    stages: int | None = None
    """Triton's `num_stages` for the column loop (None: Triton's default, which pipelines the K / V loads through
    shared memory); `bench/paged_gpu.py` times others."""
    unsplit: int = 0
    """A context of at most this many columns is one split whatever `min_split` says; longer ones split as the
    other fields say."""


def _tile(d: int, itemsize: int, codes: int) -> Tile:
    """The attention kernel's `Tile` for head size d, q's element size and the pools' CODES: 64-column tiles (16
    KiB of k and v at 128 x bf16), four warps, no prefetch, no split floor. `bench/paged_gpu.py` on H100s
    (2026-12-06, Llama-3-8B heads, 1 / 16 / 64 sequences of 512 / 4096 columns; docs/benchmarks-gpu.md):
    - eight warps took 25.9 us where four took 21.1 (bf16, 16 x 512), and 40.0 vs 29.7 (int8 32-column tiles);
    - the prefetch lost up to 11% on bf16 pools (64 x 4096: 429.5 vs 385.4 us); on 8-bit pools with 32-column
      tiles it won 10% at 16 / 64 x 4096 (fp8 e4m3) but lost 18% at 1 x 4096 (int8) and spills (fp8, sm_90);
    - a 128-column split floor won 4% at 16 x 512 and lost 5-15% at 1 and 64 x 512 (bf16);
    and with the in-kernel merge (2026-12-07, an engine-wide table: 16 splits; bench/results/
    paged_fused_merge_h100_2026-12-07_s27.txt): a 128-column floor took 10.1 / 12.2 us where none took 11.1 / 15.8
    at 16 / 32 x 72 (8.2 vs 8.1 at 1 x 72) but 9.6 vs 8.2 at 1 x 544 - so contexts of up to 128 columns run unsplit
    and longer ones split with no floor (`unsplit`), which keeps the 544- and 4096-column timings as they were."""
    return Tile(_block_cols(d, itemsize), _NUM_WARPS, False, 0, unsplit=128)


def _splits(columns: int, block_c: int) -> int:
    """Splits of each token's columns: `XPULLM_PAGED_SPLITS` (16: a 512-column context in 64-column splits), never
    more than the tiles of the longest context the block table holds (`columns`). Independent of N."""
    return max(1, min(runtime_settings().paged_splits, triton.cdiv(columns, block_c)))


def _split_programs(tokens: int, kv: int, splits: int, device: torch.device) -> int:
    """Programs per (token, kv head) that compute its `splits` splits: about four per multiprocessor in all, so a
    step of many tokens does not launch a program per mostly-empty split (their results do not depend on it)."""
    sms, _ = _device_limits(device)
    return max(1, min(splits, triton.cdiv(4 * sms, tokens * kv)))


def paged_attention(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """`xpullm.kernels.paged.paged_attention` in Triton (module docstring: the write, the attention and, where
    split, the merge; split steps of many tokens in runs of `_SPLIT_TOKENS`). Arguments as there;
    `kernels.paged` has checked shapes, dtypes and devices (the batch and the layer when built, qkv per call) and
    that `supports` holds. The pools may have any strides (8-bit pools' scales: contiguous); index values are the
    caller's duty (read on the device, unchecked). Returns [N, H * D], qkv's dtype."""
    k_pool, v_pool, k_scale, v_scale = layer.k_pool, layer.v_pool, layer.k_scale, layer.v_scale
    q_norm, k_norm, eps, window, sinks = layer.q_norm, layer.k_norm, layer.eps, layer.window, layer.sinks
    cos, sin, positions, seq_index, block_tables = (
        batch.cos, batch.sin, batch.positions, batch.seq_index, batch.block_tables,
    )  # fmt: skip
    h, kv, bs, d, scale, kv_cache_dtype = (
        layer.n_heads, layer.kv, layer.block_size, layer.d, layer.scale, layer.kv_cache_dtype,
    )  # fmt: skip
    n = qkv.shape[0]
    out = torch.empty((n, h * d), dtype=qkv.dtype, device=qkv.device)
    if n == 0:
        return out
    qkv = qkv if qkv.stride(1) == 1 else qkv.contiguous()  # the batch's tensors are contiguous already
    codes = _CODES[kv_cache_dtype]
    # q as the dot reads it: the pools' dtype, or for code pools the activations' (keys are scaled into it).
    q_buf = torch.empty((n, h, d), dtype=qkv.dtype if codes else k_pool.dtype, device=qkv.device)
    if codes and not (k_scale.is_contiguous() and v_scale.is_contiguous()):
        raise ValueError("8-bit pools' k_scale and v_scale must be contiguous [num_blocks, KV, block_size]")
    ks, vs = (k_scale, v_scale) if codes else (q_buf, q_buf)  # not read without code pools
    rot = kv_rotated(d, kv_cache_dtype)
    has_norm = q_norm is not None
    qn = q_norm if has_norm else q_buf  # not read without norms (the layer keeps them contiguous)
    kn = k_norm if has_norm else q_buf
    opts = launch_options(qkv.device)
    sink_cols = -(-sinks // bs) if window else 0
    ring = block_tables.shape[1] - sink_cols  # < 1: no ring columns, the plain table
    g = h // kv
    tile = _tile(d, q_buf.element_size(), codes)
    block_c = tile.cols
    # The longest context a token can attend: the table's columns (a window: the window and the sinks).
    splits = _splits(block_tables.shape[1] * bs if not window else window + sinks, block_c)
    run = n if splits == 1 else _SPLIT_TOKENS
    # Split: the partials of one run, acc [S, rows, D] then m and l [2, S, rows] (fp32), and the arrival counters
    # of every (token, kv head), which the write kernel zeroes.
    ws = None if splits == 1 else torch.empty(splits * min(n, run) * h * (d + 2), dtype=torch.float32,
                                              device=qkv.device)  # fmt: skip
    cnt = q_buf if ws is None else torch.empty(n * kv, dtype=torch.int32, device=qkv.device)
    _paged_write_kernel[(n, h + 2 * kv)](
        qkv, cos, sin, positions, seq_index, block_tables, qn, kn, q_buf, k_pool, v_pool, ks, vs, cnt,
        qkv.stride(0), cos.stride(0), sin.stride(0), block_tables.stride(0),
        *k_pool.stride(), *v_pool.stride(), float(eps), sink_cols, ring,
        H=h, KV=kv, D=d, BS=bs, HAS_NORM=has_norm, CODES=codes, WINDOW=window > 0, ROT=rot, COUNTERS=ws is not None,
        num_warps=1, **opts,
    )  # fmt: skip
    for t0 in range(0, n, run):  # one launch unless split: then runs of _SPLIT_TOKENS tokens
        t1 = min(n, t0 + run)
        rows = (t1 - t0) * h
        o = out[t0:t1]
        # unsplit, the programs store the output directly and read no workspace
        ws_acc, ws_ml = (o, o) if ws is None else (ws[: splits * rows * d], ws[splits * rows * d :])
        programs = _split_programs(t1 - t0, kv, splits, qkv.device)
        _paged_attention_kernel[(t1 - t0, kv, programs)](
            q_buf[t0:t1], k_pool, v_pool, ks, vs, positions[t0:t1], seq_index[t0:t1], block_tables, o,
            ws_acc, ws_ml, cnt if ws is None else cnt[t0 * kv : t1 * kv], float(scale) * _LOG2E,
            block_tables.stride(0), window, sinks, sink_cols, ring, rows, programs,
            *k_pool.stride(), *v_pool.stride(),
            KV=kv, G=g, D=d, BS=bs, BLOCK_G=max(_MIN_GROUP_ROWS, triton.next_power_of_2(g)),
            BLOCK_C=block_c, DOT_F32=_INTERPRET, IEEE=q_buf.dtype == torch.float32,
            CODES=codes, WINDOW=window > 0, ROT=rot, SPLITS=splits, PREFETCH=tile.prefetch,
            MIN_SPLIT=tile.min_split, UNSPLIT=tile.unsplit, BLOCK_H=max(2, triton.next_power_of_2(g)),
            num_warps=tile.warps,
            **({} if tile.stages is None else {"num_stages": tile.stages}), **opts,
        )  # fmt: skip
    return out
