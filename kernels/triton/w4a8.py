"""4-bit weights times 8-bit activations on int8 tensor cores (path `w4a8`, sym_int4, batched decode and prefill).

The bf16 tiles (`jit.mma_t_kernel`) turn every 4-bit code into a bf16 before the tensor-core dot: about one
instruction per weight, 16 bits of register per decoded weight, and a K = 16 bf16 MMA. Here the codes stay
integers. A word's eight two's-complement nibbles (stored code c = q + 8, so c ^ 8 is q's nibble) become two
words of four int8 bytes with three ALU ops - `t = w ^ 0x88888888`, `hi = t & 0xF0F0F0F0`,
`lo = (t << 4) & 0xF0F0F0F0` - each byte being 16 q exactly. Those bytes go to an int8 x int8 -> int32 dot
(twice the bf16 rate, half the register file per decoded weight) with the activations quantized to int8.

Activations: `quantize_kernel` writes each group of `ACT_GROUP` = 128 elements (the K of one step of dots) in
the order the weight bytes come out of the decode: position f = 64 h + 4 w + b of a group holds the element that
nibble plane 2 b + h of the group's word w carries (`tile_order`), so each half (h) is one contiguous 64-byte run
per row, the activation tile of one int8 dot. Each half has its own scale (absmax / 127, round half to even):
64 elements per scale cost half the perplexity of 128 on the packaged model (`bench/w8a8_quality.py --set
w4a8`), for one more int32 -> fp32 scaling per dot.

Each dot's int32 result is scaled by its half's activation scale, the pair by the weight's group scale / 16,
and summed in fp32. Weights qualify when every scale group covers whole dots: group 128, 256, ... or per-channel. The numbers
differ from the weight-only paths by the activation rounding; the twin `reference` models the kernel exactly up
to the fp32 summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from xpullm.kernels.triton.configs import SINGLE_GROUP_WORDS
from xpullm.kernels.triton.jit import round_half_even, store_t_tile
from xpullm.kernels.triton.layout import TritonWeight, _deinterleave_rows
from xpullm.kernels.triton.pdl import launch_options, wait_for_inputs

__all__ = ["ACT_GROUP", "quantize", "reference", "reference_quantize", "supports", "tile_order"]

ACT_GROUP = 128  # activation elements per scale = K of one int8 dot
_DOT_WORDS = ACT_GROUP // 8  # 4-bit words per dot
_GROUPS_PER_PROGRAM = 8  # activation groups one quantizer program handles
_FLIP = tl.constexpr(-2004318072)  # 0x88888888: every nibble's top bit (code c -> two's complement c - 8)
_HIGH = tl.constexpr(-252645136)  # 0xF0F0F0F0: every byte's high nibble


def supports(tw: TritonWeight, x_dtype: torch.dtype) -> bool:
    """Whether `w4a8` can run `tw` with activations of `x_dtype`: sym_int4 whose scale groups hold whole
    128-element dots, bf16 / fp16 / fp32 activations."""
    return (
        tw.format == "sym_int4"
        and (tw.group_words == SINGLE_GROUP_WORDS or tw.group_words % _DOT_WORDS == 0)
        and tw.kx % ACT_GROUP == 0
        and x_dtype in (torch.bfloat16, torch.float16, torch.float32)
    )


@triton.jit
def tile_order(f):
    """The element (of its 128-element group) that position f of a quantized group holds: f = 64 h + 4 w + b
    pairs with byte b of word w's `hi` (h = 1) or `lo` (h = 0) decode, i.e. nibble 2 b + h of word w, which
    carries element 32 (w // 4) + 4 (2 b + h) + w % 4 (layout.py: word l of a 4-word block holds element 4 i + l
    in nibble i)."""
    h = f // 64
    w = (f % 64) // 4
    b = f % 4
    return 32 * (w // 4) + 4 * (2 * b + h) + w % 4


@triton.jit
def quantize_kernel(
    x_ptr, q_ptr, s_ptr, K, NGX, stride_xm, stride_qm, stride_sm, GROUPS: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """x [M, K] -> int8 codes [M, NGX * 128] in `tile_order` per group and fp32 scales [M, 2 NGX], one per half
    group of 64 positions (absmax / 127; 0 for an all-zero half). Past K the activations read as zero.
    Grid: (rows, group chunks of GROUPS)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
    g_ok = g < NGX
    f = tl.arange(0, 128)
    e = g[:, None] * 128 + tile_order(f)[None, :]
    x = tl.reshape(
        tl.load(x_ptr + row * stride_xm + e, mask=e < K, other=0.0).to(tl.float32), (GROUPS, 2, 64)
    )
    scale = tl.div_rn(tl.max(tl.abs(x), axis=2), 127.0)  # [GROUPS, 2]
    # IEEE division, then round half to even, as the twin does
    v = tl.div_rn(x, tl.where(scale > 0, scale, 1.0)[:, :, None])
    q = tl.reshape(round_half_even(v).to(tl.int8), (GROUPS, 128))
    tl.store(q_ptr + row * stride_qm + g[:, None] * 128 + f[None, :], q, mask=g_ok[:, None])
    half = 2 * g[:, None] + tl.arange(0, 2)[None, :]
    tl.store(s_ptr + row * stride_sm + half, scale, mask=g_ok[:, None])


