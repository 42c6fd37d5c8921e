"""Fused Triton attention for one decode token per row over a static KV cache, with a PyTorch twin.

With a static cache of C columns, the eager decode step runs SDPA's masked path: it builds a [B, 1, 1, C]
mask, reads all C columns of every layer's cache and softmaxes over them, however few are filled. At batch
1..16 that is memory-bound work on columns that are masked out anyway. `decode_attention` replaces it with one
kernel that reads only the filled columns 0..pos: each program takes one (batch row, kv head) and the query
heads that share it (GQA), as one [rows, head_dim] tile, so the cache is read once per kv head and the scores
and the p @ v product run on tensor cores (`tl.dot`, fp32 accumulation); the softmax is online, in fp32, with
exp2. At small B * KV a long cache is split over several programs per row (split-K, "flash decoding"), and a
second small kernel merges their partial results.

The position is read from device memory and nothing on the host depends on its value, so a decode step that
calls `decode_attention` can be captured in a CUDA graph and replayed at every position. The kernels use
portable Triton only (CUDA, and Intel GPUs through Triton's XPU backend). `reference_decode_attention` is the
same math in plain PyTorch, which the tests compare against.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from xpullm.kernels.triton.pdl import launch_options, wait_for_inputs

__all__ = ["decode_attention", "reference_decode_attention"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, like triton.jit does at decoration
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
_MIN_HEAD_DIM, _MAX_HEAD_DIM = 16, 256  # tl.dot needs every tile side >= 16; wider heads would spill
_MIN_GROUP_ROWS = 16  # the query-head tile is padded to a tl.dot-sized row count
_SPLIT_ALIGN = 16  # split boundaries fall on whole 16-column steps, so loads stay aligned
_MIN_SPLIT_COLS = 256  # a split shorter than this costs more in the merge than it saves in parallelism
_FALLBACK_SMS = 64  # programs to aim for where the device reports no multiprocessor count (CPU, XPU)
_FALLBACK_SHARED = 64 * 1024  # shared memory assumed where the device does not report it
_NUM_WARPS = 4  # 8 was slower at every shape measured on an H200
_LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, acc, DOT_F32: tl.constexpr, IEEE: tl.constexpr):
    """acc + a @ b with fp32 accumulation: native bf16/fp16 operands, and full-precision fp32 ones.

    The Triton interpreter multiplies bf16 operands as raw integers, so there (DOT_F32) the operands are
    converted to fp32 first; they hold the same values, so the interpreter checks the GPU's rounding too.
    """
    if DOT_F32:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        out = tl.dot(a, b, acc, input_precision="ieee")
    else:
        out = tl.dot(a, b, acc)
    return out


@triton.jit
def _softmax_step(q, k, v, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
                  DOT_F32: tl.constexpr, IEEE: tl.constexpr, k_s=None, v_s=None):  # fmt: skip
    """One tile of key columns (valid where c_ok) folded into the online softmax (m_i, l_i, acc): the step both
    the decode and the paged kernels take. Every tile has at least one valid column, so m_new is finite and the
    first alpha is exp2(-inf) = 0. k_s / v_s ([BLOCK_C] fp32, 8-bit pools): k and v hold codes (exact in q's
    dtype) and these their per-column scales, applied to the scores' columns and to p's columns, so no scaled
    copy of either tile is built."""
    s = _dot(q, tl.trans(k), tl.zeros([BLOCK_G, BLOCK_C], dtype=tl.float32), DOT_F32, IEEE)
    if k_s is not None:
        s = s * k_s[None, :]
    s = tl.where(c_ok[None, :], s * qk_scale, float("-inf"))  # log2-domain scores
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if v_s is not None:
        p = p * v_s[None, :]
    acc = _dot(p.to(v.dtype), v, acc * alpha[:, None], DOT_F32, IEEE)
    return m_new, l_i, acc


@triton.jit
def _decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, ws_acc_ptr, ws_ml_ptr,
    qk_scale, C, cols_per_split, n_rows,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kh, stride_kc, stride_kd,
    stride_vb, stride_vh, stride_vc, stride_vd,
    KV: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr,
    USE_WS: tl.constexpr, DOT_F32: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Attention of the G query heads of one (row, kv head) over one split of columns 0..pos.

    Grid (B * KV, S). Without a workspace the program stores the normalized output; with one, split s stores
    its running max m, sum l (both per query head, in the exp2 domain) and unnormalized acc, in fp32, for
    `_merge_splits_kernel`. A split that starts past pos leaves m = -inf, l = 0, acc = 0.
    """
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = (pid // KV).to(tl.int64)
    j = pid % KV
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, D)
    g_ok = offs_g < G
    heads = j * G + offs_g  # query heads j*G .. j*G+G-1 read kv head j, as SDPA's enable_gqa does

    wait_for_inputs(PDL)
    q = tl.load(
        q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
        mask=g_ok[:, None],
        other=0.0,
    )
    k_base = k_ptr + b * stride_kb + j * stride_kh
    v_base = v_ptr + b * stride_vb + j * stride_vh

    pos = tl.load(pos_ptr).to(tl.int32)
    start = split * cols_per_split
    end = tl.minimum(tl.minimum(start + cols_per_split, pos + 1), C)  # min with C: never read past the cache
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
    for c0 in range(start, end, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < end  # columns past pos are never loaded: their contents (even NaN) cannot leak
        cols = offs_c.to(tl.int64)
        k = tl.load(
            k_base + cols[:, None] * stride_kc + offs_d[None, :] * stride_kd, mask=c_ok[:, None], other=0.0
        )
        v = tl.load(
            v_base + cols[:, None] * stride_vc + offs_d[None, :] * stride_vd, mask=c_ok[:, None], other=0.0
        )
        m_i, l_i, acc = _softmax_step(q, k, v, c_ok, m_i, l_i, acc, qk_scale, BLOCK_G, BLOCK_C, DOT_F32, IEEE)

    if not USE_WS:
        out = acc / l_i[:, None]
        o_off = (b * (KV * G) + heads[:, None]) * D + offs_d[None, :]  # out [B, 1, H * D]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=g_ok[:, None])
    else:
        row = split * n_rows + b * (KV * G) + heads  # acc is [S, B * H, D]; m, l are [2, S, B * H]
        tl.store(ws_acc_ptr + row[:, None] * D + offs_d[None, :], acc, mask=g_ok[:, None])
        tl.store(ws_ml_ptr + row, m_i, mask=g_ok)
        tl.store(ws_ml_ptr + tl.num_programs(1) * n_rows + row, l_i, mask=g_ok)


@triton.jit
def _merge_splits_kernel(
    ws_acc_ptr, ws_ml_ptr, o_ptr, n_rows, S, D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """out[r] = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s with M = max_s m_s; one program per (row, head),
    all S partials loaded as one [S, D] tile.

    Split 0 always holds a column, so M is finite; an empty split (m = -inf) adds exactly 0, and its l and acc are
    not read (they need not be written).
    """
    r = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, D)
    wait_for_inputs(PDL)
    m_all = tl.load(ws_ml_ptr + offs_s * n_rows + r, mask=offs_s < S, other=float("-inf"))
    live = m_all > float("-inf")
    w = tl.exp2(m_all - tl.max(m_all, axis=0))  # 0 for empty splits
    l_all = tl.load(ws_ml_ptr + (S + offs_s) * n_rows + r, mask=live, other=0.0)
    acc = tl.load(
        ws_acc_ptr + (offs_s[:, None] * n_rows + r) * D + offs_d[None, :], mask=live[:, None], other=0.0
    )
    out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * l_all, axis=0)
    tl.store(o_ptr + r * D + offs_d, out.to(o_ptr.dtype.element_ty))


