"""8-bit weights times 8-bit activation blocks on tensor cores, in Triton (path `w8a8_t`, batched decode).

The weight-only 8-bit tiles (`jit.mma_t_kernel`) turn every weight into a bf16 in registers before a K = 16 bf16
MMA; the vendor GEMM over per-token 8-bit rows (`w8a8.py`) decodes nothing but is tuned for tall products, and a
whole row under one scale costs 2.7-2.9% perplexity on the packaged model. Here both operands stay 8-bit and go
from shared memory straight into fp8 x fp8 -> fp32 (fp8_e4m3) or int8 x int8 -> int32 (sym_int8) tensor-core
dots, with no decode; each activation row is rounded per block of `act_block` elements (absmax / qmax), and
every block's dot is scaled by its activation scale as it is added to the fp32 accumulator (the promotion
fp8 serving stacks use with one scale per 1 x 128 activation block). The weight's per-row scale multiplies the
result once.

The weights are used in place: the Triton layout's 8-bit words are an [N, KX] byte matrix whose K order is
permuted inside each block of 16 (byte 4 l + i holds element 4 i + l, layout.py), so every block of 16, 64 or
128 positions holds the same elements as in K order; the quantizer writes the activations in the permuted order.

The numbers differ from the weight-only paths by the activation rounding (the twin, `reference`, models it
exactly up to the fp32 summation order); `bench/w8a8_quality.py --set w8a8_t` measures what it costs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xpullm.kernels.triton.configs import SINGLE_GROUP_WORDS
from xpullm.kernels.triton.jit import round_half_even, store_t_tile
from xpullm.kernels.triton.layout import TritonWeight
from xpullm.kernels.triton.pdl import launch_options, wait_for_inputs
from xpullm.kernels.triton.w8a8 import FORMATS, permuted_k, round_e4m3

__all__ = ["ACT_BLOCK", "act_block", "quantize", "reference", "reference_quantize", "supports"]

# activation elements per scale, per weight format: fp8 rows per 1 x 128 block (the recipe of fp8 serving
# stacks); int8 rows per 64 (int8 keeps 8 bits where e4m3 keeps 4 and an exponent, so a block's outlier costs
# the others more: bench/w8a8_quality.py --set w8a8_t)
ACT_BLOCK: dict[str, int] = {"fp8_e4m3": 128, "sym_int8": 64}
_BLOCKS_PER_PROGRAM = 8  # activation blocks one quantizer program handles


def act_block(fmt: str) -> int:
    """Activation elements per scale for weights of format `fmt`."""
    return ACT_BLOCK[fmt]


def supports(tw: TritonWeight, x_dtype: torch.dtype) -> bool:
    """Whether `w8a8_t` can run `tw` with activations of `x_dtype`: an 8-bit format with one scale per output row
    (a grouped scale cannot leave the K sum of a block) and bf16 / fp16 activations."""
    return (
        tw.format in ACT_BLOCK
        and tw.group_words == SINGLE_GROUP_WORDS
        and x_dtype in (torch.bfloat16, torch.float16)
    )


@triton.jit
def _block_codes(x, AXIS: tl.constexpr, QMAX: tl.constexpr, INT8: tl.constexpr):
    """Activation blocks x (each block's elements along AXIS of a 2-D tile) -> (8-bit codes, each block's scale
    absmax / QMAX floored at 1e-20 / QMAX): IEEE division; int8 rounds half to even, fp8 to the nearest e4m3
    value, ties to even."""
    x = x.to(tl.float32)
    scale = tl.div_rn(tl.maximum(tl.max(tl.abs(x), axis=AXIS), 1e-20), QMAX)
    v = tl.div_rn(x, tl.expand_dims(scale, AXIS))
    if INT8:
        q = tl.minimum(tl.maximum(round_half_even(v), -QMAX), QMAX).to(tl.int8)
    else:
        q = round_e4m3(v).to(tl.float8e4nv)  # exact: the value is already an e4m3 number
    return q, scale


@triton.jit
def quantize_kernel(
    x_ptr, q_ptr, s_ptr, K, NB, stride_xm, stride_qm, stride_sm,
    QMAX: tl.constexpr, INT8: tl.constexpr, SCALE_FACTOR: tl.constexpr, B: tl.constexpr,
    BLOCKS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """x [M, K] -> 8-bit codes [M, NB * B] in the weight's permuted K order (position 4 l + i of each 16 holds
    element 4 i + l; zero past K) and fp32 scales [M, NB]: absmax / QMAX of each block of B elements (floored at
    1e-20 / QMAX), times SCALE_FACTOR (a power of two: exact). IEEE division; int8 rounds half to even, fp8 to
    the nearest e4m3 value, ties to even. Grid: (rows, block chunks of BLOCKS)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    b = tl.program_id(1) * BLOCKS + tl.arange(0, BLOCKS)
    p = tl.arange(0, B)
    e = b[:, None] * B + permuted_k(p)[None, :]
    x = tl.load(x_ptr + row * stride_xm + e, mask=e < K, other=0.0)
    q, scale = _block_codes(x, 1, QMAX, INT8)
    b_ok = b < NB
    tl.store(q_ptr + row * stride_qm + b[:, None] * B + p[None, :], q, mask=b_ok[:, None])
    tl.store(s_ptr + row * stride_sm + b, scale * SCALE_FACTOR, mask=b_ok)