@triton.jit
def _nibbles(b, HIGH: tl.constexpr, EMULATE: tl.constexpr):
    """Weight bytes (int8, two 4-bit codes each) -> 16 x the signed code of each byte's high (HIGH) or low
    nibble, as int8. Byte-wise, so four bytes go through one 32-bit `lop3` (and a shift for the low nibbles); its
    truth table 0x28 is (a ^ b) & c, the bytes a, b = 0x88.., c = 0xF0.. ."""
    if EMULATE:  # the interpreter runs no PTX
        t = b ^ -120  # 0x88: the codes' top bits, c -> c - 8 in two's complement
        if HIGH:
            return t & -16  # 0xF0
        return t << 4
    if HIGH:
        asm: tl.constexpr = "lop3.b32 $0, $1, 0x88888888, 0xF0F0F0F0, 0x28;"  # (a ^ b) & c
    else:
        asm: tl.constexpr = "{ .reg .b32 t; shl.b32 t, $1, 4; lop3.b32 $0, t, 0x88888888, 0xF0F0F0F0, 0x28; }"
    return tl.inline_asm_elementwise(asm, "=r,r", [b], dtype=tl.int8, is_pure=True, pack=4)


@triton.jit
def _scales(
    s_ptr, xs_ptr, offs_n, offs_m, kw, kw_end, N, M, stride_sn, stride_xsm, GROUP_WORDS: tl.constexpr
):
    """The scales of the dot at word `kw`: the weight's group scale / 16 (the bytes carry 16 q) per row [BN], the
    activations' two half scales per row [BM]; zeros past `kw_end`."""
    sw = tl.load(
        s_ptr + offs_n * stride_sn + kw // GROUP_WORDS,
        mask=(offs_n < N) & (kw + 0 * offs_n < kw_end),
        other=0.0,
    )
    s_ok = (offs_m < M) & (kw + 0 * offs_m < kw_end)
    sx = xs_ptr + offs_m * stride_xsm + kw // 8  # the group's two half scales
    sx_lo = tl.load(sx, mask=s_ok, other=0.0)
    sx_hi = tl.load(sx + 1, mask=s_ok, other=0.0)
    return sw.to(tl.float32) * 0.0625, sx_lo, sx_hi


