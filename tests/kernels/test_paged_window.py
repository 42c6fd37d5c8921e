"""Sliding-window + attention-sink paged attention: the twin against a dense masked loop, the native kernel (and
Triton, in its interpreter or on a GPU) against the twin on random worlds, batch invariance, and ring block tables
(a table narrower than the positions, columns reused as the window moves) giving the plain table's results."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernels.paged_cases import batch_of, layer_of, make_world, random_schedule, run
from xpullm.kernels import cpu_native
from xpullm.kernels.paged import (
    paged_attention,
    reference_paged_attention,
    reference_rotate,
    ring_width,
    table_column,
)

needs_native = pytest.mark.skipif(
    cpu_native.library() is None, reason="the native CPU library does not build here"
)
ATOL = 3e-5


def _dense(world, seq: int, window: int, sinks: int) -> torch.Tensor:
    """A sequence's outputs by a plain loop over its fp32 q/k/v: token p attends j <= p, j > p - W or j < S."""
    rows = world.rows[seq]
    _, batch = batch_of(world, [(seq, 0, rows.shape[0])])
    q, k, v = reference_rotate(rows, batch, layer_of(world, world.pools))
    group = world.h // world.kv
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)  # [L, H, D]
    out = []
    for p in range(rows.shape[0]):
        j = torch.arange(p + 1)
        keep = (j > p - window) | (j < sinks) if window else torch.ones(p + 1, dtype=torch.bool)
        scores = torch.einsum("hd,lhd->hl", q[p], k[: p + 1][keep]) * world.scale
        out.append(torch.einsum("hl,lhd->hd", scores.softmax(-1), v[: p + 1][keep]).reshape(-1))
    return torch.stack(out)


@pytest.mark.parametrize(("window", "sinks"), [(0, 0), (1, 0), (7, 0), (10, 4), (6, 20)])
def test_twin_matches_a_dense_masked_loop(window: int, sinks: int) -> None:
    world = make_world(5, 4, 2, 32, 8, [45, 3], norms=True)
    schedule = random_schedule(random.Random(5), world.lengths)
    out, _ = run(world, schedule, reference_paged_attention, window, sinks)
    for s, length in enumerate(world.lengths):
        got = torch.stack([out[(s, p)] for p in range(length)])
        torch.testing.assert_close(got, _dense(world, s, window, sinks), atol=ATOL, rtol=1e-5)


@st.composite
def _cases(draw):
    kv = draw(st.sampled_from([1, 2]))
    group = draw(st.sampled_from([1, 3, 4]))
    d = draw(st.sampled_from([32, 64, 36]))
    bs = draw(st.sampled_from([4, 8, 16]))
    lengths = draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))
    window = draw(st.integers(1, 40))
    sinks = draw(st.sampled_from([0, 0, 1, 4, 9]))
    dtype = draw(st.sampled_from(["auto", "auto", "int8", "fp8_e4m3"]))
    return draw(st.integers(0, 2**31 - 1)), kv * group, kv, d, bs, lengths, window, sinks, dtype


@needs_native
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_cases())
def test_native_window_matches_twin_and_is_batch_invariant(case) -> None:
    seed, h, kv, d, bs, lengths, window, sinks, dtype = case
    world = make_world(seed, h, kv, d, bs, lengths, norms=seed % 2 == 0, kv_cache_dtype=dtype)
    rng = random.Random(seed)
    mixed, _ = run(world, random_schedule(rng, lengths), paged_attention, window, sinks)
    again, _ = run(world, random_schedule(rng, lengths), paged_attention, window, sinks)
    assert all(torch.equal(mixed[key], again[key]) for key in mixed), case
    if (
        dtype == "auto"
    ):  # 8-bit codes may round a step apart between the two (test_paged_attention covers that)
        ref, _ = run(world, random_schedule(rng, lengths), reference_paged_attention, window, sinks)
        got, want = torch.stack(list(mixed.values())), torch.stack([ref[key] for key in mixed])
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)


def _ring_world(world, window: int, sinks: int, step: int):
    """The world with a table only `ring_width` columns wide (distinct physical blocks per column)."""
    width = ring_width(window, sinks, world.block_size, step)
    tables = world.tables[:, :width].clone()
    assert tables.shape[1] == width and (tables >= 0).all()
    return dataclasses.replace(world, tables=tables)


def _chunks(rng: random.Random, length: int, most: int) -> list[list[tuple[int, int, int]]]:
    steps, at = [], 0
    while at < length:
        n = min(rng.randint(1, most), length - at)
        steps.append([(0, at, n)])
        at += n
    return steps


@pytest.mark.parametrize("dtype", ["auto", "int8"])
@pytest.mark.parametrize(("window", "sinks", "bs"), [(16, 4, 8), (9, 0, 4), (20, 10, 8)])
def test_ring_table_gives_the_plain_tables_results(window: int, sinks: int, bs: int, dtype: str) -> None:
    """A 120-token sequence through a table of a few columns: blocks that left the window are overwritten."""
    world = make_world(11, 4, 2, 32, bs, [120], norms=False, spare_blocks=0, kv_cache_dtype=dtype)
    step = 6
    ring = _ring_world(world, window, sinks, step)
    schedule = _chunks(random.Random(window), 120, step)
    backends = [reference_paged_attention] + ([paged_attention] if cpu_native.library() is not None else [])
    for kernel in backends:
        plain, _ = run(world, schedule, kernel, window, sinks)
        ringed, _ = run(ring, schedule, kernel, window, sinks)
        assert all(torch.equal(plain[key], ringed[key]) for key in plain), kernel
    assert ring.tables.shape[1] < world.tables.shape[1] // 2


def test_table_column_and_ring_width() -> None:
    assert [table_column(b, 0, 0, 8, 4) for b in range(6)] == [0, 1, 2, 3, 4, 5]  # no window: the plain table
    assert [table_column(b, 16, 4, 8, 4) for b in range(8)] == [0, 1, 2, 3, 1, 2, 3, 1]  # sink column 0 stays
    assert ring_width(16, 4, 8, 6) == 1 + 3 + 1


def test_window_argument_errors() -> None:
    world = make_world(1, 2, 1, 32, 8, [5], norms=False)
    with pytest.raises(ValueError, match="sinks=2 needs a sliding window"):
        run(world, [[(0, 0, 5)]], reference_paged_attention, sinks=2)
    with pytest.raises(ValueError, match="window must be an int >= 0"):
        run(world, [[(0, 0, 5)]], paged_attention, window=-1)


@pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="Triton needs a CUDA GPU or TRITON_INTERPRET=1",
)
@pytest.mark.parametrize(("window", "sinks", "dtype"), [(9, 0, "auto"), (12, 3, "int8"), (5, 10, "fp8_e4m3")])
def test_triton_window_matches_twin(window: int, sinks: int, dtype: str) -> None:
    pytest.importorskip("triton")
    from xpullm.kernels.triton.paged_attention import paged_attention as triton_paged

    device = torch.device(
        "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    )
    world = make_world(2, 4, 2, 32, 8, [40], norms=True, kv_cache_dtype=dtype).to(device)
    schedule = _chunks(random.Random(2), 40, 6)
    ring = _ring_world(world, window, sinks, 6)
    got, _ = run(ring, schedule, triton_paged, window, sinks)
    want, _ = run(world, schedule, reference_paged_attention, window, sinks)
    tol = 3e-5 if dtype == "auto" else 2e-2  # 8-bit: a code may round a step apart between the two sides
    for key in got:
        torch.testing.assert_close(got[key], want[key], atol=tol, rtol=1e-3)
