"""The batched tensor-core kernels (`jit.mma_kernel`, path `mma`; `jit.mma_t_kernel`, path `mma_t`) vs their
reference twin, for every format.

Twin: dequantize the weight in fp32 and multiply in fp32 (bf16 activations), or, for int8 activations
(`Q8Activations`), `cpu_native.reference_int8_activations`. Runs on a CUDA GPU; on CPU only under
`TRITON_INTERPRET=1` (a ~20 s subset, which `make test` runs).
"""

from __future__ import annotations

import itertools
import os
import random
from dataclasses import replace

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
from xpullm.kernels.triton import LaunchConfig, pack_weight, run, run_q8  # noqa: E402
from xpullm.kernels.triton.configs import (  # noqa: E402
    MMA_MAX_M,
    NARROW_MMA_T,
    Q8_FORMATS,
    candidates,
    default_config,
    mma_block_m,
    valid,
)
from xpullm.kernels.triton.launch import _prepare_x, quantize_activations  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu

FORMATS = [
    ("sym_int4", 128),
    ("sym_int4", 32),
    ("asym_int4", 64),
    ("nf4", 64),
    ("fp4", 32),
    ("sym_int8", 0),
    ("sym_int8", 32),
    ("fp8_e4m3", 0),
    ("fp8_e5m2", 64),
]
# (N, K, M, config): aligned and ragged shapes (K padding, N and M masking, partial K steps), split-K.
CASES = [
    (37, 200, 3, LaunchConfig("mma", 16, 32, 2, 1, 4, 2)),
    (64, 256, 20, LaunchConfig("mma", 16, 16, 2, 2, 4, 2)),
]
if not INTERPRET:
    CASES += [
        (300, 1030, 9, LaunchConfig("mma", 16, 64, 4, 2, 4, 3)),
        (1000, 1030, 64, LaunchConfig("mma", 64, 64, 8, 2, 4, 3)),
        (4096, 4096, 16, LaunchConfig("mma", 16, 64, 4, 4, 4, 3)),
        (2048, 4096, 100, LaunchConfig("mma", 32, 128, 4, 1, 8, 3)),
    ]


