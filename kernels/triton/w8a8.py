"""8-bit weights times 8-bit activations on the vendor GEMM (path `w8a8`): fp8_e4m3 through `torch._scaled_mm`
(fp8 tensor cores, Hopper / Ada) and sym_int8 through `torch._int_mm` (int8 tensor cores).

Weight-only 8-bit tiles decode every weight to bf16 before the MMA and read half of bf16's bytes at best; a batch
of 8-256 rows is then still bound by that decode. With the activation rows quantized too (one scale per row,
absmax / 448 for e4m3, absmax / 127 for int8 - the per-token recipe of fp8 / int8 serving stacks), both operands
go to the tensor cores as they are and cuBLAS reads the weight once. The weights are used in place: the Triton
layout's 8-bit words are already an [N, KX] byte matrix (sym_int8 as two's complement bytes) whose K order is
permuted inside each block of 16 (byte `4 l + i` holds element `4 i + l`, layout.py); the quantizer writes the
activations in the same permuted order, so the dot products are unchanged.

Only per-channel weights (one scale per output row) qualify: a grouped scale cannot leave the K sum. The numbers
differ from the weight-only paths by the activation rounding (the twin, `reference`, models it exactly).
"""

from __future__ import annotations

import functools
import warnings

import torch
import triton
import triton.language as tl

from xpullm.kernels.triton.configs import SINGLE_GROUP_WORDS
from xpullm.kernels.triton.layout import TritonWeight

__all__ = ["FORMATS", "permuted_k", "quantize_rows", "reference", "round_e4m3", "run", "supports"]

# format -> (the activations' dtype, its largest finite value, the weight scale's factor back to the true scale)
FORMATS: dict[str, tuple[torch.dtype, float, float]] = {
    "fp8_e4m3": (torch.float8_e4m3fn, 448.0, 1.0 / 256.0),  # layout.py: e4m3 scales carry its decode's 2**8
    "sym_int8": (torch.int8, 127.0, 1.0),
}
_INT_MM_MIN_ROWS = 32  # torch._int_mm on CUDA wants more than 16 rows; cuBLAS tiles like a multiple of 16
_BLOCK = 1024  # activation elements per loop step of the quantizer
_EPILOGUE_BLOCK = 1024  # output columns per program of the int8 epilogue


def supports(tw: TritonWeight, x_dtype: torch.dtype) -> bool:
    """Whether `w8a8` can run `tw` with activations of `x_dtype`: an 8-bit format with one scale per output row,
    bf16 / fp16 activations, N a multiple of 16, and a device whose vendor GEMM takes the format."""
    return (
        tw.format in FORMATS
        and tw.group_words == SINGLE_GROUP_WORDS
        and x_dtype in (torch.bfloat16, torch.float16)
        and tw.n % 16 == 0
        and tw.kx % 16 == 0
        and _device_takes(tw.device, tw.format)
    )


def _device_takes(device: torch.device, fmt: str) -> bool:
    if device.type == "cpu":
        return True  # ATen's CPU kernels run both ops (the tests' path)
    if device.type != "cuda":
        return False
    return _probe(device.index if device.index is not None else torch.cuda.current_device(), fmt)


@functools.cache
def _probe(index: int, fmt: str) -> bool:
    """One tiny product on the card, once per (card, format): a card or build without the op (fp8 before
    compute capability 8.9) declines here, with a warning, instead of failing inside a model."""
    device = torch.device("cuda", index)
    if fmt == "fp8_e4m3" and torch.cuda.get_device_capability(device) < (8, 9):
        return False
    a = torch.zeros((_INT_MM_MIN_ROWS, 32), device=device).to(FORMATS[fmt][0])
    b = torch.zeros((16, 32), device=device).to(FORMATS[fmt][0])
    ones = torch.ones((_INT_MM_MIN_ROWS, 1), device=device)
    try:
        _product(
            a, b, ones, ones[:16], torch.empty((_INT_MM_MIN_ROWS, 16), dtype=torch.bfloat16, device=device)
        )
    except RuntimeError as exc:
        warnings.warn(f"xpullm triton: w8a8 off for {fmt} on {device}: {exc}", stacklevel=2)
        return False
    return True


