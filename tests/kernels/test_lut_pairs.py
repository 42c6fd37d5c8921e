"""The codebook pair and quad decodes' PTX (nf4, fp4), step by step on integers (`lut_pairs.pair_reference`,
`quad_reference`): every pair of codes, and every code in each of a quad's four places, with the other planes' bits
set or clear around them, gives the levels' bf16 patterns (rounded to nearest)."""

from __future__ import annotations

import pytest
import torch

from xpullm.kernels.triton.lut_pairs import (
    E2M1_LEVELS,
    NF4_LEVELS,
    bf16_bits,
    pair_ptx,
    pair_reference,
    pair_tables,
    quad_f32_ptx,
    quad_f32_reference,
    quad_ptx,
    quad_reference,
)

LEVELS = {"nf4": NF4_LEVELS, "fp4": E2M1_LEVELS}


def _bf16(x: float) -> int:
    return torch.tensor([x]).bfloat16().view(torch.int16).item() & 0xFFFF


def test_bf16_bits_round_like_torch():
    for v in (*NF4_LEVELS, 1.00390625, 1.01171875, -3.0e-39, 65504.0):  # ties to even, a subnormal
        assert bf16_bits(v) == _bf16(v), v


@pytest.mark.parametrize("codebook", sorted(LEVELS))
@pytest.mark.parametrize("others", [0x00000000, 0xFFF0FFF0, 0x5A305A30])
def test_every_code_pair_decodes_to_both_levels(codebook, others):
    levels = LEVELS[codebook]
    for c0 in range(16):
        for c1 in range(16):
            lo, hi = pair_reference(c0 | (c1 << 16) | others, levels)
            assert (lo, hi) == (_bf16(levels[c0]), _bf16(levels[c1])), (codebook, c0, c1, hex(others))


@pytest.mark.parametrize("codebook", sorted(LEVELS))
def test_the_ptx_carries_the_tables_it_was_checked_with(codebook):
    lo, hi = pair_tables(LEVELS[codebook])
    for scaled in (False, True):
        ptx = pair_ptx(LEVELS[codebook], scaled)
        assert all(f"{w:#010x}" in ptx for w in (*lo, *hi))
        assert ("fma.rn.bf16x2" in ptx) == scaled and ptx.count("prmt.b32") == 4
    with pytest.raises(ValueError, match="16 levels"):
        pair_tables(NF4_LEVELS[:8])


@pytest.mark.parametrize("codebook", sorted(LEVELS))
@pytest.mark.parametrize("others", [0x00000000, 0xFF00FF00, 0x5AA55AA5])
def test_every_code_of_a_quad_decodes_to_its_level(codebook, others):
    """Bytes 0 and 2 hold the quad's codes (planes 2q, 2q + 1 and 2q + 4, 2q + 5 after the shift by 8 q); bytes 1
    and 3 (the other quad's codes) must not leak in. Every byte 0, with five bytes 2 (four drawn, one equal)."""
    levels = LEVELS[codebook]
    gen = torch.Generator().manual_seed(0)
    for lo_byte in range(256):
        hi_bytes = [*torch.randint(0, 256, (4,), generator=gen).tolist(), lo_byte]
        for hi_byte in hi_bytes:
            word = (others & 0xFF00FF00) | lo_byte | (hi_byte << 16)
            codes = (lo_byte & 0xF, hi_byte & 0xF, lo_byte >> 4, hi_byte >> 4)
            got = quad_reference(word, levels)
            assert got == tuple(_bf16(levels[c]) for c in codes), (codebook, hex(word))


@pytest.mark.parametrize("codebook", sorted(LEVELS))
def test_the_quad_ptx_carries_its_tables_and_two_gathers_per_table(codebook):
    lo, hi = pair_tables(LEVELS[codebook])
    for scaled in (False, True):
        ptx = quad_ptx(LEVELS[codebook], scaled)
        assert all(f"{w:#010x}" in ptx for w in (*lo, *hi))
        assert ptx.count("fma.rn.bf16x2") == 2 * scaled and ptx.count("prmt.b32") == 8


@pytest.mark.parametrize("codebook", sorted(LEVELS))
def test_every_code_of_an_fp32_quad_decodes_to_its_exact_level(codebook):
    """`quad_f32_reference` (the GEMV's decode): the levels' fp32 patterns, not rounded, in every place."""
    levels = LEVELS[codebook]
    want = [torch.tensor([v]).view(torch.int32).item() & 0xFFFFFFFF for v in levels]
    gen = torch.Generator().manual_seed(1)
    for lo_byte in range(256):
        for hi_byte in torch.randint(0, 256, (3,), generator=gen).tolist():
            word = 0x5AA55AA5 & 0xFF00FF00 | lo_byte | (hi_byte << 16)
            codes = (lo_byte & 0xF, hi_byte & 0xF, lo_byte >> 4, hi_byte >> 4)
            assert quad_f32_reference(word, levels) == tuple(want[c] for c in codes), (codebook, hex(word))
    ptx = quad_f32_ptx(levels)
    assert ptx.count("prmt.b32") == 2 + 8 + 8 and "ld." not in ptx  # selector and mask, gathers, transpose
