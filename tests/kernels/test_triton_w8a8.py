"""The `w8a8` path (8-bit weights x per-token 8-bit activations on the vendor GEMM) against its twin.

Twin (`w8a8.reference`): each activation row rounded the way the quantizer rounds it (absmax / 448 to e4m3, ties
to even; absmax / 127 to int8, halves up), times the dequantized weight in fp32. The quantizer's codes must equal
the twin's bit for bit, in the weight's permuted K order; the product must equal the twin up to the bf16 output.
Runs on a CUDA GPU (cuBLAS fp8 / int8) and on CPU under `TRITON_INTERPRET=1` (ATen's CPU kernels), which
`make test` runs.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not INTERPRET:
    pytest.skip(
        "no CUDA GPU; set TRITON_INTERPRET=1 to run these kernels in Triton's CPU interpreter",
        allow_module_level=True,
    )

from xpullm.formats import get_format  # noqa: E402
from xpullm.kernels.triton import LaunchConfig, pack_weight, run, w8a8  # noqa: E402
from xpullm.kernels.triton.configs import candidates, valid  # noqa: E402
from xpullm.kernels.triton.launch import _prepare_x, dequantize  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu
FORMATS = ("fp8_e4m3", "sym_int8")


def _weight(fmt: str, n: int, k: int, group: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[0, : min(k, 8)] = 0.0  # a few exact zeros, and one large weight per row set
    w[:, k // 2] *= 20
    return pack_weight(get_format(fmt).quantize(w, group), DEVICE)


def _rows(m: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 4
    if m > 1:
        x[1] = 0.0  # an all-zero row: scale floor, zero codes
    return x.to(device=DEVICE, dtype=torch.bfloat16)


def _shapes(count: int, seed: int) -> list[tuple[int, int, int]]:
    """Random (N, K, M): N a multiple of 16, K ragged (padding to the layout's 64-element rows), M 1..70."""
    rnd = random.Random(seed)
    big = 1 if INTERPRET else 4
    return [
        (16 * rnd.randint(1, 6 * big), rnd.randint(8, 400 * big), rnd.randint(1, 70)) for _ in range(count)
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantizer_writes_the_twins_codes_in_the_weights_k_order(fmt: str) -> None:
    dtype, qmax, _ = w8a8.FORMATS[fmt]
    for n, k, m in _shapes(4, seed=1):
        tw = _weight(fmt, n, k)
        x = _rows(m, k, seed=n + k)
        codes, scales = w8a8.quantize_rows(_prepare_x(x, tw), tw, rows=m + 3)
        xf = x.float().cpu()
        want_scales = torch.clamp(xf.abs().amax(-1, keepdim=True), min=1e-20) / qmax
        v = torch.nn.functional.pad(xf / want_scales, (0, tw.kx - k))
        want = (
            torch.clamp(torch.floor(v + 0.5), -qmax, qmax).to(dtype) if dtype == torch.int8 else v.to(dtype)
        )
        # position 4 l + i of each block of 16 holds element 4 i + l, as the weight's words do
        want = want.view(m, -1, 4, 4).transpose(-1, -2).reshape(m, tw.kx)
        assert torch.equal(scales[:m].cpu(), want_scales), (fmt, n, k, m)
        assert torch.equal(codes[:m].cpu().view(torch.uint8), want.view(torch.uint8)), (fmt, n, k, m)
        assert not codes[m:].view(torch.uint8).any() and not scales[m:].any()  # padding rows are zero


@pytest.mark.parametrize("fmt", FORMATS)
def test_product_matches_its_twin_over_random_shapes(fmt: str) -> None:
    for n, k, m in _shapes(5, seed=2) + [(64, 4096, 16)] * (not INTERPRET):
        tw = _weight(fmt, n, k, seed=n)
        x = _rows(m, k, seed=m)
        assert valid(LaunchConfig("w8a8"), tw, x.dtype)
        y = run(_prepare_x(x, tw), tw, LaunchConfig("w8a8"))
        assert y.shape == (m, n) and y.dtype == torch.bfloat16
        ref = w8a8.reference(x.cpu(), _cpu(tw))
        scale = ref.abs().max().item()
        # the twin is exact up to fp32 summation order; the product comes back in bf16 (8 significant bits)
        torch.testing.assert_close(
            y.float().cpu(), ref, rtol=2**-7, atol=2**-8 * scale, msg=f"{fmt} {n}x{k} m={m}"
        )
        # and it is the weight-only product up to the activations' rounding, not something else
        a16 = x.float().cpu() @ dequantize(tw, torch.float32).cpu().t()  # decoded where the weight is
        bound = (0.07 if fmt == "fp8_e4m3" else 0.01) * scale
        assert (ref - a16).abs().max().item() < bound


def _cpu(tw):
    from dataclasses import replace

    if tw.device.type == "cpu":
        return tw
    return replace(tw, words=tw.words.cpu(), scales=tw.scales.cpu(), lut=tw.lut.cpu())


def test_out_buffer_is_filled_and_returned() -> None:
    tw = _weight("sym_int8", 32, 96)
    x = _rows(5, 96, seed=3)
    out = torch.full((5, 32), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    y = run(_prepare_x(x, tw), tw, LaunchConfig("w8a8"), out=out)
    assert y is out and not torch.isnan(out).any()


def test_grouped_weights_and_float32_rows_are_declined_with_the_reason() -> None:
    grouped = _weight("sym_int8", 32, 128, group=32)
    per_row = _weight("fp8_e4m3", 32, 128)
    assert not w8a8.supports(grouped, torch.bfloat16)  # a group scale cannot leave the K sum
    assert not w8a8.supports(per_row, torch.float32)  # fp32 callers asked for exact-as-asked numerics
    assert not w8a8.supports(_weight("sym_int4", 32, 128, group=32), torch.bfloat16)
    with pytest.raises(ValueError, match="one scale per row"):
        run(_prepare_x(_rows(2, 128, 0), grouped), grouped, LaunchConfig("w8a8"))
    pool = candidates("cuda", grouped, 16, torch.bfloat16)
    assert pool and all(c.path != "w8a8" for c in pool)


def test_tuner_times_w8a8_only_when_asked_and_int8_only_with_all(monkeypatch) -> None:
    fp8, int8 = _weight("fp8_e4m3", 32, 128), _weight("sym_int8", 32, 128)
    monkeypatch.delenv("XPULLM_TRITON_W8A8", raising=False)  # off until the GPU tests have passed
    assert all(c.path != "w8a8" for c in candidates("cuda", fp8, 16, torch.bfloat16))
    monkeypatch.setenv("XPULLM_TRITON_W8A8", "fp8")
    for m in (1, 16, 512):
        assert LaunchConfig("w8a8") in candidates("cuda", fp8, m, torch.bfloat16)
    assert LaunchConfig("w8a8") not in candidates("cuda", int8, 16, torch.bfloat16)  # quality: its own switch
    monkeypatch.setenv("XPULLM_TRITON_W8A8", "all")
    assert LaunchConfig("w8a8") in candidates("cuda", int8, 16, torch.bfloat16)
    monkeypatch.setenv("XPULLM_TRITON_W8A8", "off")
    assert all(c.path != "w8a8" for c in candidates("cuda", fp8, 16, torch.bfloat16))