@triton.jit
def mma_kernel(
    xq_ptr, xs_ptr, wb_ptr, s_ptr, y_ptr,
    M, N, KW, words_per_split,
    stride_xm, stride_xsm, stride_wn, stride_sn, stride_ym, stride_ys, out_ptr, cnt_ptr,
    GROUP_WORDS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOTS: tl.constexpr,
    USE_WS: tl.constexpr, EVEN: tl.constexpr, DOT_I32: tl.constexpr, PDL: tl.constexpr, FIXUP: tl.constexpr,
    PREFETCH: tl.constexpr = False,
):  # fmt: skip
    """y^T [N, M] = W @ xq^T on int8 tensor cores, per 128-element group two dots of K = 64 (the low and the high
    nibbles), DOTS groups per loop step. Grid: (N tiles, K splits, M tiles); USE_WS writes fp32 split partials
    (summed in-kernel with FIXUP, as `jit.mma_t_kernel` does). PREFETCH: each dot's scales are loaded one dot
    ahead, in registers (Triton pipelines only the dots' operands through shared memory).
    DOT_I32: the interpreter's int8 dot, spelled as an int32 one."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n2 = offs_n[:, None]
    n_ok = n2 < N
    m_row = offs_m[None, :]
    m_ok = m_row < M
    jb = tl.arange(0, 64)[None, :]
    f = tl.arange(0, 64)[:, None]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    kw_begin = pid_k * words_per_split
    kw_end = tl.minimum(kw_begin + words_per_split, KW)
    wait_for_inputs(PDL)
    if PREFETCH:
        sw_next, sxl_next, sxh_next = _scales(
            s_ptr, xs_ptr, offs_n, offs_m, kw_begin, kw_end, N, M, stride_sn, stride_xsm, GROUP_WORDS
        )
    for kw0 in range(kw_begin, kw_end, 16 * DOTS):
        for d in tl.static_range(DOTS):
            kw = kw0 + 16 * d
            # the dot's 16 words as 64 bytes: byte b of word w at position 4 w + b (`tile_order`'s f for h = 0, 1)
            if EVEN:
                wb = tl.load(wb_ptr + n2 * stride_wn + 4 * kw + jb)
            else:
                wb = tl.load(
                    wb_ptr + n2 * stride_wn + 4 * kw + jb, mask=n_ok & (kw + jb // 4 < kw_end), other=0
                )
            x_ok = m_ok & (kw + f // 4 < kw_end)
            x_lo = tl.load(xq_ptr + m_row * stride_xm + kw * 8 + f, mask=x_ok, other=0)
            x_hi = tl.load(xq_ptr + m_row * stride_xm + kw * 8 + 64 + f, mask=x_ok, other=0)
            lo = _nibbles(wb, False, DOT_I32)
            hi = _nibbles(wb, True, DOT_I32)
            if DOT_I32:  # the interpreter: exact in fp32 (|sum| < 2**24)
                d_lo = tl.dot(lo.to(tl.float32), x_lo.to(tl.float32))
                d_hi = tl.dot(hi.to(tl.float32), x_hi.to(tl.float32))
            else:
                d_lo = tl.dot(lo, x_lo, out_dtype=tl.int32).to(tl.float32)
                d_hi = tl.dot(hi, x_hi, out_dtype=tl.int32).to(tl.float32)
            if PREFETCH:
                sw, sx_lo, sx_hi = sw_next, sxl_next, sxh_next
                sw_next, sxl_next, sxh_next = _scales(
                    s_ptr, xs_ptr, offs_n, offs_m, kw + 16, kw_end, N, M, stride_sn, stride_xsm, GROUP_WORDS
                )
            else:
                sw, sx_lo, sx_hi = _scales(
                    s_ptr, xs_ptr, offs_n, offs_m, kw, kw_end, N, M, stride_sn, stride_xsm, GROUP_WORDS
                )
            part = d_lo * sx_lo[None, :] + d_hi * sx_hi[None, :]
            acc += part * sw[:, None]
    store_t_tile(
        acc, y_ptr, out_ptr, cnt_ptr, m_row, n2, n_ok & m_ok, pid_k, stride_ym, stride_ys, USE_WS, FIXUP,
        BLOCK_N, BLOCK_M,
    )  # fmt: skip


def quantize(x2: torch.Tensor, kx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation rows x2 [M, K] (K <= kx) -> (int8 codes [M, kx] in `tile_order`, fp32 scales [M, kx / 64]: one
    per half group)."""
    m, k = x2.shape
    ngx = kx // ACT_GROUP
    q = torch.empty((m, kx), dtype=torch.int8, device=x2.device)
    s = torch.empty((m, 2 * ngx), dtype=torch.float32, device=x2.device)
    if m:
        grid = (m, triton.cdiv(ngx, _GROUPS_PER_PROGRAM))
        quantize_kernel[grid](
            x2, q, s, k, ngx, x2.stride(0), q.stride(0), s.stride(0),
            GROUPS=_GROUPS_PER_PROGRAM, **launch_options(x2.device),
        )  # fmt: skip
    return q, s


def _order(device: torch.device) -> torch.Tensor:
    f = torch.arange(ACT_GROUP, device=device)
    h, w, b = f // 64, (f % 64) // 4, f % 4
    return 32 * (w // 4) + 4 * (2 * b + h) + w % 4


def reference_quantize(x2: torch.Tensor, kx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The twin of `quantize`, in torch (same IEEE division, round half to even)."""
    m, k = x2.shape
    xp = torch.nn.functional.pad(x2.float(), (0, kx - k)).reshape(m, kx // ACT_GROUP, ACT_GROUP)
    xp = xp[:, :, _order(x2.device)].reshape(m, -1, 64)  # half groups of 64 positions
    scale = xp.abs().amax(dim=2) / 127.0
    q = torch.round(xp / torch.where(scale > 0, scale, 1.0)[:, :, None]).to(torch.int8)
    return q.reshape(m, kx), scale


def reference(x2: torch.Tensor, tw: TritonWeight) -> torch.Tensor:
    """The twin of the `w4a8` product in fp32: the activations rounded as `quantize` does, the int4 codes, each
    128-element group's exact integer dot scaled by both group scales (summed in fp32, another order)."""
    q, sx = reference_quantize(x2, tw.kx)
    codes = _deinterleave_rows(tw.words, tw.planes).to(torch.float64) - 8.0  # [N, KX], element order
    m, n, halves = x2.shape[0], tw.n, tw.kx // 64
    order = _order(x2.device)
    w_halves = codes.view(n, -1, ACT_GROUP)[:, :, order].reshape(
        n, halves, 64
    )  # in the codes' position order
    dots = torch.einsum("mhk,nhk->mnh", q.view(m, halves, 64).to(torch.float64), w_halves)
    groups = torch.arange(halves, device=x2.device) // 2 * _DOT_WORDS // tw.group_words
    sw = tw.scales.to(torch.float64)[:, groups]  # [N, halves]
    return (dots * sw[None] * sx.to(torch.float64)[:, None, :]).sum(dim=2).float()