# The transposed kernel (`mma_t`: weight tile as the dot's left operand), one dot per step and one per plane.
T_CASES = [
    (37, 200, 3, LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2)),
    (128, 512, 20, LaunchConfig("mma_t", 16, 64, 4, 2, 4, 2, plane_dots=True)),
    (64, 256, 16, LaunchConfig("mma_t", 16, 64, 2, 1, 4, 2)),  # EVEN: whole tiles and steps, no masks
    (37, 300, 17, LaunchConfig("mma_t", 16, 64, 4, 2, 4, 2, natural=True)),
]
if not INTERPRET:
    T_CASES += [
        (300, 1030, 9, LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True)),
        (1000, 1030, 64, LaunchConfig("mma_t", 64, 128, 4, 2, 8, 3)),
        (4096, 4096, 16, LaunchConfig("mma_t", 16, 64, 4, 4, 4, 3)),
        (4096, 4096, 32, LaunchConfig("mma_t", 32, 64, 8, 2, 4, 3, plane_dots=True)),
        (2048, 4096, 100, LaunchConfig("mma_t", 32, 128, 2, 1, 8, 3)),
        (4096, 4096, 16, LaunchConfig("mma_t", 16, 64, 4, 4, 4, 3, natural=True)),
    ]


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _weight(fmt: str, gs: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return get_format(fmt).quantize(w, gs)


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y = y.float().cpu()
    assert y.shape == ref.shape
    assert torch.isfinite(y).all(), "non-finite output (an element was not written)"
    return ((y - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def _check_bf16_tile(fmt: str, gs: int, n: int, k: int, m: int, cfg: LaunchConfig) -> torch.Tensor:
    """Runs `cfg` on fresh random bf16 activations and a fresh weight; asserts it matches the fp32 twin."""
    seed = _seed()
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).bfloat16()
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    y = run(_prepare_x(x.to(DEVICE), tw), tw, cfg, out=out)
    err = _rel_err(y, x.float() @ qw.dequantize(torch.float32).T)
    # bf16 weights and activations in the dot, fp32 accumulation: ~6e-3 on these weights
    assert err < 1e-2, f"{fmt} g{gs} {n}x{k} m={m} {cfg} seed={seed}: relative error {err:.2e}"
    return x


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
@pytest.mark.parametrize("case", range(len(CASES + T_CASES)))
def test_tiles_match_reference(fmt, gs, case):
    _check_bf16_tile(fmt, gs, *(CASES + T_CASES)[case])


# One scale per K step (BKW = 16 words): what `fold` needs and what POST_SCALE sums the accumulators for.
STEP_SCALE_FORMATS = [("sym_int4", 128), ("asym_int4", 128), ("nf4", 256), ("fp4", 128), ("sym_int8", 0),
                      ("fp8_e4m3", 64)]  # fmt: skip


@pytest.mark.parametrize(("fmt", "gs"), STEP_SCALE_FORMATS)
@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("accs", [4] if INTERPRET else [2, 4, 8])
def test_mma_t_plane_dots_over_several_accumulators_and_folded_scales(fmt, gs, fold, accs):
    """The step's plane dots rotate over `accs` accumulators, summed per step (POST_SCALE) or at the end with
    the scale folded into the decode (`fold`): the same product as the reference either way."""
    shapes = [(128, 512, 9), (37, 300, 17)] + ([] if INTERPRET else [(4096, 4096, 16)])
    pairs = [False, True] if fmt == "sym_int4" else [False]
    for (n, k, m), pair in itertools.product(shapes, pairs):
        cfg = LaunchConfig("mma_t", 16, 64, 4, 2, 4, 2, plane_dots=True, pairs=pair, accs=accs, fold=fold)
        _check_bf16_tile(fmt, gs, n, k, m, cfg)  # K = 300: a split of two steps, the second one ragged


def test_mma_t_fold_and_accumulators_refuse_what_they_cannot_run():
    cfg = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, fold=True)
    tw = pack_weight(_weight("sym_int4", 32, 64, 256, 0), DEVICE)  # 4-word groups: four scales per step
    x = _prepare_x(torch.randn(3, 256).bfloat16().to(DEVICE), tw)
    with pytest.raises(ValueError, match="fold=False"):
        run(x, tw, cfg)
    with pytest.raises(ValueError, match="accs = 1, 2, 4 or 8"):
        run(x, tw, LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, accs=3))
    with pytest.raises(ValueError, match="only with plane_dots"):
        run(x, tw, LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, accs=2))


@pytest.mark.parametrize(
    ("n", "k", "m", "cfg"),
    [
        (37, 300, 5, LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, pairs=True)),
        (128, 512, 16, LaunchConfig("mma_t", 16, 64, 4, 2, 4, 2, plane_dots=True, pairs=True)),
        # 32 words per step: two groups of 128 per step, scaled per word
        (100, 1100, 16, LaunchConfig("mma_t", 16, 64, 8, 2, 4, 2, plane_dots=True, pairs=True)),
    ],
)
def test_mma_t_bf16x2_pair_decode_matches_reference(n, k, m, cfg):
    x = _check_bf16_tile("sym_int4", 128, n, k, m, cfg)
    # groups of 32 / 64 (GGUF Q4_0's is 32): several scales per step, each weight scaled in the decode
    for gs in (32, 64):
        _check_bf16_tile("sym_int4", gs, n, k, m, cfg)
    other = pack_weight(_weight("sym_int8", 0, n, k, 0), DEVICE)  # 8-bit codes: no pairs
    with pytest.raises(ValueError, match="pairs=False"):
        run(_prepare_x(x.to(DEVICE), other), other, cfg)


