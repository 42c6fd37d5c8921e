"""Paged attention on CPU: the native kernel against its PyTorch twin, and its batch invariance, on random worlds.

Each hypothesis draw builds sequences with random lengths, shuffled physical blocks, heads / kv heads / head_dim /
block size, with or without Qwen3's per-head norms, and runs them three ways: every sequence alone (its prompt in
one chunk, then one token at a time), and twice mixed (all sequences in shared steps, random prefill chunks and
decode tokens, shuffled within a step). The native outputs and pool contents of a sequence must be bitwise the
same in all three (the engine's invariance guarantee), close to the reference, and no other sequence's slots
(nor the spare blocks) may change.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernels.paged_cases import make_world, random_schedule, run, seq_slots
from xpullm.kernels import cpu_native
from xpullm.kernels.paged import (
    kv_bytes_per_token,
    paged_attention,
    paged_backend,
    quantize_kv,
    reference_paged_attention,
)

needs_native = pytest.mark.skipif(
    cpu_native.library() is None, reason="the native CPU library does not build here"
)
ATOL = 3e-5  # fp32: outputs are convex mixes of N(0, 1) values; the two sides differ by summation order only


@st.composite
def worlds(draw):
    kv = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    d = draw(st.sampled_from([32, 64, 128]))
    bs = draw(st.sampled_from([8, 16, 32]))
    lengths = draw(st.lists(st.integers(1, 70), min_size=1, max_size=4))
    norms = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return seed, kv * group, kv, d, bs, lengths, norms


def _alone(world, seq: int) -> list[list[tuple[int, int, int]]]:
    """The sequence by itself: its prompt (a random first part) in one chunk, then one token per step."""
    prompt = random.Random(seq).randint(1, world.lengths[seq])
    steps = [[(seq, 0, prompt)]]
    steps += [[(seq, p, 1)] for p in range(prompt, world.lengths[seq])]
    return steps


def _assert_pools_close(world, ref_k, ref_v, k, v) -> None:
    for s in range(len(world.lengths)):
        for want, got in ((ref_k, k), (ref_v, v)):
            torch.testing.assert_close(
                seq_slots(world, got, s), seq_slots(world, want, s), atol=ATOL, rtol=1e-5
            )


@needs_native
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_native_matches_reference_and_is_batch_invariant(case) -> None:
    seed, h, kv, d, bs, lengths, norms = case
    world = make_world(seed, h, kv, d, bs, lengths, norms)
    rng = random.Random(seed)
    mixed = random_schedule(rng, lengths)
    assert paged_backend(
        world.rows[0][:1], world.cos, world.sin, torch.zeros(1, dtype=torch.long),
        torch.zeros(1, dtype=torch.long), world.tables, world.k_pool, world.v_pool, h, world.scale,
        world.q_norm, world.k_norm, 1e-6,
    ) == "native"  # fmt: skip
    out, k, v = run(world, mixed, paged_attention)
    ref, ref_k, ref_v = run(world, mixed, reference_paged_attention)
    got, want = torch.stack(list(out.values())), torch.stack([ref[key] for key in out])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    _assert_pools_close(world, ref_k, ref_v, k, v)

    out2, k2, v2 = run(world, random_schedule(rng, lengths), paged_attention)  # other chunks, other mixes
    for s in range(len(lengths)):
        alone, k_alone, v_alone = run(world, _alone(world, s), paged_attention)
        for p in range(lengths[s]):
            assert torch.equal(alone[(s, p)], out[(s, p)]), f"seq {s} pos {p}: alone != mixed ({case})"
            assert torch.equal(out2[(s, p)], out[(s, p)]), f"seq {s} pos {p}: chunking changed it ({case})"
        for pool, alone_pool in ((k, k_alone), (v, v_alone), (k2, k_alone), (v2, v_alone)):
            assert torch.equal(seq_slots(world, pool, s), seq_slots(world, alone_pool, s))
        # Alone, the sequence touched only its own written slots: every other slot keeps its initial value.
        for pool, init in ((k_alone, world.k_pool), (v_alone, world.v_pool)):
            changed = (pool != init).any(-1)  # [blocks, KV, bs]
            owned = torch.zeros_like(changed)
            for p in range(lengths[s]):
                owned[world.tables[s, p // bs], :, p % bs] = True
            assert not (changed & ~owned).any(), f"seq {s} wrote outside its slots ({case})"


@needs_native
def test_thread_count_does_not_change_a_bit() -> None:
    world = make_world(7, 8, 2, 64, 16, [50, 3, 37], norms=True)
    schedule = random_schedule(random.Random(7), world.lengths)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, k1, v1 = run(world, schedule, paged_attention)
        torch.set_num_threads(2)
        two, k2, v2 = run(world, schedule, paged_attention)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one[key], two[key]) for key in one)
    assert torch.equal(k1, k2) and torch.equal(v1, v2)


@needs_native
def test_slots_past_a_position_are_never_read() -> None:
    """Pools full of NaN: only slots written by this call or earlier ones may be read, so outputs stay finite."""
    world = make_world(3, 6, 3, 32, 8, [19, 40, 1], norms=False, fill=float("nan"))
    out, k, _ = run(world, random_schedule(random.Random(3), world.lengths), paged_attention)
    assert torch.isfinite(torch.stack(list(out.values()))).all()
    assert torch.isfinite(seq_slots(world, k, 1)).all()


@needs_native
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.update(positions=a["positions"] + 1000), "RoPE tables"),
        (lambda a: a.update(seq_index=a["seq_index"] + 5), "seq_index"),
        (lambda a: a["block_tables"].fill_(99), "num_blocks"),
        (lambda a: a.update(block_tables=a["block_tables"][:, :1].contiguous()), "width"),
    ],
)
def test_bad_indices_raise_and_write_nothing(edit, message: str) -> None:
    world = make_world(5, 4, 2, 32, 8, [20], norms=False)
    args = dict(
        qkv=world.rows[0], cos=world.cos, sin=world.sin, positions=torch.arange(20), seq_index=torch.zeros(20,
        dtype=torch.long), block_tables=world.tables.clone(), k_pool=world.k_pool.clone(),
        v_pool=world.v_pool.clone(), n_heads=4, scale=world.scale,
    )  # fmt: skip
    edit(args)
    with pytest.raises(ValueError, match=message):
        paged_attention(**args)
    assert torch.equal(args["k_pool"], world.k_pool) and torch.equal(args["v_pool"], world.v_pool)


def test_shape_errors_name_the_problem() -> None:
    world = make_world(1, 4, 2, 32, 8, [5], norms=False)
    base = dict(
        qkv=world.rows[0], cos=world.cos, sin=world.sin, positions=torch.arange(5), seq_index=torch.zeros(5,
        dtype=torch.long), block_tables=world.tables, k_pool=world.k_pool, v_pool=world.v_pool, n_heads=4,
        scale=world.scale,
    )  # fmt: skip
    for change, message in (
        ({"n_heads": 3}, "multiple"),
        ({"qkv": world.rows[0][:, :-1]}, r"\(H \+ 2 KV\)"),
        ({"positions": torch.arange(5, dtype=torch.int32)}, "int64"),
        ({"block_tables": world.tables.long()}, "int32"),
        ({"q_norm": torch.ones(32)}, "both or neither"),
        ({"kv_cache_dtype": "fp4"}, "not known"),
        ({"kv_cache_dtype": "int8"}, "int8 pools"),
    ):
        with pytest.raises(ValueError, match=message):
            paged_attention(**{**base, **change})


def test_dispatch_falls_back_where_the_native_kernel_declines() -> None:
    world = make_world(2, 4, 2, 32, 8, [6], norms=False, dtype=torch.bfloat16)
    args = dict(
        qkv=world.rows[0], cos=world.cos, sin=world.sin, positions=torch.arange(6), seq_index=torch.zeros(6,
        dtype=torch.long), block_tables=world.tables, k_pool=world.k_pool, v_pool=world.v_pool, n_heads=4,
        scale=world.scale,
    )  # fmt: skip
    assert paged_backend(**args) == "reference"  # bf16 pools: no native path, the twin runs
    out = paged_attention(**args)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    f32 = make_world(2, 4, 2, 32, 8, [6], norms=False)
    strided = f32.k_pool.transpose(1, 2).contiguous().transpose(1, 2)  # same values, not contiguous
    args.update(qkv=f32.rows[0], k_pool=strided, v_pool=f32.v_pool.clone())
    assert paged_backend(**args) == "reference"
    assert paged_backend(**{**args, "k_pool": f32.k_pool.clone()}) == ("native" if cpu_native.library() else
                                                                         "reference")  # fmt: skip


def test_reference_matches_a_token_by_token_loop() -> None:
    """The twin itself against the definition, one token and head at a time (with the norms)."""
    world = make_world(11, 6, 2, 32, 8, [13, 29], norms=True)
    schedule = random_schedule(random.Random(11), world.lengths)
    out, k_pool, v_pool = run(world, schedule, reference_paged_attention)
    bs, d, h, kv = world.block_size, world.d, world.h, world.kv
    for (s, p), row in out.items():
        x = world.rows[s][p].reshape(h + 2 * kv, d)[:h]
        x = torch.nn.functional.rms_norm(x, (d,), world.q_norm, 1e-6)
        q = x * world.cos[p] + x.roll(d // 2, -1) * world.sin[p]
        for hd in range(h):
            keys = torch.stack(
                [k_pool[world.tables[s, t // bs], hd // (h // kv), t % bs] for t in range(p + 1)]
            )
            vals = torch.stack(
                [v_pool[world.tables[s, t // bs], hd // (h // kv), t % bs] for t in range(p + 1)]
            )
            want = torch.softmax(keys @ q[hd] * world.scale, 0) @ vals
            torch.testing.assert_close(row[hd * d : (hd + 1) * d], want, atol=1e-5, rtol=1e-5)


def test_quantize_kv_roundtrip_and_bytes() -> None:
    x = torch.randn(5, 3, 64)
    x[0, 0] = 0.0
    codes, scale = quantize_kv(x)
    assert codes.dtype == torch.int8 and scale.shape == (5, 3)
    assert torch.equal(codes[0, 0], torch.zeros(64, dtype=torch.int8)) and scale[0, 0] == 0
    err = (codes.float() * scale[..., None] - x).abs()
    assert (err <= scale[..., None] / 2 * (1 + 1e-6)).all()
    # SmolLM2-135M: 30 layers, 3 kv heads, head_dim 64.
    assert kv_bytes_per_token(30, 3, 64, "auto", torch.float32) == 46080
    assert kv_bytes_per_token(30, 3, 64, "auto", torch.bfloat16) == 23040
    assert kv_bytes_per_token(30, 3, 64, "int8", torch.float32) == 12240
