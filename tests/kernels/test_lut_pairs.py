"""The codebook pair decode's PTX (nf4, fp4), step by step on integers (`lut_pairs.pair_reference`): every pair of codes, with
the other planes' bits set or clear around them, gives both levels' bf16 patterns (rounded to nearest)."""

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
