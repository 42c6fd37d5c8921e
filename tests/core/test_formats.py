"""Every format: quantize -> dequantize stays within the format's documented per-element bound; packing round trips."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xpullm.errors import InvalidGroupSize, UnsupportedFormat
from xpullm.formats import PER_CHANNEL, get_format, list_formats, pack_nibbles, unpack_nibbles

ALL = list_formats()
LOW_BIT = [f for f in ALL if not get_format(f).is_passthrough]
# Relative RMS error on N(0, 1) weights at the default group size (measured ~0.8x of these, see docs/formats.md).
RMS_BOUND = {"sym_int4": 0.11, "asym_int4": 0.10, "nf4": 0.10, "fp4": 0.12, "sym_int8": 0.012,
             "fp8_e4m3": 0.035, "fp8_e5m2": 0.07, "bf16": 0.003, "fp16": 0.0004, "fp32": 0.0}  # fmt: skip

shapes = st.tuples(st.integers(1, 70), st.integers(1, 300))


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), std=st.sampled_from([0.02, 1.0, 30.0]))
def test_roundtrip_within_bound(name: str, shape: tuple[int, int], seed: int, std: float) -> None:
    fmt = get_format(name)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std
    for gs in fmt.group_sizes[:2]:
        qw = fmt.quantize(w, gs)
        back = qw.dequantize()
        assert back.shape == w.shape
        assert torch.isfinite(back).all()
        excess = (back - w).abs() - fmt.error_bound(w, qw)
        assert excess.max().item() <= 0, f"{name} g{gs}: error exceeds its bound by {excess.max().item()}"


@pytest.mark.parametrize("name", ALL)
def test_rms_error_on_gaussian(name: str) -> None:
    w = torch.randn(256, 1024, generator=torch.Generator().manual_seed(7))
    back = get_format(name).quantize(w).dequantize()
    rel = ((back - w).norm() / w.norm()).item()
    assert rel <= RMS_BOUND[name]
    if name != "fp32":
        assert rel > RMS_BOUND[name] / 4  # the bound is tight, not a blanket


@pytest.mark.parametrize("name", LOW_BIT)
def test_quantize_is_idempotent(name: str) -> None:
    """Re-quantizing a dequantized weight reproduces the same codes (what makes GGUF -> format lossless)."""
    fmt = get_format(name)
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(3))
    qw = fmt.quantize(w)
    again = fmt.quantize(qw.dequantize())
    assert torch.equal(qw.dequantize(), again.dequantize())


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 40), half=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_nibble_packing_round_trips(rows: int, half: int, seed: int) -> None:
    codes = torch.randint(
        0, 16, (rows, 2 * half), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8
    )
    packed = pack_nibbles(codes)
    assert packed.shape == (rows, half) and packed.dtype == torch.uint8
    assert torch.equal(unpack_nibbles(packed), codes)
    assert torch.equal(packed[:, 0] & 0x0F, codes[:, 0])  # even k in the low nibble (documented layout)


def test_storage_layout_sizes() -> None:
    w = torch.randn(48, 100)
    q4 = get_format("asym_int4").quantize(w)  # K padded 100 -> 128 (4 groups of 32)
    assert q4.data.shape == (48, 64) and q4.scales.shape == (48, 4) and q4.zeros.shape == (48, 4)
    assert q4.scales.dtype == torch.float16
    q8 = get_format("sym_int8").quantize(w)
    assert q8.data.dtype == torch.int8 and q8.data.shape == (48, 100) and q8.scales.shape == (48, 1)
    f8 = get_format("fp8_e4m3").quantize(w, 32)
    assert f8.data.dtype == torch.uint8 and f8.scales.shape == (48, 4)


def test_sym_int4_matches_gguf_q4_0_convention() -> None:
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0] * 8])
    qw = get_format("sym_int4").quantize(w)
    codes = unpack_nibbles(qw.data)
    assert codes[0, 1].item() == 0  # the largest magnitude lands on -8 * scale
    assert qw.scales[0, 0].item() == pytest.approx(1.0 / 8)


def test_unknown_format_and_bad_group_size() -> None:
    with pytest.raises(UnsupportedFormat, match=r"'nf5'.*sym_int4"):
        get_format("nf5")
    with pytest.raises(InvalidGroupSize, match="group size 48 is not valid for 'sym_int4'"):
        get_format("sym_int4").quantize(torch.randn(4, 64), 48)
    with pytest.raises(InvalidGroupSize):
        get_format("nf4").quantize(torch.randn(4, 64), PER_CHANNEL)
    with pytest.raises(ValueError, match="2-D"):
        get_format("sym_int8").quantize(torch.randn(4))