@pytest.mark.parametrize(
    ("fmt", "gs", "pairs"), [("sym_int4", 128, True), ("nf4", 64, True), ("sym_int8", 0, False)]
)
def test_mma_t_split_sum_in_the_kernel_equals_the_reduce_kernel_bit_for_bit(fmt, gs, pairs):
    """`fixup`: each output tile's last K split sums the partials in split order - the reduce kernel's order -
    so the output is the same bits as the two-launch path, call after call (the arrival counters return to
    zero), for ragged tiles and several M tiles too."""
    from xpullm.kernels.triton import launch

    cases = [((37, 300, 17), 2), ((128, 1024, 40), 4)]
    if not INTERPRET:
        cases += list(itertools.product([(37, 300, 17), (4096, 4096, 16), (28672, 4096, 64)], (2, 4, 8)))
    for (n, k, m), split in cases:
        base = LaunchConfig("mma_t", 16, 64, 4, split, 4, 2, plane_dots=True, pairs=pairs)
        fixed = replace(base, fixup=True)
        assert valid(fixed, pack_weight(_weight(fmt, gs, 64, 4096, 0), DEVICE), torch.bfloat16)
        x = _check_bf16_tile(fmt, gs, n, k, m, fixed)
        tw = pack_weight(_weight(fmt, gs, n, k, 7), DEVICE)
        x2 = _prepare_x(x.to(DEVICE), tw)
        want = run(x2, tw, base)
        for _ in range(2 if INTERPRET else 5):
            assert torch.equal(run(x2, tw, fixed), want), f"{fmt} {n}x{k} m={m} split={split}"
        assert not any(c.any() for c in launch._counters.values())  # every tile reset its counter
    one_split = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, fixup=True)
    assert not valid(one_split, pack_weight(_weight(fmt, gs, 64, 4096, 0), DEVICE), torch.bfloat16)


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("gs", [64, 128, 256])
@pytest.mark.parametrize("accs", [1, 4])
def test_mma_t_codebook_pair_decode_matches_reference(fmt, gs, accs):
    """nf4 / fp4 planes p and p + 4 decoded together into bf16x2 by byte permutes (`lut_pairs.py`): scaled in
    the decode by each word's group scale (group 64: two groups per 16-word step) or after the step's dots; with
    `quads` four planes per gather, the same product bit for bit."""
    shapes = [(128, 512, 9), (37, 300, 17)] + ([] if INTERPRET else [(4096, 4096, 16), (1000, 1030, 40)])
    for n, k, m in shapes:
        cfg = LaunchConfig("mma_t", 16, 64, 4, 2, 4, 2, plane_dots=True, pairs=True, accs=accs)
        x = _check_bf16_tile(fmt, gs, n, k, m, cfg)
        if not INTERPRET:  # the interpreter runs both decodes through the same register twin
            tw = pack_weight(_weight(fmt, gs, n, k, 3), DEVICE)
            x2 = _prepare_x(x.to(DEVICE), tw)
            assert torch.equal(run(x2, tw, replace(cfg, quads=True)), run(x2, tw, cfg)), (fmt, gs, n, k, m)


@pytest.mark.parametrize(("fmt", "gs"), [("sym_int4", 128), ("sym_int4", 32), ("nf4", 64), ("fp4", 128)])
@pytest.mark.parametrize("join", [2, 4])
@pytest.mark.parametrize("accs", [1, 2])
def test_mma_t_joined_pair_dots_match_reference(fmt, gs, join, accs):
    """`join`: the planes of one pair decode (2) or two (4) go into one dot of 2 / 4 times the K, the activations
    gathered in the same plane order: the reference's product, ragged shapes and 32-word steps included."""
    shapes = [(37, 300, 17), (128, 1024, 9)] + ([] if INTERPRET else [(4096, 4096, 16), (1000, 1030, 40)])
    for (n, k, m), kb in itertools.product(shapes, (4, 8)):
        cfg = LaunchConfig("mma_t", 16, 64, kb, 2, 4, 2, plane_dots=True, pairs=True, join=join, accs=accs)
        _check_bf16_tile(fmt, gs, n, k, m, cfg)
    tw = pack_weight(_weight(fmt, gs, 64, 256, 0), DEVICE)
    with pytest.raises(ValueError, match="pairs=True"):
        run(_prepare_x(torch.randn(2, 256).bfloat16().to(DEVICE), tw), tw,
            LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, join=join))  # fmt: skip


