"""Paged attention on CPU: the native kernel against its PyTorch twin, and its batch invariance, on random worlds.

Each hypothesis draw (on every SIMD path the CPU runs) builds sequences with random lengths, shuffled physical blocks, heads / kv heads / head_dim /
block size, with or without Qwen3's per-head norms, and runs them three ways: every sequence alone (its prompt in
one chunk, then one token at a time), and twice mixed (all sequences in shared steps, random prefill chunks and
decode tokens, shuffled within a step). The native outputs and pool contents of a sequence must be bitwise the
same in all three (the engine's invariance guarantee), close to the reference, and no other sequence's slots
(nor the spare blocks) may change.
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.kernels.paged_cases import bits, make_world, random_schedule, run, seq_slots
from xpullm.kernels import cpu_native
from xpullm.kernels.paged import (
    PagedBatch,
    PagedLayer,
    kv_bytes_per_token,
    kv_rotation,
    paged_attention,
    paged_backend,
    quantize_kv,
    reference_attend,
    reference_paged_attention,
    reference_rotate,
)

needs_native = pytest.mark.skipif(
    cpu_native.library() is None, reason="the native CPU library does not build here"
)
ATOL = 3e-5  # fp32: outputs are convex mixes of N(0, 1) values; the two sides differ by summation order only


@st.composite
def worlds(draw):
    kv = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 2, 3, 4]))
    # 80: the native value loop's 64 + 16 column split; 36: its scalar path (not a multiple of 8)
    d = draw(st.sampled_from([32, 64, 128, 80, 36]))
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


def _assert_pools_close(world, want: dict, got: dict) -> None:
    """Every sequence's written slots: fp32 values to rounding; 8-bit codes at most one step apart (a value on a
    rounding boundary may land either side), rarely, with their scales to rounding."""
    for name in want:
        for s in range(len(world.lengths)):
            a, b = seq_slots(world, want[name], s), seq_slots(world, got[name], s)
            if a.dtype == torch.int8:
                diff = (a.int() - b.int()).abs()
                assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"{name} seq {s}: codes differ"
            elif a.dtype == torch.float8_e4m3fn:  # one e4m3 step: 1/8 of a normal value, 2^-9 below 2^-6
                a, b = a.float(), b.float()
                off = (a - b).abs() > 0
                assert ((a - b).abs() <= a.abs() / 8 + 2.0**-9).all() and off.float().mean() < 0.01, name
            else:
                torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-5)


def _untouched_outside(world, pools: dict, seq: int) -> bool:
    """Whether `pools` differ from the world's initial pools only in the slots `seq` writes."""
    bs = world.block_size
    for name, pool in pools.items():
        changed = bits(pool) != bits(world.pools[name])
        changed = changed.any(-1) if changed.dim() == 4 else changed  # [blocks, KV, bs]
        for p in range(world.lengths[seq]):
            changed[world.tables[seq, p // bs], :, p % bs] = False
        if changed.any():
            return False
    return True


def _checked(pairs: list) -> object:
    """`paged_attention` that also records, per call, its output and the twin's phase 2 on the kernel's own pools
    (`reference_attend`): with 8-bit pools a value on a rounding boundary may become a code one step off on one
    side (rare, from fp32 rounding of the rotation), so outputs are held to the twin on the codes the kernel wrote,
    and the codes to the twin's codes separately (`_assert_pools_close`)."""

    def kernel(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
        out = paged_attention(qkv, batch, layer)
        q, _, _ = reference_rotate(qkv, batch, layer)
        pairs.append((out, reference_attend(q, batch, layer)))
        return out

    return kernel


_PATHS = cpu_native.isa_paths()  # the SIMD paths this CPU runs (avx2, avx512_vnni), best last
# The best path (the default) gets the full budget, each forced slower one a smaller one.
CASES = [
    (dtype, isa, full if isa == _PATHS[-1] else full // 2)
    for dtype, full in (("auto", 10), ("int8", 6), ("fp8_e4m3", 6))
    for isa in _PATHS
]


@needs_native
@pytest.mark.parametrize(("kv_cache_dtype", "isa", "examples"), CASES)
def test_native_matches_reference_and_is_batch_invariant(
    kv_cache_dtype: str, isa: str, examples: int
) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(worlds())
    def check(case) -> None:
        with cpu_native.forced_isa(isa):
            _check_world(case, kv_cache_dtype)

    check()


def _check_world(case, kv_cache_dtype: str) -> None:
    seed, h, kv, d, bs, lengths, norms = case
    world = make_world(seed, h, kv, d, bs, lengths, norms, kv_cache_dtype=kv_cache_dtype)
    rng = random.Random(seed)
    mixed = random_schedule(rng, lengths)
    pairs: list = []
    out, pools = run(world, mixed, _checked(pairs))
    for got, want in pairs:
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    ref, ref_pools = run(world, mixed, reference_paged_attention)
    _assert_pools_close(world, ref_pools, pools)
    if (
        kv_cache_dtype == "auto"
    ):  # the whole twin too (8-bit pools: its codes may differ by a step, see above)
        got, want = torch.stack(list(out.values())), torch.stack([ref[key] for key in out])
        torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)

    out2, pools2 = run(world, random_schedule(rng, lengths), paged_attention)  # other chunks, other mixes
    for s in range(len(lengths)):
        alone, alone_pools = run(world, _alone(world, s), paged_attention)
        for p in range(lengths[s]):
            assert torch.equal(alone[(s, p)], out[(s, p)]), f"seq {s} pos {p}: alone != mixed ({case})"
            assert torch.equal(out2[(s, p)], out[(s, p)]), f"seq {s} pos {p}: chunking changed it ({case})"
        for name, pool in alone_pools.items():
            for other in (pools, pools2):
                assert torch.equal(bits(seq_slots(world, other[name], s)), bits(seq_slots(world, pool, s))), (
                    name
                )
        assert _untouched_outside(world, alone_pools, s), f"seq {s} wrote outside its slots ({case})"


@needs_native
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8", "fp8_e4m3"])
def test_thread_count_does_not_change_a_bit(kv_cache_dtype: str) -> None:
    """OpenMP splits (token, kv head) jobs over threads: each is computed whole by one thread, the same way.
    Steps of >= 256k multiply-adds run threaded (both prefill steps here), smaller ones on one thread (the
    decodes)."""
    world = make_world(7, 8, 2, 64, 16, [124, 3, 41], norms=True, kv_cache_dtype=kv_cache_dtype)
    schedule = [[(0, 0, 90), (1, 0, 3), (2, 0, 20)], [(2, 20, 17), (0, 90, 30)], [(0, 120, 1), (2, 37, 1)]]
    schedule += [[(0, p, 1), (2, p - 83, 1)] for p in range(121, 124)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, pools1 = run(world, schedule, paged_attention)
        torch.set_num_threads(2)
        two, pools2 = run(world, schedule, paged_attention)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(one[key], two[key]) for key in one)
    assert all(torch.equal(bits(pools1[name]), bits(pools2[name])) for name in pools1)


@needs_native
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8", "fp8_e4m3"])
def test_slots_past_a_position_are_never_read(kv_cache_dtype: str) -> None:
    """Pools (scales) full of NaN: only slots written by this call or earlier ones may be read."""
    world = make_world(
        3, 6, 3, 32, 8, [19, 40, 1], norms=False, fill=float("nan"), kv_cache_dtype=kv_cache_dtype
    )
    out, pools = run(world, random_schedule(random.Random(3), world.lengths), paged_attention)
    assert torch.isfinite(torch.stack(list(out.values()))).all()
    written = "k_pool" if kv_cache_dtype == "auto" else "k_scale"
    assert torch.isfinite(seq_slots(world, pools[written], 1)).all()


def _call(world, n: int) -> tuple[torch.Tensor, dict, dict]:
    """One call's pieces: the first sequence's first n tokens' qkv, the `PagedBatch` fields and the `PagedLayer`
    fields (on clones of the pools)."""
    pools = {name: t.clone() for name, t in world.pools.items()}
    batch = dict(
        positions=torch.arange(n), seq_index=torch.zeros(n, dtype=torch.long), block_tables=world.tables.clone(),
        cos=world.cos, sin=world.sin,
    )  # fmt: skip
    layer = dict(k_pool=pools["k_pool"], v_pool=pools["v_pool"], n_heads=world.h, scale=world.scale)
    if world.kv_cache_dtype != "auto":
        layer.update(kv_cache_dtype=world.kv_cache_dtype, k_scale=pools["k_scale"], v_scale=pools["v_scale"])
    return world.rows[0][:n], batch, layer


def _attend(qkv: torch.Tensor, batch: dict, layer: dict) -> torch.Tensor:
    return paged_attention(qkv, PagedBatch(**batch), PagedLayer(**layer))


@needs_native
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8", "fp8_e4m3"])
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.update(positions=b["positions"] + 1000), "RoPE tables"),
        (lambda b: b.update(seq_index=b["seq_index"] + 5), "seq_index"),
        (lambda b: b["block_tables"].fill_(99), "num_blocks"),
        (lambda b: b.update(block_tables=b["block_tables"][:, :1].contiguous()), "width"),
    ],
)
def test_bad_indices_raise_and_write_nothing(edit, message: str, kv_cache_dtype: str) -> None:
    world = make_world(5, 4, 2, 32, 8, [20], norms=False, kv_cache_dtype=kv_cache_dtype)
    qkv, batch, layer = _call(world, 20)
    edit(batch)
    with pytest.raises(ValueError, match=message):
        _attend(qkv, batch, layer)
    for name in ("k_pool", "v_pool"):
        assert torch.equal(bits(layer[name]), bits(world.pools[name]))