def _check_args(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor, n_splits: int | None
) -> tuple[int, int, int, int, int]:
    """Shape, dtype and device checks shared by `decode_attention` and its twin; returns (B, H, KV, C, D)."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [B, KV, C, D]; got {tuple(k_cache.shape)} and "
            f"{tuple(v_cache.shape)} (pass one layer's slice, e.g. cache[i] of an [L, B, KV, C, D] cache)"
        )
    b, kv, c, d = k_cache.shape
    if q.dim() == 4 and q.shape[2] != 1:
        raise ValueError(
            f"decode_attention takes one query token per row; got q {tuple(q.shape)} with {q.shape[2]} "
            "tokens: use torch.nn.functional.scaled_dot_product_attention for prefill"
        )
    if q.dim() not in (3, 4) or q.shape[0] != b or q.shape[-1] != d:
        raise ValueError(
            f"q must be [{b}, H, 1, {d}] or [{b}, H, {d}] to match the cache {tuple(k_cache.shape)}; "
            f"got {tuple(q.shape)}"
        )
    h = q.shape[1]
    if kv == 0 or h % kv:
        raise ValueError(
            f"the query heads must split evenly over the kv heads; got H={h} query heads and KV={kv} kv heads"
        )
    if d < _MIN_HEAD_DIM or d > _MAX_HEAD_DIM or d & (d - 1):
        raise ValueError(
            f"head_dim must be a power of two from {_MIN_HEAD_DIM} to {_MAX_HEAD_DIM}; got head_dim={d}: "
            "use torch.nn.functional.scaled_dot_product_attention"
        )
    if c == 0:
        raise ValueError(f"the cache has no columns: k_cache {tuple(k_cache.shape)}")
    if q.dtype not in _DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(
            f"q, k_cache and v_cache must share one dtype of bfloat16, float16 or float32; got {q.dtype}, "
            f"{k_cache.dtype} and {v_cache.dtype}: cast them to the activation dtype"
        )
    if pos.numel() != 1 or pos.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"pos must be a one-element int64 (or int32) tensor; got {pos.dtype} {tuple(pos.shape)}"
        )
    devices = {t.device for t in (q, k_cache, v_cache, pos)}
    if len(devices) != 1:
        raise ValueError(
            f"q, k_cache, v_cache and pos must be on one device (pos too: the kernel reads it there); got "
            f"{q.device}, {k_cache.device}, {v_cache.device} and {pos.device}"
        )
    if n_splits is not None and (isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 1):
        raise ValueError(
            f"n_splits must be a positive int or None (chosen from C); got n_splits={n_splits!r}"
        )
    return b, h, kv, c, d


@functools.cache
def _device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessors, shared memory bytes one block may use) of a CUDA device; fixed guesses elsewhere."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.multi_processor_count, props.shared_memory_per_block_optin
    return _FALLBACK_SMS, _FALLBACK_SHARED


def _default_splits(c: int, programs: int, sms: int) -> int:
    """Splits per (row, kv head): enough for about one program per multiprocessor, each >= 256 columns.

    Depends on the cache length C, not on pos, so a captured graph stays valid at every position.
    """
    return max(1, min(c // _MIN_SPLIT_COLS, sms // programs))


def _block_cols(d: int, itemsize: int, shared: int) -> int:
    """Cache columns per loop step, 16..128: k and v tiles of 32 KiB each where shared memory allows, else 16.

    Triton keeps about two stages of both tiles in shared memory: 32 KiB tiles need ~140 KiB (A100, H100 and
    later have it) and read a full cache ~10% faster on an H200 than 16 KiB ones; consumer GPUs (~100 KiB a
    block) take 16 KiB tiles.
    """
    tile = 32768 if shared >= 5 * 32768 else 16384
    return min(max(tile // (d * itemsize), 16), 128)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: torch.Tensor,
    scale: float,
    n_splits: int | None = None,
) -> torch.Tensor:
    """Attention of one decode token per row over cache columns 0..pos, as one fused kernel (two when split).

    q: [B, H, 1, D] or [B, H, D], any strides. k_cache, v_cache: [B, KV, C, D], any strides (e.g. one layer's
    slice `cache[i]` of an [L, B, KV, C, D] cache); query head h reads kv head h // (H // KV) (GQA, as SDPA's
    `enable_gqa`). D: a power of two from 16 to 256; q and the cache share one dtype (bf16, fp16 or fp32).
    pos: a one-element integer tensor on q's device, read by the kernel (no sync, graph-capturable); columns
    past pos are never read, and 0 <= pos < C is the caller's duty. scale: the softmax scale, e.g. D ** -0.5.
    n_splits: programs per (row, kv head) over the columns; None picks it from C and B * KV.

    Returns a new contiguous [B, 1, H * D] tensor of q's dtype, head h in columns h*D .. h*D + D-1: what
    `sdpa(q, k[:, :, :pos+1], v[:, :, :pos+1], scale=scale, enable_gqa=True).transpose(1, 2).reshape(B, 1, H*D)`
    gives. Scores, softmax and accumulation are fp32; the dot operands are q's dtype (p is rounded to it).
    """
    b, h, kv, c, d = _check_args(q, k_cache, v_cache, pos, n_splits)
    g = h // kv
    out = torch.empty((b, 1, h * d), dtype=q.dtype, device=q.device)
    if b == 0:
        return out
    sms, shared = _device_limits(q.device)
    splits = n_splits if n_splits is not None else _default_splits(c, b * kv, sms)
    cols_per_split = triton.cdiv(triton.cdiv(c, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    rows = b * h
    if splits > 1:
        ws = torch.empty(splits * rows * (d + 2), dtype=torch.float32, device=q.device)
        ws_acc, ws_ml = ws[: splits * rows * d], ws[splits * rows * d :]
    else:
        ws_acc = ws_ml = out  # not read: the programs store the output directly
    block_g = max(_MIN_GROUP_ROWS, triton.next_power_of_2(g))
    block_c = _block_cols(d, q.element_size(), shared)
    _decode_attention_kernel[(b * kv, splits)](
        q, k_cache, v_cache, pos, out, ws_acc, ws_ml,
        float(scale) * _LOG2E, c, cols_per_split, rows,
        q.stride(0), q.stride(1), q.stride(-1), *k_cache.stride(), *v_cache.stride(),
        KV=kv, G=g, D=d, BLOCK_G=block_g, BLOCK_C=block_c,
        USE_WS=splits > 1, DOT_F32=_INTERPRET, IEEE=q.dtype == torch.float32, num_warps=_NUM_WARPS,
        **launch_options(q.device),
    )  # fmt: skip
    if splits > 1:
        _merge_splits_kernel[(rows,)](
            ws_acc, ws_ml, out, rows, splits, D=d, BLOCK_S=triton.next_power_of_2(splits), num_warps=1,
            **launch_options(q.device),
        )  # fmt: skip
    return out


def reference_decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor, scale: float
) -> torch.Tensor:
    """The twin of `decode_attention`: the same attention in fp32 PyTorch, cast once to q's dtype.

    The filled columns are picked by a device-side mask (cols <= pos), so the twin makes no host sync either.
    """
    b, h, kv, c, d = _check_args(q, k_cache, v_cache, pos, None)
    filled = torch.arange(c, device=k_cache.device) <= pos.reshape(())  # [C]
    # Unfilled columns may hold anything, NaN included; 0 * NaN is NaN, so they are zeroed, not just masked.
    k = torch.where(filled[:, None], k_cache.float(), 0.0)
    v = torch.where(filled[:, None], v_cache.float(), 0.0)
    qg = q.reshape(b, kv, h // kv, d).float()  # head h = j * G + i reads kv head j
    scores = torch.einsum("bjid,bjcd->bjic", qg, k) * scale
    p = torch.softmax(scores.masked_fill(~filled, float("-inf")), dim=-1)
    out = torch.einsum("bjic,bjcd->bjid", p, v)
    return out.reshape(b, 1, h * d).to(q.dtype)
