"""Fused Triton kernels for the small per-token ops of a llama-style decode step, each with a PyTorch twin.

At batch 1 a decode step is hundreds of tiny kernels, and their launch and memory round trips cost more
than their arithmetic. Each kernel here replaces 3-8 ATen kernels per layer: the RMS norm (pow, mean, rsqrt,
mul, mul), the SwiGLU gate (silu, mul and the copies of the two chunks), and RoPE with the KV-cache write
(slice, mul, roll, addcmul and two index_copy). The kernels compute in fp32 and round to the output dtype
once, except RoPE, which rounds `x * cos` first exactly as the eager `mul` + `addcmul` pair does: the graphed
and the eager decode step then compute the same q and k, so turning CUDA graphs on does not change the tokens.
`reference_<op>` is the same math in plain PyTorch, which the tests compare against.

The kernels use portable Triton only (CUDA, and Intel GPUs through Triton's XPU backend), make no host-device
sync and allocate only their outputs, so a decode step that calls them can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xpullm.kernels.triton.jit import quantize_blocks_q8
from xpullm.kernels.triton.launch import Q8Activations
from xpullm.kernels.triton.pdl import launch_options, wait_for_inputs

__all__ = [
    "add_rms_norm",
    "reference_rms_norm",
    "reference_rope_kv_write",
    "reference_silu_mul",
    "rms_norm",
    "rope_kv_write",
    "silu_mul",
]

_MAX_HIDDEN = 16384  # one program holds a whole row in registers; wider rows would spill
_SILU_BLOCK = 1024
_NORM_CHUNK = 512  # columns each RMSNorm program writes (it reduces the whole row)
_MAX_HEAD_DIM = 256


def _row_warps(block: int) -> int:
    """Warps for one program over `block` elements: about 8 elements per thread, 1..16 warps."""
    return min(max(block // 256, 1), 16)


@triton.jit
def _rms_norm_kernel(
    x_ptr, d_ptr, h_ptr, w_ptr, y_ptr, xq_ptr, xs_ptr, xss_ptr,
    N, KB, stride_x, stride_d, stride_h, stride_y, stride_q, stride_s, eps,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, HAS_DELTA: tl.constexpr, Q8: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """[h = x + d, stored in x's dtype;] y = h * rsqrt(mean(h^2) + eps) * w in fp32, rounded to y's dtype,
    then stored - or, with Q8, quantized to int8 blocks for `gemv_q8_kernel`.

    Grid (rows, CHUNK-wide column chunks): every program reduces the whole row (a few KB, from L2) and writes
    its own chunk, so a row is normalized by several SMs at once instead of one long dependent chain.
    """
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    wait_for_inputs(PDL)
    x = tl.load(x_ptr + row * stride_x + offs, mask=ok, other=0.0)
    if HAS_DELTA:
        d = tl.load(d_ptr + row * stride_d + offs, mask=ok, other=0.0)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(x.dtype)  # the eager residual add's rounding
    x = x.to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    offs_c = tl.program_id(1) * CHUNK + tl.arange(0, CHUNK)
    ok_c = offs_c < N
    xc = tl.load(x_ptr + row * stride_x + offs_c, mask=ok_c, other=0.0)
    if HAS_DELTA:
        dc = tl.load(d_ptr + row * stride_d + offs_c, mask=ok_c, other=0.0)
        xc = (xc.to(tl.float32) + dc.to(tl.float32)).to(xc.dtype)
        tl.store(h_ptr + row * stride_h + offs_c, xc, mask=ok_c)
    w = tl.load(w_ptr + offs_c, mask=ok_c, other=0.0).to(tl.float32)
    y = (xc.to(tl.float32) * r * w).to(y_ptr.dtype.element_ty)
    if Q8:
        blk = tl.program_id(1) * (CHUNK // 32) + tl.arange(0, CHUNK // 32)
        quantize_blocks_q8(
            tl.reshape(y.to(tl.float32), (CHUNK // 32, 32)), blk, blk < KB,
            xq_ptr + row * stride_q, xs_ptr + row * stride_s, xss_ptr + row * stride_s, CHUNK // 32,
        )  # fmt: skip
    else:
        tl.store(y_ptr + row * stride_y + offs_c, y, mask=ok_c)


@triton.jit
def _silu_mul_kernel(
    gu_ptr, y_ptr, xq_ptr, xs_ptr, xss_ptr, F, KB, stride_gu, stride_y, stride_q, stride_s,
    BLOCK: tl.constexpr, Q8: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """y[row, f] = silu(gu[row, f]) * gu[row, F + f] in fp32, rounded to y's dtype; stored, or with Q8
    quantized to int8 blocks for `gemv_q8_kernel`. Grid (rows, column blocks)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < F
    wait_for_inputs(PDL)
    g = tl.load(gu_ptr + row * stride_gu + offs, mask=ok, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + row * stride_gu + F + offs, mask=ok, other=0.0).to(tl.float32)
    y = (g / (1.0 + tl.exp(-g)) * u).to(y_ptr.dtype.element_ty)
    if Q8:
        blk = tl.program_id(1) * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
        quantize_blocks_q8(
            tl.reshape(y.to(tl.float32), (BLOCK // 32, 32)), blk, blk < KB,
            xq_ptr + row * stride_q, xs_ptr + row * stride_s, xss_ptr + row * stride_s, BLOCK // 32,
        )  # fmt: skip
    else:
        tl.store(y_ptr + row * stride_y + offs, y, mask=ok)


@triton.jit
def _rope_kv_write_kernel(
    qkv_ptr, cos_ptr, sin_ptr, pos_ptr, q_ptr, k_ptr, v_ptr,
    stride_qkv, stride_cos, stride_sin,
    stride_kb, stride_kh, stride_kc, stride_kd,
    stride_vb, stride_vh, stride_vc, stride_vd,
    H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """One head of one row: rotate a q head into q, a k head into k_cache[b, j, pos], copy a v head.

    Grid (B, H + 2 KV). The position is read from device memory, so the launch does not depend on its value.
    The rotation is x * cos + roll(x, D/2) * sin (the caller's sin already carries rotate_half's sign).
    """
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs = tl.arange(0, D)
    src = qkv_ptr + b * stride_qkv + h * D
    wait_for_inputs(PDL)
    if h < H + KV:
        pos = tl.load(pos_ptr).to(tl.int64)
        x = tl.load(src + offs).to(tl.float32)
        xr = tl.load(src + (offs + D // 2) % D).to(tl.float32)
        c = tl.load(cos_ptr + pos * stride_cos + offs).to(tl.float32)
        s = tl.load(sin_ptr + pos * stride_sin + offs).to(tl.float32)
        # x * cos is rounded to the activation dtype first, like the eager step's `mul` before its `addcmul`.
        y = (x * c).to(q_ptr.dtype.element_ty).to(tl.float32) + xr * s
        if h < H:
            tl.store(q_ptr + (b * H + h) * D + offs, y.to(q_ptr.dtype.element_ty))
        else:
            dst = k_ptr + b * stride_kb + (h - H) * stride_kh + pos * stride_kc + offs * stride_kd
            tl.store(dst, y.to(k_ptr.dtype.element_ty))
    else:
        pos = tl.load(pos_ptr).to(tl.int64)
        v = tl.load(src + offs)
        dst = v_ptr + b * stride_vb + (h - H - KV) * stride_vh + pos * stride_vc + offs * stride_vd
        tl.store(dst, v.to(v_ptr.dtype.element_ty))


def _rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """x [..., width] as a 2-D [rows, width] tensor with a unit last stride (a view when possible)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x.reshape(-1, width)
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _outputs(
    src2: torch.Tensor, rows: int, width: int, shape: tuple[int, ...], quantize: bool
) -> tuple[torch.Tensor | Q8Activations, torch.Tensor, Q8Activations]:
    """(what a row op returns, its kernel's `y` and int8 outputs) for `rows` output rows of `width` values.

    With `quantize` the op returns new `Q8Activations` and `y` is the input `src2`, which only gives the kernel
    its rounding dtype (nothing is stored through it); otherwise it returns a new `y` of `shape`, and the int8
    outputs are placeholders the kernel ignores without Q8.
    """
    if quantize:
        act = Q8Activations.empty(rows, width, src2.dtype, src2.device)
        return act, src2, act
    y = torch.empty(shape, dtype=src2.dtype, device=src2.device)
    return y, y, Q8Activations(y, y, y, src2.dtype)


def _check_norm_args(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor) -> int:
    hidden = x.shape[-1]
    if tuple(normalized_shape) != (hidden,) or tuple(weight.shape) != (hidden,):
        raise ValueError(
            f"rms_norm normalizes the last dimension only: got normalized_shape={tuple(normalized_shape)}, "
            f"weight {tuple(weight.shape)} for x {tuple(x.shape)}; pass ({hidden},) and a weight of that shape"
        )
    if hidden > _MAX_HIDDEN:
        raise ValueError(
            f"rms_norm keeps a row in registers, up to {_MAX_HIDDEN} features; got {hidden}: "
            "use torch.nn.functional.rms_norm"
        )
    return hidden


def rms_norm(
    x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """`torch.nn.functional.rms_norm` over the last dimension, as one fused kernel.

    y = x * rsqrt(mean(x^2) + eps) * weight, computed in fp32 and stored in x.dtype. `normalized_shape` must
    be `(x.shape[-1],)` with `x.shape[-1] <= 16384`; x may have any leading shape.
    """
    return add_rms_norm(x, None, weight, eps, normalized_shape=normalized_shape)[1]


def add_rms_norm(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    eps: float,
    quantize: bool = False,
    normalized_shape: tuple[int, ...] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | Q8Activations]:
    """The residual add and the next RMSNorm of a decoder layer as one kernel: (h, rms_norm(h)), h = x + delta.

    `h` is rounded to x.dtype exactly as the eager `x + delta` is (it is x itself when delta is None); the
    norm is `rms_norm`'s. With `quantize=True` the normalized rows come back as `Q8Activations` (int8 per block
    of 32, for `gemv_q8_kernel`) instead of a tensor: they are quantized in registers, never stored in x.dtype.
    """
    hidden = _check_norm_args(x, normalized_shape or (x.shape[-1],), weight)
    if delta is not None and delta.shape != x.shape:
        raise ValueError(f"delta {tuple(delta.shape)} must have x's shape {tuple(x.shape)}")
    h = x if delta is None else torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = x.numel() // hidden if hidden else 0
    x2 = _rows(x, hidden)
    act, y, q = _outputs(x2, rows, hidden, x.shape, quantize)
    if rows == 0:
        return h, act
    d2 = x2 if delta is None else _rows(delta, hidden)
    block = max(triton.next_power_of_2(hidden), 32)
    chunk = min(block, _NORM_CHUNK)
    _rms_norm_kernel[(rows, triton.cdiv(hidden, chunk))](
        x2, d2, h, weight.contiguous(), y, q.codes, q.scales, q.sums,
        hidden, -(-hidden // 32), x2.stride(0), d2.stride(0), hidden, hidden, q.codes.stride(0),
        q.scales.stride(0), float(eps),
        BLOCK=block, CHUNK=chunk, HAS_DELTA=delta is not None, Q8=quantize, num_warps=min(_row_warps(block), 8),
        **launch_options(x.device),
    )  # fmt: skip
    return h, act


def reference_rms_norm(
    x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """The twin of `rms_norm`: the same fp32 math in PyTorch, cast once to x.dtype."""
    xf = x.float()
    r = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * r * weight.float()).to(x.dtype)


def silu_mul(gu: torch.Tensor, quantize: bool = False) -> torch.Tensor | Q8Activations:
    """SwiGLU's gate: gu [..., 2F] -> silu(gu[..., :F]) * gu[..., F:], in fp32, rounded to gu.dtype.

    With `quantize=True` the rows come back as `Q8Activations` for `gemv_q8_kernel` (quantized in registers).
    """
    width = gu.shape[-1]
    if width % 2:
        raise ValueError(f"silu_mul expects [..., 2F] (gate, then up); got an odd last dimension {width}")
    f = width // 2
    rows = gu.numel() // width if width else 0
    gu2 = _rows(gu, width)
    act, y, q = _outputs(gu2, rows, f, (*gu.shape[:-1], f), quantize)
    if rows == 0 or f == 0:
        return act
    grid = (rows, triton.cdiv(f, _SILU_BLOCK))
    _silu_mul_kernel[grid](
        gu2, y, q.codes, q.scales, q.sums, f, -(-f // 32), gu2.stride(0), f, q.codes.stride(0),
        q.scales.stride(0), BLOCK=_SILU_BLOCK, Q8=quantize, num_warps=4, **launch_options(gu.device),
    )  # fmt: skip
    return act


def reference_silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """The twin of `silu_mul`, in PyTorch."""
    g, u = gu.float().chunk(2, dim=-1)
    return (torch.nn.functional.silu(g) * u).to(gu.dtype)


def _check_rope_args(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv: int,
) -> tuple[int, int]:
    """Shape checks shared by `rope_kv_write` and its twin; returns (batch, head_dim)."""
    if k_cache.dim() != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"k_cache and v_cache must both be [B, KV, C, D]; got {tuple(k_cache.shape)} and "
            f"{tuple(v_cache.shape)}"
        )
    b, kv, _, d = k_cache.shape
    if d < 2 or d > _MAX_HEAD_DIM or d & (d - 1):
        raise ValueError(f"head_dim must be a power of two from 2 to {_MAX_HEAD_DIM}; got head_dim={d}")
    if kv != n_kv:
        raise ValueError(f"k_cache has {kv} heads but n_kv={n_kv}")
    width = (n_heads + 2 * n_kv) * d
    if not (qkv.dim() == 2 or (qkv.dim() == 3 and qkv.shape[1] == 1)) or qkv.shape[0] != b:
        raise ValueError(
            f"qkv must be [{b}, {width}] or [{b}, 1, {width}] (one token per row); got {tuple(qkv.shape)}"
        )
    if qkv.shape[-1] != width:
        raise ValueError(
            f"qkv has {qkv.shape[-1]} features; (n_heads + 2 * n_kv) * head_dim = ({n_heads} + 2 * {n_kv}) * {d} "
            f"= {width}"
        )
    if cos.dim() != 2 or cos.shape[-1] != d or sin.shape != cos.shape:
        raise ValueError(
            f"cos and sin must be [P, {d}] tables; got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if pos.numel() != 1 or pos.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"pos must be a one-element int64 (or int32) tensor; got {pos.dtype} {tuple(pos.shape)}"
        )
    return b, d


def rope_kv_write(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv: int,
) -> torch.Tensor:
    """RoPE on one decode token per row, with the k/v heads written into the cache at `pos`; returns q.

        qkv: [B, (H + 2 KV) * D] or [B, 1, ...], heads ordered q, k, v. cos, sin: [P, D] tables with the rotation
        x * cos + roll(x, D // 2) * sin (sin's first half already negated). pos: a one-element integer tensor on
        the device, read by the kernel (no sync, graph-capturable); 0 <= pos < min(P, C) is the caller's duty.
        k_cache, v_cache: [B, KV, C, D], any strides (e.g. one layer's slice of a bigger cache); rotated k goes to
        k_cache[b, j, pos], v to v_cache[b, j, pos]. The rotation is computed in fp32 with `x * cos` rounded to
    qkv's dtype first (the eager `mul` + `addcmul` rounding, so graphed and eager steps agree bit for bit).
        Returns the rotated q as a new contiguous [B, H, 1, D] tensor of qkv's dtype. D: a power of two <= 256.
    """
    b, d = _check_rope_args(qkv, cos, sin, pos, k_cache, v_cache, n_heads, n_kv)
    q = torch.empty((b, n_heads, 1, d), dtype=qkv.dtype, device=qkv.device)
    if b == 0:
        return q
    qkv2 = _rows(qkv, qkv.shape[-1])
    cos, sin = _rows(cos, d), _rows(sin, d)
    _rope_kv_write_kernel[(b, n_heads + 2 * n_kv)](
        qkv2, cos, sin, pos, q, k_cache, v_cache,
        qkv2.stride(0), cos.stride(0), sin.stride(0), *k_cache.stride(), *v_cache.stride(),
        H=n_heads, KV=n_kv, D=d, num_warps=1 if d <= 128 else 2, **launch_options(qkv.device),
    )  # fmt: skip
    return q


def reference_rope_kv_write(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    n_heads: int,
    n_kv: int,
) -> torch.Tensor:
    """The twin of `rope_kv_write`, in PyTorch (index_select / index_copy_ by the device-side pos)."""
    b, d = _check_rope_args(qkv, cos, sin, pos, k_cache, v_cache, n_heads, n_kv)
    idx = pos.reshape(1).long()
    heads = qkv.reshape(b, n_heads + 2 * n_kv, d)
    x = heads[:, : n_heads + n_kv].float()
    c = cos.index_select(0, idx).float()  # [1, D], broadcasts over rows and heads
    s = sin.index_select(0, idx).float()
    rot = (x * c).to(qkv.dtype).float() + torch.roll(x, d // 2, dims=-1) * s
    k_cache.index_copy_(2, idx, rot[:, n_heads:, None].to(k_cache.dtype))
    v_cache.index_copy_(2, idx, heads[:, n_heads + n_kv :, None].to(v_cache.dtype))
    return rot[:, :n_heads, None].to(qkv.dtype).contiguous()