def quantize(x2: torch.Tensor, tw: TritonWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation rows x2 [M, >= K] -> (codes [M, NB * B] in the format's activation dtype and the weight's K
    order, fp32 scales [M, NB]), B = `act_block(tw.format)`, NB = ceil(KX / B)."""
    dtype, qmax, factor = FORMATS[tw.format]
    block = act_block(tw.format)
    m = x2.shape[0]
    nb = -(-tw.kx // block)
    codes = torch.empty((m, nb * block), dtype=dtype, device=x2.device)
    scales = torch.empty((m, nb), dtype=torch.float32, device=x2.device)
    if m:
        quantize_kernel[(m, triton.cdiv(nb, _BLOCKS_PER_PROGRAM))](
            x2, codes, scales, tw.k, nb, x2.stride(0), codes.stride(0), scales.stride(0),
            QMAX=qmax, INT8=dtype == torch.int8, SCALE_FACTOR=factor, B=block, BLOCKS=_BLOCKS_PER_PROGRAM,
            num_warps=4, **launch_options(x2.device),
        )  # fmt: skip
    return codes, scales


@triton.jit
def tile_kernel(
    xq_ptr, xs_ptr, w_ptr, sw_ptr, y_ptr,
    M, N, KX, NB, blocks_per_split,
    stride_xm, stride_xsm, stride_wn, stride_sn, stride_ym, stride_ys, out_ptr, cnt_ptr,
    B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOTS: tl.constexpr, INT8: tl.constexpr,
    USE_WS: tl.constexpr, EVEN: tl.constexpr, EMULATE: tl.constexpr, PDL: tl.constexpr, FIXUP: tl.constexpr,
    TILE_QUANTIZES: tl.constexpr = False, QMAX: tl.constexpr = 127.0, SCALE_FACTOR: tl.constexpr = 1.0,
    TMA: tl.constexpr = False,
):  # fmt: skip
    """y^T [N, M] = W @ xq^T: per activation block one tensor-core dot of K = B over the 8-bit weight bytes and
    codes as they are, its result times the block's activation scale added into the fp32 accumulator; DOTS
    blocks per loop step; the weight's row scale once at the end. Grid: (N tiles, K splits, M tiles); USE_WS
    writes fp32 split partials (summed in-kernel with FIXUP, as `jit.mma_t_kernel` does).
    EVEN: N is a whole number of tiles, KX of blocks and every split of loop steps (no masks on the weight).
    EMULATE: the interpreter's dots, in fp32 (int8: exact, |sum| < 2**24; it multiplies 8-bit operands as raw
    integers otherwise), over fp8 operands passed as int8 bytes.
    TILE_QUANTIZES: xq_ptr is the bf16 / fp16 rows [M, KX] themselves (xs_ptr unused), and each program rounds the
    blocks it multiplies as `quantize_kernel` does (the same codes and scales, bit for bit): no quantizer
    launch, for the price of every program of a K range rounding the same blocks again.
    TMA (EVEN only): w_ptr is a tensor descriptor of the weight bytes [N, KX] with blocks [BLOCK_N, B]; each
    block's weight tile comes by one bulk tensor copy (Hopper's TMA) instead of per-thread loads."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n2 = offs_n[:, None]
    n_ok = n2 < N
    m_row = offs_m[None, :]
    m_ok = m_row < M
    kk = tl.arange(0, B)
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    b_begin = pid_k * blocks_per_split
    b_end = tl.minimum(b_begin + blocks_per_split, NB)
    wait_for_inputs(PDL)
    for b0 in range(b_begin, b_end, DOTS):
        for d in tl.static_range(DOTS):
            b = b0 + d
            k = b * B + kk
            if EVEN:
                if TMA:
                    w = w_ptr.load([pid_n * BLOCK_N, b * B])
                else:
                    w = tl.load(w_ptr + n2 * stride_wn + k[None, :])
                x_ok = m_ok
                s_ok = offs_m < M
            else:
                k_end = tl.minimum(KX, b_end * B)  # the split's end
                w = tl.load(w_ptr + n2 * stride_wn + k[None, :], mask=n_ok & (k[None, :] < k_end), other=0.0)
                x_ok = m_ok & (k[:, None] < k_end)
                s_ok = (offs_m < M) & (b + 0 * offs_m < b_end)
            if TILE_QUANTIZES:  # this block of the bf16 / fp16 rows, in the weight's K order, rounded here
                xf = tl.load(
                    xq_ptr + m_row * stride_xm + b * B + permuted_k(kk)[:, None], mask=x_ok, other=0.0
                )
                xt, sx = _block_codes(xf, 0, QMAX, INT8)
                sx = sx * SCALE_FACTOR
            else:
                xt = tl.load(xq_ptr + m_row * stride_xm + k[:, None], mask=x_ok, other=0.0)
                sx = tl.load(xs_ptr + offs_m * stride_xsm + b, mask=s_ok, other=0.0)
            if EMULATE:
                if not INT8:  # the interpreter reads fp8 operands as their bytes (it cannot mask fp8 loads)
                    w = w.to(tl.float8e4nv, bitcast=True)
                    if not TILE_QUANTIZES:
                        xt = xt.to(tl.float8e4nv, bitcast=True)
                part = tl.dot(w.to(tl.float32), xt.to(tl.float32))
            elif INT8:
                part = tl.dot(w, xt, out_dtype=tl.int32).to(tl.float32)
            else:
                part = tl.dot(w, xt)
            acc += part * sx[None, :]
    sw = tl.load(sw_ptr + offs_n * stride_sn, mask=offs_n < N, other=0.0).to(tl.float32)
    store_t_tile(
        acc * sw[:, None], y_ptr, out_ptr, cnt_ptr, m_row, n2, n_ok & m_ok, pid_k, stride_ym, stride_ys, USE_WS,
        FIXUP, BLOCK_N, BLOCK_M,
    )  # fmt: skip


