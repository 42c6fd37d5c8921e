"""The fused CPU layer calls (`norm_linear`, `out_mlp`), the native SwiGLU and the activation quantiser, against
their twins on fresh random shapes, on every SIMD path the CPU has: the fused calls are bit for bit the unfused
native calls one after the other, the quantiser's codes are exactly PyTorch's, SwiGLU is within float rounding of
PyTorch's. The amx paths (real, and emulated on any AVX-512 CPU) take every row count here (amx_min_rows 1)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from xpullm.formats import get_format
from xpullm.kernels import cpu_native

CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(
    cpu_native.library() is None, reason="no C compiler / AVX2 here: the native kernels are not built"
)
PATHS = cpu_native.checked_paths() or ["avx2"]
KERNELS = {
    "sym_int4": cpu_native.CpuNativeInt4Kernel(),
    "asym_int4": cpu_native.CpuNativeInt4Kernel(),
    "nf4": cpu_native.CpuNativeCodebookKernel(),
    "fp4": cpu_native.CpuNativeCodebookKernel(),
    "sym_int8": cpu_native.CpuNativeInt8Kernel(),
}


@contextlib.contextmanager
def _on(path: str) -> Iterator[None]:
    """Path `path` forced, with the amx paths taking calls of any row count (the shapes here are short)."""
    with cpu_native.forced_isa(path), cpu_native.amx_min_rows(1):
        yield


def _gen() -> tuple[torch.Generator, int]:
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs every run; the seed is in the failure
    return torch.Generator().manual_seed(seed), seed


def _weight(fmt: str, n: int, k: int, g: torch.Generator) -> tuple[object, cpu_native.NativeTiledState]:
    kernel = KERNELS[fmt]
    qw = get_format(fmt).quantize(torch.randn(n, k, generator=g) * 0.05)
    if not kernel.supports(qw):
        pytest.skip(f"{kernel.name} does not take {fmt} {n}x{k} (the registry picks another kernel)")
    return kernel, kernel.prepare(qw, CPU)


@pytest.mark.parametrize("path", PATHS)
def test_quantiser_codes_are_pytorchs_exactly(path: str) -> None:
    g, seed = _gen()
    m, k = int(torch.randint(1, 12, (), generator=g)), 32 * int(torch.randint(1, 50, (), generator=g))
    x = torch.randn(m, k, generator=g) * torch.rand(m, k // 32, 1, generator=g).repeat_interleave(32, 1).view(
        m, k
    )
    x[0, :32] = 0.0  # an all-zero block: scale 0, codes 0
    x = x.bfloat16().float()  # bf16 values put many products exactly on .5: round half to even is exercised
    with _on(path):
        codes, scales, sums = cpu_native.quantize_rows(x)
    blocks = x.view(m, k // 32, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127.0
    want = (blocks * torch.where(d > 0, 1.0 / d, torch.zeros_like(d))).round()
    assert torch.equal(codes.view(m, -1, 32).float(), want), f"seed {seed}"
    assert torch.equal(scales, d[..., 0]), f"seed {seed}"
    assert torch.equal(sums, want.sum(-1).int()), f"seed {seed}"


def test_native_swiglu_is_pytorchs_within_rounding() -> None:
    g, seed = _gen()
    f = int(torch.randint(1, 300, (), generator=g))  # tails shorter than a vector too
    gu = torch.randn(3, 2 * f, generator=g) * 8
    gu[0, :4] = torch.tensor([-120.0, -88.0, 90.0, 0.0])  # past exp's range on both sides, and zero
    gate, up = gu.chunk(2, -1)
    torch.testing.assert_close(
        cpu_native.silu_mul(gu), F.silu(gate) * up, rtol=4e-7, atol=1e-30, msg=f"seed {seed}"
    )


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", list(KERNELS))
def test_norm_linear_is_the_unfused_calls_bit_for_bit(fmt: str, path: str) -> None:
    g, seed = _gen()
    # 100: padded to 128 columns (sym_int8 keeps its width: the kernel takes whole blocks of 32 only)
    widths = (64, 96, 576) if fmt == "sym_int8" else (64, 96, 100, 576)
    hidden = widths[int(torch.randint(0, len(widths), (), generator=g))]
    n = int(torch.randint(1, 160, (), generator=g))  # rows past a multiple of 4 too
    m = int(torch.randint(1, 11, (), generator=g))
    kernel, state = _weight(fmt, n, hidden, g)
    norm = torch.rand(hidden, generator=g) + 0.5
    h, delta = torch.randn(m, hidden, generator=g), torch.randn(m, hidden, generator=g)
    with _on(path):
        residual = h + delta
        want = kernel.matmul(cpu_native.rms_norm(residual, (hidden,), norm, 1e-5), state)
        scratch = cpu_native.LayerScratch.new(m, state.padded_k, 2)
        got = cpu_native.norm_linear(h, delta, norm, 1e-5, cpu_native.linear_desc(state), scratch)
    assert torch.equal(h, residual), f"seed {seed}"
    assert torch.equal(got, want), f"seed {seed}: {(got - want).abs().max()}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4", "nf4", "sym_int8"])
def test_out_mlp_is_the_unfused_calls_bit_for_bit(fmt: str, path: str) -> None:
    g, seed = _gen()
    hidden, width = 96, 64 + 32 * int(torch.randint(0, 3, (), generator=g))
    f = int(torch.randint(40, 100, (), generator=g))  # down's width padded to whole blocks of 32
    if fmt == "sym_int8":
        f = 32 * (f // 32)
    m = int(torch.randint(1, 10, (), generator=g))
    _, o = _weight(fmt, hidden, width, g)
    _, gate_up = _weight(fmt, 2 * f, hidden, g)
    kernel, down = _weight(fmt, hidden, f, g)
    norm = torch.rand(hidden, generator=g) + 0.5
    attn, h = torch.randn(m, width, generator=g), torch.randn(m, hidden, generator=g)
    with _on(path):
        residual = h + kernel.matmul(attn, o)
        gu = kernel.matmul(cpu_native.rms_norm(residual, (hidden,), norm, 1e-5), gate_up)
        want = kernel.matmul(cpu_native.silu_mul(gu), down)
        k_max = max(s.padded_k for s in (o, gate_up, down))
        scratch = cpu_native.LayerScratch.new(m, k_max, 2 * f)
        descs = [cpu_native.linear_desc(s) for s in (o, gate_up, down)]
        got = cpu_native.out_mlp(attn, h, descs[0], norm, 1e-5, descs[1], descs[2], scratch)
    assert torch.equal(h, residual), f"seed {seed}"
    assert torch.equal(got, want), f"seed {seed}: {(got - want).abs().max()}"
    # And near the dense fp32 arithmetic (the kernels' int8 activation rounding apart).
    dense = lambda s, x: x @ s.dequantize_rows(torch.arange(s.shape[0]), torch.float32).T  # noqa: E731
    r = F.rms_norm(h, (hidden,), norm, 1e-5)
    gate, up = dense(gate_up, r).chunk(2, -1)
    ref = dense(down, F.silu(gate) * up)
    assert ((got - ref).norm() / ref.norm()).item() < 0.05, f"seed {seed}"