def test_shape_errors_name_the_problem() -> None:
    world = make_world(1, 4, 2, 32, 8, [5], norms=False)
    qkv, batch, layer = _call(world, 5)
    for args, message in (
        ((qkv, batch, {**layer, "n_heads": 3}), "multiple"),
        ((world.rows[0][:, :-1], batch, layer), r"\(H \+ 2 KV\)"),
        ((qkv[:4], batch, layer), r"\[5, 256\] for N=5"),
        ((qkv, {**batch, "positions": torch.arange(5, dtype=torch.int32)}, layer), "int64"),
        ((qkv, {**batch, "seq_index": torch.zeros(4, dtype=torch.long)}, layer), "as many as positions"),
        ((qkv, {**batch, "block_tables": world.tables.long()}, layer), "int32"),
        ((qkv, {**batch, "cos": world.cos[:, :16], "sin": world.sin[:, :16]}, layer), "16 wide"),
        ((qkv, {**batch, "sin": world.sin.double()}, layer), "cos and sin"),
        ((qkv, batch, {**layer, "q_norm": torch.ones(32)}), "both or neither"),
        ((qkv, batch, {**layer, "kv_cache_dtype": "fp4"}), "not known"),
        ((qkv, batch, {**layer, "kv_cache_dtype": "int8"}), "int8 pools"),
        ((qkv, batch, {**layer, "k_scale": torch.ones(3, 2, 8)}), "belong to 8-bit pools"),
    ):
        with pytest.raises(ValueError, match=message):
            _attend(*args)
    odd = make_world(1, 4, 2, 33, 8, [5], norms=False)
    with pytest.raises(ValueError, match="even"):
        _attend(*_call(odd, 5))
    qkv, batch, int8 = _call(make_world(1, 4, 2, 32, 8, [5], norms=False, kv_cache_dtype="int8"), 5)
    with pytest.raises(ValueError, match="k_scale float32"):
        _attend(qkv, batch, {**int8, "k_scale": int8["k_scale"][:, :, :4]})