def reference_quantize(x: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantizer's twin in K order: x [M, K] -> (codes as fp32 values [M, NB * B], scales [M, NB] without the
    layout's scale factor), rounded exactly as `quantize_kernel` rounds them."""
    dtype, qmax, _ = FORMATS[fmt]
    block = act_block(fmt)
    m, k = x.shape
    v = torch.nn.functional.pad(x.float(), (0, -k % block)).view(m, -1, block)
    scale = torch.clamp(v.abs().amax(-1), min=1e-20) / qmax
    q = v / scale[:, :, None]
    q = torch.clamp(torch.round(q), -qmax, qmax) if dtype == torch.int8 else q.to(dtype).float()
    return q.reshape(m, -1), scale


def reference(x: torch.Tensor, tw: TritonWeight) -> torch.Tensor:
    """The twin: each block of each row rounded as the quantizer rounds it, times the weight decoded from its
    portable codes (read back from the device layout: no Triton kernel, so it runs wherever the tensors are),
    in fp32."""
    from xpullm.kernels.triton.layout import unpack_weight

    dtype = FORMATS[tw.format][0]
    q, scale = reference_quantize(x[..., : tw.k], tw.format)
    block = act_block(tw.format)
    rows = (q.view(q.shape[0], -1, block) * scale[:, :, None]).reshape(q.shape[0], -1)[:, : tw.k]
    parts = unpack_weight(tw)  # one scale per row (`supports`)
    weight = parts["codes"][:, : tw.k].view(dtype).float() * parts["scales"].float()
    return rows @ weight.t()
