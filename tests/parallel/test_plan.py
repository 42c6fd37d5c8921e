"""The split plan and the packed-weight cuts: which heads / columns / rows each rank holds, exact slices."""

from __future__ import annotations

import pytest
import torch

from xpullm.formats import get_format
from xpullm.parallel import (
    ModelShape,
    TensorParallelError,
    backend_for,
    plan_split,
    slice_columns,
    slice_rows,
)

SMOLLM2 = ModelShape(n_heads=9, n_kv=3, head_dim=64, intermediate=1536, vocab=49152)
LLAMA3_8B = ModelShape(n_heads=32, n_kv=8, head_dim=128, intermediate=14336, vocab=128256)


def test_smollm2_two_ranks_take_whole_kv_groups() -> None:
    plan = plan_split(SMOLLM2, 2, 32)
    assert [s.q_heads for s in plan.shards] == [(0, 6), (6, 9)]
    assert [s.kv_heads for s in plan.shards] == [(0, 1), (2,)]
    assert [s.ffn for s in plan.shards] == [(0, 768), (768, 1536)]
    assert [s.vocab for s in plan.shards] == [(0, 24576), (24576, 49152)]
    assert not plan.even


def test_smollm2_four_ranks_share_kv_heads() -> None:
    """9 query heads over 4 ranks: 3 + 2 + 2 + 2; rank 2's heads 5 and 6 read KV heads 1 and 2 (one each)."""
    plan = plan_split(SMOLLM2, 4, 32)
    assert [s.q_heads for s in plan.shards] == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert [s.kv_heads for s in plan.shards] == [(0,), (1,), (1, 2), (2,)]
    assert [s.ffn for s in plan.shards] == [(0, 384), (384, 768), (768, 1152), (1152, 1536)]


def test_uneven_kv_mapping_replicates_per_query_head() -> None:
    # 8 query heads / 2 KV heads (4 per group) over 3 ranks: 3 + 3 + 2; rank 1 holds heads 3, 4, 5 -> KV 0, 1, 1.
    plan = plan_split(ModelShape(8, 2, 64, 768, 100), 3, 32)
    assert plan.shards[1].q_heads == (3, 6)
    assert plan.shards[1].kv_heads == (0, 1, 1)  # one KV copy per query head: local GQA stays i -> i // 1


def test_large_groups_cut_heads_in_pairs() -> None:
    """head_dim 64 with groups of 128: o_proj can only be cut every 2 heads."""
    plan = plan_split(SMOLLM2, 4, 128)
    assert [s.q_heads for s in plan.shards] == [(0, 4), (4, 6), (6, 8), (8, 9)]
    assert all(s.q_heads[0] * 64 % 128 == 0 for s in plan.shards)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_llama3_8b_splits_evenly(world: int) -> None:
    plan = plan_split(LLAMA3_8B, world, 128)
    assert plan.even
    assert {len(s.kv_heads) for s in plan.shards} == {8 // world}
    assert {s.ffn[1] - s.ffn[0] for s in plan.shards} == {14336 // world}


def test_llama3_8b_sixteen_ranks_replicate_kv_heads() -> None:
    plan = plan_split(LLAMA3_8B, 16, 128)
    assert {s.n_heads for s in plan.shards} == {2}
    assert [s.kv_heads for s in plan.shards[:4]] == [(0,), (0,), (1,), (1,)]


def test_impossible_split_names_the_largest_valid_world() -> None:
    with pytest.raises(TensorParallelError, match="choose tensor_parallel between 1 and 9"):
        plan_split(SMOLLM2, 10, 32)
    with pytest.raises(TensorParallelError, match="an int >= 1"):
        plan_split(SMOLLM2, 0, 32)


@pytest.mark.parametrize("fmt", ["asym_int4", "sym_int4", "sym_int8", "nf4"])
def test_column_cuts_on_group_boundaries_are_exact(fmt: str) -> None:
    w = torch.randn(12, 256, generator=torch.Generator().manual_seed(0))
    qw = get_format(fmt).quantize(w, 32)
    full = qw.dequantize()
    parts = [slice_columns(qw, 0, 96), slice_columns(qw, 96, 256)]
    assert torch.equal(torch.cat([p.dequantize() for p in parts], 1), full)
    rows = torch.tensor([7, 1, 4])
    assert torch.equal(slice_rows(qw, rows).dequantize(), full[rows])


def test_column_cut_inside_a_group_is_refused_by_name() -> None:
    qw = get_format("asym_int4").quantize(torch.randn(4, 128), 32)
    with pytest.raises(
        TensorParallelError, match=r"model\.layers\.0\.mlp\.down_proj\.weight is stored in groups of 32"
    ):
        slice_columns(qw, 0, 40, name="model.layers.0.mlp.down_proj.weight")


@pytest.mark.parametrize("fmt", ["sym_int8", "bf16"])
def test_one_group_per_row_cuts_anywhere(fmt: str) -> None:
    w = torch.randn(5, 200, generator=torch.Generator().manual_seed(1))
    qw = get_format(fmt).quantize(w, 0)
    full = qw.dequantize()
    parts = [slice_columns(qw, 0, 78), slice_columns(qw, 78, 200)]
    assert torch.equal(torch.cat([p.dequantize() for p in parts], 1), full)


def test_backend_registry() -> None:
    assert backend_for(torch.device("cpu")).name == "gloo"
    with pytest.raises(TensorParallelError, match="no collective backend is registered for device 'meta'"):
        backend_for(torch.device("meta"))