def test_batch_and_layer_are_checked_once_and_kept_contiguous() -> None:
    """The step's checks run when its `PagedBatch` is built (not per layer); strided inputs are made contiguous
    there once, and the twin's RoPE rows are gathered once per batch."""
    world = make_world(4, 4, 2, 32, 8, [9], norms=True)
    qkv, batch, layer = _call(world, 9)
    wide = torch.zeros(9, 2, dtype=torch.long)
    wide[:, 0] = batch["positions"]
    built = PagedBatch(**{**batch, "positions": wide[:, 0]})
    assert not wide[:, 0].is_contiguous() and built.positions.is_contiguous()
    assert built.n == 9 and built.device == torch.device("cpu")
    assert built.rope_rows is built.rope_rows  # gathered once
    torch.testing.assert_close(built.rope_rows[0][:, 0], world.cos[:9])
    spec = PagedLayer(**layer, q_norm=world.q_norm, k_norm=world.k_norm, eps=1e-6)
    assert (spec.kv, spec.d, spec.block_size, spec.codes, spec.width) == (2, 32, 8, None, (4 + 4) * 32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.window = 4  # type: ignore[misc]
    # Two layers of one step share the batch; each writes its own pools.
    other = make_world(4, 4, 2, 32, 8, [9], norms=True)
    spec2 = PagedLayer(**_call(other, 9)[2], q_norm=world.q_norm, k_norm=world.k_norm, eps=1e-6)
    first, second = paged_attention(qkv, built, spec), paged_attention(qkv, built, spec2)
    assert torch.equal(first, second)  # same inputs, same (initially equal) pools
    assert torch.equal(spec.k_pool, spec2.k_pool) and spec.k_pool.data_ptr() != spec2.k_pool.data_ptr()


def test_dispatch_falls_back_where_the_native_kernel_declines() -> None:
    qkv, batch, layer = _call(make_world(2, 4, 2, 32, 8, [6], norms=False, dtype=torch.bfloat16), 6)
    built = PagedBatch(**batch)
    assert paged_backend(qkv, built, PagedLayer(**layer)) == "reference"  # bf16 pools: no native path
    out = paged_attention(qkv, built, PagedLayer(**layer))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    qkv, batch, layer = _call(make_world(2, 4, 2, 32, 8, [6], norms=False), 6)
    built = PagedBatch(**batch)
    native = "native" if cpu_native.library() is not None else "reference"
    assert paged_backend(qkv, built, PagedLayer(**layer)) == native
    # Pools are written in place: a non-contiguous one (same values) goes to the twin, never to a copy.
    strided = layer["k_pool"].transpose(1, 2).contiguous().transpose(1, 2)
    assert paged_backend(qkv, built, PagedLayer(**{**layer, "k_pool": strided})) == "reference"
    # The choice is per layer and per activation dtype: a bf16 qkv on the same fp32 layer goes to the twin.
    spec = PagedLayer(**layer)
    assert paged_backend(qkv, built, spec) == native
    assert paged_backend(qkv.bfloat16(), built, spec) == "reference"
    qkv, batch, int8 = _call(make_world(2, 4, 2, 32, 8, [6], norms=False, kv_cache_dtype="int8"), 6)
    assert paged_backend(qkv, PagedBatch(**batch), PagedLayer(**int8)) == native


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "int8", "fp8_e4m3"])
def test_reference_matches_a_token_by_token_loop(kv_cache_dtype: str) -> None:
    """The twin itself against the definition, one token and head at a time (with the norms)."""
    world = make_world(11, 6, 2, 32, 8, [13, 29], norms=True, kv_cache_dtype=kv_cache_dtype)
    schedule = random_schedule(random.Random(11), world.lengths)
    out, pools = run(world, schedule, reference_paged_attention)
    bs, d, h, kv = world.block_size, world.d, world.h, world.kv
    k_pool, v_pool = pools["k_pool"].float(), pools["v_pool"].float()
    if kv_cache_dtype != "auto":
        k_pool, v_pool = k_pool * pools["k_scale"][..., None], v_pool * pools["v_scale"][..., None]
    rot = kv_rotation(d, kv_cache_dtype)  # fp8 pools: keys and values stored as x R, R orthonormal (R R = I)
    assert (rot is not None) == (kv_cache_dtype == "fp8_e4m3")
    if rot is not None:
        torch.testing.assert_close(rot @ rot, torch.eye(d), atol=1e-6, rtol=0)
    for (s, p), row in out.items():
        x = world.rows[s][p].reshape(h + 2 * kv, d)[:h]
        x = torch.nn.functional.rms_norm(x, (d,), world.q_norm, 1e-6)
        q = x * world.cos[p] + x.roll(d // 2, -1) * world.sin[p]
        slots = [(world.tables[s, t // bs], t % bs) for t in range(p + 1)]
        for hd in range(h):
            j = hd // (h // kv)
            keys = torch.stack([k_pool[b, j, o] for b, o in slots])
            vals = torch.stack([v_pool[b, j, o] for b, o in slots])
            qh = q[hd] if rot is None else q[hd] @ rot
            want = torch.softmax(keys @ qh * world.scale, 0) @ vals
            want = want if rot is None else want @ rot
            torch.testing.assert_close(row[hd * d : (hd + 1) * d], want, atol=1e-5, rtol=1e-5)


@needs_native
@pytest.mark.parametrize(("kv_cache_dtype", "bound"), [("int8", 0.015), ("fp8_e4m3", 0.05)])
def test_8bit_pools_stay_close_to_fp32_attention(kv_cache_dtype: str, bound: float) -> None:
    """The same tokens through 8-bit and fp32 pools: the attention outputs agree to about 1% (int8, 7 bits per
    value) or 3% (e4m3, a 3-bit mantissa) on these random rows."""
    runs = []
    for dtype in ("auto", kv_cache_dtype):
        world = make_world(13, 9, 3, 64, 16, [120, 40], norms=False, kv_cache_dtype=dtype)
        runs.append(run(world, random_schedule(random.Random(13), world.lengths), paged_attention)[0])
    fp32, codes = (torch.stack([r[key] for key in runs[0]]) for r in runs)
    err = ((codes - fp32).norm() / fp32.norm()).item()
    assert err < bound, f"{kv_cache_dtype} KV relative error {err:.2e}"


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


@needs_native
def test_native_fp8_codes_match_torch_at_every_rounding_boundary() -> None:
    """The native e4m3 encoder against torch's conversion: every e4m3 value, every midpoint between neighbours
    (ties go to even) and the floats just either side of each midpoint, subnormals included."""
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    values = values[torch.isfinite(values)].unique()
    mids = (values[1:] + values[:-1]) / 2
    near = [torch.nextafter(mids, torch.full_like(mids, sign * 1e9)) for sign in (1, -1)]
    cand = torch.cat([values, mids, *near])
    cand = cand[cand.abs() < 448]
    # Each row: d - 1 candidates and 448, so the scale is exactly 1 and the codes are the values themselves; d = 48
    # is no power of two, so the pools keep the plain basis (`kv_rotation`) and the encoder sees the values as given.
    d = 48
    assert kv_rotation(d, "fp8_e4m3") is None
    rows = -(-cand.numel() // (d - 1))
    body = torch.zeros(rows * (d - 1))
    body[: cand.numel()] = cand
    v = torch.cat([body.reshape(rows, d - 1), torch.full((rows, 1), 448.0)], 1)
    h, kv, bs = 2, 1, 16
    blocks = -(-rows // bs)
    qkv = torch.zeros(rows, (h + 2 * kv) * d)
    qkv[:, (h + kv) * d :] = v
    k_pool = torch.zeros(blocks, kv, bs, d, dtype=torch.float8_e4m3fn)
    v_pool, k_scale, v_scale = (
        torch.zeros_like(k_pool),
        torch.zeros(blocks, kv, bs),
        torch.zeros(blocks, kv, bs),
    )
    batch = PagedBatch(
        torch.arange(rows), torch.zeros(rows, dtype=torch.long), torch.arange(blocks, dtype=torch.int32)[None],
        torch.ones(rows, d), torch.zeros(rows, d),
    )  # fmt: skip
    paged_attention(qkv, batch, PagedLayer(k_pool, v_pool, h, 0.1, kv_cache_dtype="fp8_e4m3", k_scale=k_scale,
                                           v_scale=v_scale))  # fmt: skip
    got = v_pool.permute(0, 2, 1, 3).reshape(-1, d)[:rows]
    assert torch.equal(bits(got), bits(quantize_kv(v, "fp8_e4m3")[0]))
    assert torch.equal(v_scale.permute(0, 2, 1).reshape(-1)[:rows], torch.ones(rows))
    assert (got.float()[:, :-1] != 0).sum() > 1000  # the candidates really went through the encoder


def test_fp8_hadamard_basis_cuts_the_score_error_of_outlier_channels() -> None:
    """Why fp8 pools are rotated (`kv_rotation`): keys and queries that share a few large channels (as real models'
    do) put most of q . k in those channels, where e4m3's 3-bit mantissa errs the most in absolute terms. In the
    Hadamard basis the scores are the same (R orthonormal) and their fp8 error is about a third smaller."""
    gen = torch.Generator().manual_seed(5)
    d = 64
    k = torch.randn(4000, d, generator=gen)
    q = torch.randn(d, generator=gen)
    k[:, [3, 17]] *= 12.0  # two outlier channels, shared by the query
    q[[3, 17]] *= 6.0
    rot = kv_rotation(d, "fp8_e4m3")
    exact = k @ q

    def err(x: torch.Tensor, qq: torch.Tensor, kind: str) -> float:
        codes, s = quantize_kv(x, kind)
        return ((codes.float() * s[:, None]) @ qq - exact).pow(2).mean().sqrt().item()

    torch.testing.assert_close((k @ rot) @ (q @ rot), exact, atol=1e-3, rtol=1e-4)  # the same scores
    plain, turned = err(k, q, "fp8_e4m3"), err(k @ rot, q @ rot, "fp8_e4m3")
    assert turned < 0.75 * plain, (plain, turned)  # measured: 0.67x
    assert err(k, q, "int8") < plain  # int8 keeps the plain basis: already finer than fp8 there