@triton.jit
def permuted_k(p):
    """The element that position p of an activation row holds in the 8-bit weights' K order: 4 i + l at position
    4 l + i of each block of 16 (layout.py)."""
    return (p // 16) * 16 + (p % 4) * 4 + (p % 16) // 4


@triton.jit
def round_e4m3(v):
    """v (|v| <= 448) rounded to the nearest e4m3 value, ties to even, as an fp32: spacing 2**(e - 3) in binade
    e, 2**-9 below 2**-6 (subnormals). Done by hand because the Triton interpreter's fp32 -> fp8 conversion loses
    a rounding carry into the exponent (120.5 -> 64); the GPU's conversion then has nothing left to round. Zero
    keeps the sign of v."""
    e = tl.maximum(((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    r = ((v * inv + 12582912.0) - 12582912.0) * ulp  # 1.5 * 2**23: rounds to an integer, ties to even
    return tl.where(r == 0.0, v * 0.0, r)  # a negative value that rounds to zero is -0, as a conversion gives


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, K, KX, stride_xm, stride_qm, QMAX: tl.constexpr, INT8: tl.constexpr,
    SCALE_FACTOR: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """One activation row: its absmax, then every element / (absmax / QMAX) rounded to the 8-bit type, written
    in the weight's permuted K order (position 4 l + i of a block of 16 takes element 4 i + l); zero past K.
    The stored scale is absmax / QMAX x SCALE_FACTOR (a power of two: exact), which carries the weight scales'
    factor, so the GEMM takes the weight's stored scales as they are."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.math.div_rn(tl.maximum(tl.max(amax, axis=0), 1e-20), QMAX)
    tl.store(s_ptr + row, scale * SCALE_FACTOR)
    src = permuted_k(offs)  # the element each position holds
    for k0 in range(0, KX, BLOCK):
        e = k0 + src
        x = tl.load(x_ptr + row * stride_xm + e, mask=e < K, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, scale)
        if INT8:
            q = tl.minimum(tl.maximum(tl.floor(v + 0.5), -QMAX), QMAX).to(tl.int8)
        else:
            q = round_e4m3(v).to(tl.float8e4nv)  # exact: the value is already an e4m3 number
        tl.store(q_ptr + row * stride_qm + k0 + offs, q, mask=k0 + offs < KX)


def quantize_rows(
    x2: torch.Tensor, tw: TritonWeight, rows: int | None = None, scale_factor: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [M, >= K] -> (codes [rows, KX] in the format's activation dtype, in the weight's K order; scales fp32
    [rows, 1] = absmax / qmax x `scale_factor`, a power of two). Rows past M (padding for the GEMM) are zero
    with scale zero."""
    dtype, qmax, _ = FORMATS[tw.format]
    m = x2.shape[0]
    rows = max(rows or m, m)
    codes = torch.empty((rows, tw.kx), dtype=dtype, device=x2.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=x2.device)
    if rows > m:
        codes[m:].view(torch.int8).zero_()
        scales[m:].zero_()
    if m:
        _quantize_rows_kernel[(m,)](
            x2, codes, scales, tw.k, tw.kx, x2.stride(0), codes.stride(0),
            QMAX=qmax, INT8=dtype == torch.int8, SCALE_FACTOR=scale_factor, BLOCK=_BLOCK, num_warps=4,
        )  # fmt: skip
    return codes, scales


@triton.jit
def _scale_int32_kernel(
    acc_ptr, sx_ptr, sw_ptr, out_ptr, N, stride_am, stride_om, BLOCK_N: tl.constexpr
):  # fmt: skip
    """out[m, n] = acc[m, n] x sx[m] x sw[n] in out's dtype: the int8 GEMM's epilogue in one pass."""
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = offs < N
    acc = tl.load(acc_ptr + row * stride_am + offs, mask=ok, other=0).to(tl.float32)
    sw = tl.load(sw_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = acc * tl.load(sx_ptr + row) * sw
    tl.store(out_ptr + row * stride_om + offs, y.to(out_ptr.dtype.element_ty), mask=ok)


def _product(
    codes: torch.Tensor, w: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """out [M, N] = codes [>= M, KX] @ w [N, KX]^T, scaled by sx [>= M, 1] and sw [N, 1] (its stored dtype)."""
    m = out.shape[0]
    if codes.dtype == torch.int8:
        acc = torch._int_mm(codes, w.t())  # int32 [rows, N]; rows past M are padding
        _scale_int32_kernel[(m, triton.cdiv(out.shape[1], _EPILOGUE_BLOCK))](
            acc, sx, sw, out, out.shape[1], acc.stride(0), out.stride(0), BLOCK_N=_EPILOGUE_BLOCK, num_warps=4
        )
        return out
    return torch._scaled_mm(
        codes[:m], w.t(), scale_a=sx[:m], scale_b=sw.view(1, -1), out_dtype=out.dtype, out=out
    )


def run(x2: torch.Tensor, tw: TritonWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x2 [M, KX] @ W^T with the rows quantized to the weight's 8-bit type (`supports` must hold):
    two launches for fp8 (the quantizer, cuBLAS), three for int8 (and the scaling epilogue)."""
    if not supports(tw, x2.dtype):
        raise ValueError(
            f"w8a8 runs fp8_e4m3 / sym_int8 weights with one scale per row and bf16 / fp16 activations on a device "
            f"whose GEMM takes them; got {tw.format} (group {tw.group_size}), {x2.dtype}, {tw.device}"
        )
    m = x2.shape[0]
    if out is None:
        out = torch.empty((m, tw.n), dtype=x2.dtype, device=x2.device)
    int_mm = tw.format == "sym_int8" and tw.device.type == "cuda"
    rows = -(-max(m, _INT_MM_MIN_ROWS) // 16) * 16 if int_mm else m
    dtype, _, factor = FORMATS[tw.format]
    codes, sx = quantize_rows(x2, tw, rows, scale_factor=factor)
    return _product(codes, tw.words.view(dtype), sx, tw.scales, out)  # the words' bytes: [N, KX]


def reference(x: torch.Tensor, tw: TritonWeight) -> torch.Tensor:
    """The twin: each row rounded as the quantizer rounds it, times the weight decoded from its portable codes
    (read back from the device layout: no Triton kernel, so it runs wherever the tensors are), in fp32."""
    from xpullm.kernels.triton.layout import unpack_weight

    dtype, qmax, _ = FORMATS[tw.format]
    xf = x.float()
    scale = torch.clamp(xf.abs().amax(-1, keepdim=True), min=1e-20) / qmax
    v = xf / scale
    q = torch.clamp(torch.floor(v + 0.5), -qmax, qmax) if dtype == torch.int8 else v.to(dtype).float()
    parts = unpack_weight(tw)  # one scale per row (`supports`)
    weight = parts["codes"][:, : tw.k].view(dtype).float() * parts["scales"].float()
    return (q * scale) @ weight.t()