@pytest.mark.parametrize(("fmt", "gs"), [("sym_int4", 128), ("sym_int4", 32), ("nf4", 64), ("fp4", 128)])
def test_narrow_mma_sync_tiles_match_reference(fmt, gs):
    """`configs.NARROW_MMA_T`: 16-64 weight rows on 1-2 warps (per-warp `mma.sync` dots on a GPU), every K split
    summed in the kernel: the reference's product on ragged and whole shapes (a random handful of the tiles in
    the interpreter, 12 on a GPU)."""
    rnd = random.Random(_seed())
    tiles = rnd.sample(NARROW_MMA_T, 3 if INTERPRET else 12)
    shapes = [(37, 300, 5), (64, 1024, 16)] + ([] if INTERPRET else [(4096, 4096, 16), (1000, 1030, 32)])
    for cfg, (n, k, m) in itertools.product(tiles, shapes):
        cfg = replace(cfg, block_m=mma_block_m(m), quads=fmt in ("nf4", "fp4"))
        if valid(cfg, pack_weight(_weight(fmt, gs, n, k, 0), DEVICE), torch.bfloat16):
            _check_bf16_tile(fmt, gs, n, k, m, cfg)


def test_split_sum_candidates_follow_their_switch(monkeypatch):
    tw = pack_weight(_weight("sym_int4", 128, 256, 4096, 0), DEVICE)
    monkeypatch.setenv("XPULLM_TRITON_FIXUP", "0")
    assert not any(c.fixup for c in candidates("cuda", tw, 16, torch.bfloat16))
    monkeypatch.delenv("XPULLM_TRITON_FIXUP")  # default: on (their GPU tests passed)
    fixed = [c for c in candidates("cuda", tw, 16, torch.bfloat16) if c.fixup]
    assert fixed and all(c.path == "mma_t" and c.split_k > 1 for c in fixed)


def test_codebook_pair_candidates_follow_their_switch(monkeypatch):
    tw = pack_weight(_weight("nf4", 64, 64, 512, 0), DEVICE)
    monkeypatch.setenv("XPULLM_TRITON_MORE_PAIRS", "0")
    assert not [c for c in candidates("cuda", tw, 16, torch.bfloat16) if c.pairs]
    g32 = pack_weight(_weight("sym_int4", 32, 64, 512, 0), DEVICE)  # per-word scales
    assert not [c for c in candidates("cuda", g32, 16, torch.bfloat16) if c.pairs]
    g128 = pack_weight(_weight("sym_int4", 128, 64, 512, 0), DEVICE)  # the first pairs: always a candidate
    assert [c for c in candidates("cuda", g128, 16, torch.bfloat16) if c.pairs]
    assert not [c for c in candidates("cuda", g128, 16, torch.bfloat16) if c.join > 1]  # joined dots: off too
    monkeypatch.delenv("XPULLM_TRITON_MORE_PAIRS")  # default: on (their GPU tests passed)
    assert [c for c in candidates("cuda", tw, 16, torch.bfloat16) if c.pairs]
    fp4 = pack_weight(_weight("fp4", 64, 64, 512, 0), DEVICE)  # fp4's levels go the same way
    assert [c for c in candidates("cuda", fp4, 16, torch.bfloat16) if c.pairs]
    assert [c for c in candidates("cuda", g32, 16, torch.bfloat16) if c.pairs]
    assert [c for c in candidates("cuda", g128, 16, torch.bfloat16) if c.join > 1]
    int8 = pack_weight(_weight("sym_int8", 0, 64, 512, 0), DEVICE)  # no 4-bit codes, no pairs
    assert not [c for c in candidates("cuda", int8, 16, torch.bfloat16) if c.pairs]


