"""Triton paged attention vs its PyTorch twin, and its batch invariance.

Runs on a CUDA GPU when one is present. On CPU-only machines the module is skipped unless Triton's interpreter is
switched on (`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_paged_attention.py`, as `make test` does): then
a few small worlds run on CPU tensors in the interpreter, which checks the block-table indexing, the masking of
columns past a position, the online softmax, GQA and the norms, but not GPU-only rounding.
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

from tests.kernels.paged_cases import batch_of, layer_of, make_world, random_schedule, run, seq_slots  # noqa: E402
from xpullm.kernels import paged  # noqa: E402
from xpullm.kernels.paged import (  # noqa: E402
    reference_attend,
    reference_paged_attention,
    reference_rotate,
)
from xpullm.kernels.triton.paged_attention import paged_attention  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu

# (H, KV, D, block size, sequence lengths, norms): GQA groups 2, 3, 1 and 8; block sizes below, at and above
# the kernel's 16..64-column tiles; a tile that spans several blocks; one-token sequences.
CASES = (
    [(4, 2, 32, 8, [9, 20, 1], False), (3, 1, 64, 16, [21, 6], True), (2, 2, 128, 32, [34], False)]
    if INTERPRET
    else [
        (h, kv, d, bs, lengths, norms)
        for (h, kv) in ((4, 2), (9, 3), (8, 8), (32, 4))
        for d in (32, 64, 128)
        for bs in (8, 16, 32)
        for lengths, norms in (([37, 1, 130, 64], False), ([300, 9], True))
    ]
)
# (activation dtype, kv_cache_dtype): float pools hold the activation dtype; int8 pools codes + fp32 scales.
# bf16 activations over int8 codes: the GPU engine's 8-bit setting (the interpreter casts int8 to bf16 bit for
# bit, so the kernel converts through fp32; this case caught it).
POOLS = [
    (torch.float32, "auto"),
    (torch.bfloat16, "auto"),
    (torch.float32, "int8"),
    (torch.float32, "fp8_e4m3"),
    (torch.bfloat16, "int8"),
]
if not INTERPRET:
    POOLS += [(torch.float16, "auto"), (torch.bfloat16, "fp8_e4m3")]


def _two_step(lengths: list[int], seed: int) -> list[list[tuple[int, int, int]]]:
    """A short schedule for the interpreter: a random prompt chunk of every sequence, then the rest mixed."""
    rng = random.Random(seed)
    cut = [rng.randint(1, n) for n in lengths]
    first = [(s, 0, c) for s, c in enumerate(cut)]
    rest = [(s, c, n - c) for s, (c, n) in enumerate(zip(cut, lengths, strict=True)) if n > c]
    rng.shuffle(rest)
    return [first, rest] if rest else [first]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float().cpu(), want.float().cpu()
    assert torch.isfinite(got).all()
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize(("dtype", "kv_cache_dtype"), POOLS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize(("h", "kv", "d", "bs", "lengths", "norms"), CASES)
def test_triton_paged_attention_matches_its_twin(h, kv, d, bs, lengths, norms, dtype, kv_cache_dtype) -> None:
    seed = random.SystemRandom().randrange(2**31)
    world = make_world(
        seed, h, kv, d, bs, lengths, norms, dtype=dtype, fill=float("nan"), kv_cache_dtype=kv_cache_dtype
    ).to(DEVICE)
    schedule = _two_step(lengths, seed) if INTERPRET else random_schedule(random.Random(seed), lengths)
    pairs: list = []

    def checked(qkv: torch.Tensor, batch: paged.PagedBatch, layer: paged.PagedLayer) -> torch.Tensor:
        """The kernel, and the twin's phase 2 on the pools the kernel wrote: an 8-bit code that the two sides
        rounded to different sides of a boundary (rare, from fp32 rounding of the rotation) cannot blur the check."""
        out = paged_attention(qkv, batch, layer)
        q, _, _ = reference_rotate(qkv, batch, layer)
        pairs.append((out, reference_attend(q, batch, layer)))
        return out

    _, pools = run(world, schedule, checked)
    _, ref_pools = run(world, schedule, reference_paged_attention)
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    for got, want in pairs:
        err = _rel_err(got, want)
        assert err < tol, f"seed={seed}: output relative error {err:.2e}"
    # Pools: both sides round fp32 values once to the pools' dtype, so at most one step apart (the interpreter
    # truncates to bf16 where a GPU rounds to nearest: up to a whole step there).
    # int8 pools: codes at most one step apart (a value on a rounding boundary), their scales to fp32 rounding.
    for s in range(len(lengths)):
        for name in ref_pools:
            a, b = seq_slots(world, pools[name], s).cpu(), seq_slots(world, ref_pools[name], s).cpu()
            if a.dtype == torch.int8:
                diff = (a.int() - b.int()).abs()
                assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01, f"seed={seed}: seq {s} {name}"
                continue
            if a.dtype == torch.float8_e4m3fn:  # one e4m3 step: 1/8 of a normal value, 2^-9 below 2^-6
                a, b = a.float(), b.float()
                off = (a - b).abs()
                assert (off <= b.abs() / 8 + 2.0**-9).all(), f"seed={seed}: seq {s} {name}"
                assert (off > 0).float().mean() < 0.01, f"seed={seed}: seq {s} {name}"
                continue
            step = {torch.float32: 2.0**-20, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[a.dtype]
            a, b = a.float(), b.float()
            worst = ((a - b).abs() / (step * b.abs() + 1e-6)).max().item()
            assert worst <= 1.0, f"seed={seed}: seq {s} {name} {worst:.1f}x one rounding step off"


@pytest.mark.parametrize(("h", "kv", "d", "bs", "lengths", "norms"), CASES[:2])
def test_triton_paged_attention_is_batch_invariant(h, kv, d, bs, lengths, norms) -> None:
    """A sequence alone (one chunk) and mixed with the others in other chunks: bitwise the same rows."""
    seed = random.SystemRandom().randrange(2**31)
    world = make_world(seed, h, kv, d, bs, lengths, norms, dtype=torch.bfloat16).to(DEVICE)
    mixed, _ = run(world, _two_step(lengths, seed), paged_attention)
    for s, n in enumerate(lengths):
        alone, _ = run(world, [[(s, 0, n)]], paged_attention)
        for p in range(n):
            assert torch.equal(alone[(s, p)], mixed[(s, p)]), f"seed={seed}: seq {s} pos {p}"


# A 150-token and a 30-token sequence: a 150-token prompt (three launches of <= 64 tokens), a 30-token one,
# then decode tokens side by side. The table holds 10 blocks of 16: 3 splits of 64-column tiles.
SPLIT_SCHEDULE = [[(0, 0, 150)], [(1, 0, 30)], *[[(0, 150 + i, 1), (1, 30 + i, 1)] for i in range(2)]]
SPLIT_CASES = [("auto", 100, 4)]  # (kv_cache_dtype, window, sinks)
if not INTERPRET:
    SPLIT_CASES += [("int8", 0, 0), ("auto", 0, 0), ("fp8_e4m3", 0, 0), ("int8", 60, 8)]


# Besides the shipped tile (None), one the benchmark times (`paged_attention.Tile`): 32-column tiles, the next one
# prefetched, a 128-column split floor (the 30-token sequence then fits one split, written without the merge). In
# the interpreter int8 pools split only through it (the twin test's small worlds fit one split).
SPLIT_RUNS = [(*case, None) for case in SPLIT_CASES] + [("int8", 0, 0, (32, 4, True, 128))]


@pytest.mark.parametrize(("kv_cache_dtype", "window", "sinks", "tile"), SPLIT_RUNS)
def test_split_columns_match_the_twin_and_the_one_program_result(
    kv_cache_dtype: str, window: int, sinks: int, tile: tuple | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each token's columns split over several programs, merged after (`_splits`; a 150-token step in launches of
    64 tokens): outputs within fp32 rounding of the twin's, and of the same kernel with one program per (token, kv
    head); with a window and sinks, split 0 also takes the sinks."""
    from xpullm.kernels.triton import paged_attention as kernel_module

    if tile is not None:
        monkeypatch.setattr(kernel_module, "_tile", lambda d, itemsize, codes: kernel_module.Tile(*tile))

    seed = random.SystemRandom().randrange(2**31)
    world = make_world(
        seed,
        4,
        2,
        32,
        16,
        [200, 70],
        True,
        dtype=torch.float32,
        fill=float("nan"),
        kv_cache_dtype=kv_cache_dtype,
    ).to(DEVICE)
    columns = world.tables.shape[1] * 16 if not window else window + sinks
    assert kernel_module._splits(columns, 64) > 1
    if INTERPRET:  # 64 multiprocessors assumed: each program of a 64-token launch takes two of the 3 splits
        assert kernel_module._split_programs(64, 2, 3, DEVICE) == 2
    split, _ = run(world, SPLIT_SCHEDULE, paged_attention, window, sinks)
    want, _ = run(world, SPLIT_SCHEDULE, reference_paged_attention, window, sinks)
    monkeypatch.setenv("XPULLM_PAGED_SPLITS", "1")
    whole, _ = run(world, SPLIT_SCHEDULE, paged_attention, window, sinks)
    tol = 1e-4 if kv_cache_dtype == "auto" else 2e-2  # 8-bit: a code may round a step apart between the sides
    for key in want:
        torch.testing.assert_close(split[key], want[key], atol=tol, rtol=1e-3, msg=f"seed={seed}: {key}")
        torch.testing.assert_close(split[key], whole[key], atol=1e-5, rtol=1e-4, msg=f"seed={seed}: {key}")


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="dispatch to Triton needs a CUDA tensor")
def test_dispatch_picks_triton_on_cuda() -> None:
    world = make_world(0, 4, 2, 64, 16, [5], False, dtype=torch.bfloat16).to(DEVICE)
    qkv, batch = batch_of(world, [(0, 0, 5)])
    assert paged.paged_backend(qkv, batch, layer_of(world, world.pools)) == "triton"