def test_codebook_decodes_in_registers_equal_the_tables():
    """mma_t decodes nf4 by a select tree and fp4 by its bit pattern: every code gives the table's level."""
    from xpullm.kernels.codebook import CODEBOOKS

    for fmt in ("nf4", "fp4"):
        k = 256
        codes = torch.arange(16).repeat(k // 16)  # every code in every plane position
        levels = torch.tensor(CODEBOOKS[fmt])
        w = levels[codes].repeat(16, 1)  # 16 rows; absmax 1 (nf4) / 6 (fp4) per group -> scale 1 on nf4
        tw = pack_weight(get_format(fmt).quantize(w, 64), DEVICE)
        x = torch.eye(k)[:16].bfloat16()  # picks the first 16 columns of each row
        cfg = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True)
        y = run(_prepare_x(x.to(DEVICE), tw), tw, cfg).float().cpu()
        ref = x.float() @ get_format(fmt).quantize(w, 64).dequantize(torch.float32).T
        # y[i, n] = W[n, i]: one decoded weight, rounded to bf16 twice (operand, output); levels are >= 5% apart
        assert torch.allclose(y, ref, rtol=2**-7, atol=0), (fmt, (y - ref).abs().max())


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_mma_on_int8_activations_matches_its_twin(fmt, gs, case):
    from xpullm.kernels.cpu_native import reference_int8_activations

    n, k, m, cfg = CASES[case]
    seed = _seed()
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)).bfloat16()
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    y = run_q8(quantize_activations(x.to(DEVICE)), tw, cfg, out=out)
    err = _rel_err(y, reference_int8_activations(x.float(), qw))
    assert err < 1e-2, f"{fmt} g{gs} {n}x{k} m={m} {cfg} seed={seed}: relative error {err:.2e}"


def test_registry_offers_mma_tiles_per_row_bucket(monkeypatch):
    tw = pack_weight(_weight("nf4", 64, 64, 256, 0), DEVICE)
    monkeypatch.setenv("XPULLM_TRITON_MMA", "0")
    assert not [c for c in candidates("cuda", tw, 16, torch.bfloat16) if c.path == "mma"]  # switched off
    assert default_config(tw, 16, torch.bfloat16).path != "mma"  # untimed choices stay on the older paths
    monkeypatch.delenv("XPULLM_TRITON_MMA", raising=False)  # the default: timed beside the others
    for m, bm in ((2, 16), (16, 16), (32, 32), (200, 64)):
        mma = [c for c in candidates("cuda", tw, m, torch.bfloat16) if c.path == "mma"]
        assert mma and all(c.block_m == bm == mma_block_m(m) for c in mma)
    assert not [c for c in candidates("cuda", tw, 2 * MMA_MAX_M, torch.bfloat16) if c.path == "mma"]
    assert not [c for c in candidates("cuda", tw, 16, torch.float32) if c.path == "mma"]  # no tf32 dots
    int4 = pack_weight(_weight("sym_int4", 128, 64, 256, 0), DEVICE)
    assert not [c for c in candidates("cuda", int4, 1, torch.bfloat16) if c.path == "mma"]  # dp4a GEMV there


def test_untimed_choice_is_the_batched_tile_to_64_rows_then_dequantize(monkeypatch):
    """Without timing (interpreter, graph capture, XPULLM_TRITON_AUTOTUNE=0) 2-64 bf16 rows take the tile families
    the H100 table holds most: `mma_t` plane dots with the bf16x2 pair decode joined four planes a dot where one
    scale covers a K step (nf4 / fp4 four codes a gather), else plain plane dots (grouped steps, asym_int4, and fp8,
    whose rows the untimed path does not round); as many of 4 K splits as K holds; and the product is right."""
    monkeypatch.delenv("XPULLM_TRITON_MMA", raising=False)
    monkeypatch.delenv("XPULLM_TRITON_MORE_PAIRS", raising=False)
    seed = _seed()
    cases = (
        ("sym_int4", 128, 64, 1024, ("mma_t", True, 4, False)),
        ("nf4", 128, 37, 384, ("mma_t", True, 4, True)),
        ("nf4", 64, 37, 300, ("mma_t", False, 1, False)),  # a K step spans two groups: no pairs
        ("asym_int4", 32, 48, 512, ("mma_t", False, 1, False)),
        ("fp8_e4m3", None, 40, 384, ("mma_t", False, 1, False)),
    )
    for fmt, gs, n, k, (path, pairs, join, quads) in cases:
        qw = _weight(fmt, gs, n, k, seed)
        tw = pack_weight(qw, DEVICE)
        assert default_config(tw, 1, torch.bfloat16).path == "gemv"
        for m, bm in ((3, 16), (16, 16), (40, 64), (64, 64)):
            cfg = default_config(tw, m, torch.bfloat16)
            want = (path, bm, pairs, join, quads)
            assert (cfg.path, cfg.block_m, cfg.pairs, cfg.join, cfg.quads) == want, cfg
            assert valid(cfg, tw, torch.bfloat16) and cfg.plane_dots and not cfg.fixup
            step = cfg.block_kb * 4  # words of a K step
            assert cfg.split_k == (4 if tw.kw >= 8 * step else 2 if tw.kw >= 4 * step else 1)
        x = torch.randn(40, k, generator=torch.Generator().manual_seed(seed + 1)).bfloat16()
        y = run(_prepare_x(x.to(DEVICE), tw), tw, default_config(tw, 40, torch.bfloat16))
        assert _rel_err(y, x.float() @ qw.dequantize(torch.float32).T) < 1e-2, f"{fmt} seed={seed}"
        assert default_config(tw, 65, torch.bfloat16).path == "dequant"
        assert default_config(tw, 16, torch.float32).path != "mma_t"  # fp32 rows: no tf32 dots
    int4 = pack_weight(_weight("sym_int4", 128, 64, 1024, seed), DEVICE)
    fp16 = default_config(int4, 16, torch.float16)
    # the bf16x2 decode is for bf16 activations
    assert fp16.path == "mma_t" and not fp16.pairs and fp16.join == 1
    g32 = pack_weight(_weight("sym_int4", 32, 64, 1024, seed), DEVICE)
    assert not default_config(g32, 16, torch.bfloat16).pairs  # a step over several groups: no pairs
    monkeypatch.setenv("XPULLM_TRITON_MORE_PAIRS", "0")  # the switch holds for the untimed choice too
    basic = default_config(int4, 16, torch.bfloat16)
    assert basic.pairs and basic.join == 1  # joined dots are off; one scale a step: the basic pairs stay
    monkeypatch.setenv("XPULLM_TRITON_MMA", "0")
    assert default_config(int4, 16, torch.bfloat16).path == "dot"


def test_mma_refuses_fp32_activations_and_short_tiles():
    tw = pack_weight(_weight("sym_int4", 32, 37, 200, 0), DEVICE)
    x = _prepare_x(torch.randn(3, 200, device=DEVICE), tw)
    with pytest.raises(ValueError, match="bf16 / fp16"):
        run(x, tw, LaunchConfig("mma", 16, 32, 2, 1, 4, 2))
    with pytest.raises(ValueError, match="block_m >= 16"):
        run(x.bfloat16(), tw, LaunchConfig("mma", 8, 32, 2, 1, 4, 2))
