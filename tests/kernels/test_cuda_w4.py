"""The CUDA C++ int4 kernel (`kernels/cuda/w4_mma.cu`, path `cuda_w4`) vs its reference twin.

Twin: the weight dequantized in fp32 times the bf16 activations in fp64. The kernel multiplies the codes' exact
values (q - 8 for sym_int4, q for asym_int4, in bf16) by the bf16 activations with fp32 accumulation, scales each
128-code chunk's dot in fp32 (and adds the zero point times the chunk's activation sum), so before its one rounding to the bf16 output it differs from the twin only by fp32 summation order: every output
is the twin's rounded to bf16 within one bf16 step (plus a hair for outputs that cancel to near zero).
Runs where a CUDA GPU and `nvcc` are (the device runs; CI skips the GPU half). The checks that need no GPU run
everywhere.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from xpullm.formats import get_format
from xpullm.kernels import cuda
from xpullm.kernels.triton import LaunchConfig, launch, pack_weight, run
from xpullm.kernels.triton.configs import CONFIG_TABLES, candidates, switched_on, valid
from xpullm.kernels.triton.launch import _prepare_x, _tile_counters

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda") if HAS_CUDA else None
gpu = pytest.mark.skipif(
    not (HAS_CUDA and cuda.loadable(DEVICE)),
    reason=f"needs a CUDA GPU (sm_80+) and nvcc: {cuda.build_error(DEVICE) if HAS_CUDA else 'no GPU'}",
)
POOL = CONFIG_TABLES["cuda"]["cuda_w4"]


@pytest.fixture(autouse=True)
def _switched_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPULLM_CUDA_KERNELS", "1")  # opt-in until these tests have run on a GPU


def _weight(n: int, k: int, gs: int, seed: int, fmt: str = "sym_int4"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return get_format(fmt).quantize(w, gs)


def _check(y: torch.Tensor, x: torch.Tensor, qw, what: str) -> None:
    ref = (x.double() @ qw.dequantize(torch.float32).double().T).float()
    want = ref.bfloat16().float()
    got = y.float().cpu()
    assert torch.isfinite(got).all(), f"{what}: an output was not written"
    step = want.abs() * 2.0**-7  # one bf16 step at most (8 significant bits)
    slack = 1e-5 * ref.abs().max()
    bad = (got - want).abs() > step + slack
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} outputs off by more than one bf16 step, e.g. {got[bad][:4]} vs {want[bad][:4]}"
    )


def test_candidates_are_left_out_where_the_kernel_cannot_run():
    """No GPU (here: a CPU weight): the tuner never times `cuda_w4`, and running it says what it needs."""
    tw = pack_weight(_weight(64, 256, 128, 0), "cpu")
    assert not any(valid(c, tw, torch.bfloat16) for c in POOL)
    assert not any(switched_on(c, tw) for c in POOL)  # a tuned record of the path is passed over here
    with pytest.raises(ValueError, match="cuda_w4 runs sym_int4"):
        run(torch.zeros(4, 256, dtype=torch.bfloat16), tw, replace(POOL[0], block_m=4))


@gpu
def test_matches_twin_over_random_shapes():
    rng = random.SystemRandom()
    seed0 = rng.randrange(2**31)
    r = random.Random(seed0)
    for trial in range(60):
        n = r.choice([1, 15, 16, 17, 64, 100, 257, 640, 1000, 4096])
        k = r.choice([128, 200, 256, 1030, 2048, 4096])
        gs = r.choice([128, 256])
        m = r.randint(2, 64)
        fmt = r.choice(["sym_int4", "asym_int4"])
        qw = _weight(n, k, gs, seed0 + trial, fmt)
        tw = pack_weight(qw, DEVICE)
        pool = [c for c in POOL if valid(replace(c, block_m=m), tw, torch.bfloat16)]
        assert pool, f"no cuda_w4 tile takes {fmt} {n}x{k} g{gs} m={m}"
        cfg = replace(r.choice(pool), block_m=m)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed0 + trial + 1)).bfloat16()
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        y = run(_prepare_x(x.to(DEVICE), tw), tw, cfg, out=out)
        _check(y, x, qw, f"seed0={seed0} trial={trial} {fmt} {n}x{k} g{gs} m={m} {cfg}")


@gpu
@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4"])
@pytest.mark.parametrize("m", [2, 8, 9, 16, 31, 64])
def test_every_tile_of_the_pool(m, fmt):
    """Each (tiles, warps, split) of the table on a ragged shape (N not a multiple of any tile, K padded)."""
    qw = _weight(300, 1030, 128, m, fmt)
    tw = pack_weight(qw, DEVICE)
    x = torch.randn(m, 1030, generator=torch.Generator().manual_seed(m)).bfloat16()
    xd = _prepare_x(x.to(DEVICE), tw)
    ran = 0
    for cfg in POOL:
        cfg = replace(cfg, block_m=m)
        if not valid(cfg, tw, torch.bfloat16):
            continue
        _check(run(xd, tw, cfg), x, qw, f"{fmt} m={m} {cfg}")
        ran += 1
    assert ran >= 12


@gpu
def test_split_sums_are_deterministic_and_leave_the_counters_zero():
    qw = _weight(4096, 4096, 128, 7)
    tw = pack_weight(qw, DEVICE)
    x = _prepare_x(torch.randn(16, 4096, device=DEVICE, dtype=torch.bfloat16), tw)
    cfg = LaunchConfig("cuda_w4", 16, 128, 4, 8, 4, 1, tiles=2)
    assert valid(cfg, tw, torch.bfloat16)
    first = run(x, tw, cfg)
    for _ in range(5):
        assert torch.equal(run(x, tw, cfg), first)
    torch.cuda.synchronize()
    assert int(_tile_counters(DEVICE, 1).abs().sum()) == 0


@gpu
def test_the_tuner_times_it_for_the_integer_4_bit_formats_only():
    qw = _weight(512, 1024, 128, 3)
    tw = pack_weight(qw, DEVICE)
    assert any(c.path == "cuda_w4" for c in candidates("cuda", tw, 16, torch.bfloat16))
    assert not any(c.path == "cuda_w4" for c in candidates("cuda", tw, 16, torch.float16))
    assert not any(c.path == "cuda_w4" for c in candidates("cuda", tw, 128, torch.bfloat16))
    asym = pack_weight(_weight(512, 1024, 256, 5, "asym_int4"), DEVICE)
    assert any(c.path == "cuda_w4" for c in candidates("cuda", asym, 8, torch.bfloat16))
    nf4 = pack_weight(get_format("nf4").quantize(torch.randn(512, 1024), 128), DEVICE)
    assert not any(c.path == "cuda_w4" for c in candidates("cuda", nf4, 16, torch.bfloat16))
    g32 = pack_weight(_weight(512, 1024, 32, 4), DEVICE)
    assert not any(c.path == "cuda_w4" for c in candidates("cuda", g32, 16, torch.bfloat16))


@gpu
def test_a_record_of_the_path_is_passed_over_when_the_kernels_are_switched_off(monkeypatch):
    tw = pack_weight(_weight(256, 512, 128, 9), DEVICE)
    cfg = LaunchConfig("cuda_w4", 16, 128, 4, 2, 4, 1, tiles=2)
    launch.select_config(tw, 16, torch.bfloat16)  # the packaged tables are loaded before the record is set
    monkeypatch.setitem(launch._tuned, launch._key(tw, 16, torch.bfloat16), cfg)
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "0")
    assert launch.select_config(tw, 16, torch.bfloat16) == cfg
    monkeypatch.setenv("XPULLM_CUDA_KERNELS", "0")
    assert launch.select_config(tw, 16, torch.bfloat16).path != "cuda_w4"


def _kernel_model(x: torch.Tensor, tw) -> torch.Tensor:
    """w4_mma.cu's arithmetic, written out in PyTorch with its index maps: which nibble of which word each lane
    puts in each mma K slot, where `stage_store` puts each activation, the per-chunk scale (and zero-point) step.
    Lets a machine without a GPU check the kernel's K order against the layout `pack_weight` writes."""
    m = x.shape[0]
    words = tw.words.long() & 0xFFFFFFFF
    asym = tw.zeros is not None
    e = torch.arange(128)
    q, u = e // 8, e % 8
    pos = (2 * (u & 3) + (q & 1)) * 16 + (q >> 2) * 4 + ((q & 3) >> 1) + 2 * (u >> 2)  # stage_store
    assert sorted(pos.tolist()) == list(range(128))
    out = torch.zeros(m, tw.n, dtype=torch.float64)
    for c in range(tw.kw // 16):
        chunk = x[:, c * 128 : (c + 1) * 128].double()
        staged = torch.empty_like(chunk)
        staged[:, pos] = chunk
        part = torch.zeros(m, tw.n, dtype=torch.float64)
        for s in range(8):
            for t in range(4):
                w = words[:, c * 16 + 4 * t + s // 2] >> (8 * (s % 2))
                # slots (2t, 2t+1, 2t+8, 2t+9): nibbles p, p+4 (a0 / a1) and p+1, p+5 (a2 / a3) of the shifted word
                a = torch.stack([w & 0xF, (w >> 16) & 0xF, (w >> 4) & 0xF, (w >> 20) & 0xF], 1).double()
                a = a if asym else a - 8
                b = staged[:, s * 16 + t * 4 : s * 16 + t * 4 + 4]  # b0 = (j0, j1), b1 = (j2, j3)
                part += b @ a.T
        gi = 0 if tw.group_words >= 1 << 30 else c // (tw.group_words // 16)
        out += part * tw.scales[:, gi].double()
        if asym:
            out += chunk.sum(1, keepdim=True) * tw.zeros[:, gi].double()
    return out


@pytest.mark.parametrize("fmt", ["sym_int4", "asym_int4"])
@pytest.mark.parametrize(("n", "k", "gs"), [(24, 256, 128), (9, 1030, 256), (16, 1536, 256)])
def test_the_kernels_k_order_matches_the_layout(fmt, n, k, gs):
    """No GPU needed: the kernel's index maps (`_kernel_model`) on `pack_weight`'s words give the twin's product."""
    qw = _weight(n, k, gs, n + k, fmt)
    tw = pack_weight(qw, "cpu")
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(k)).bfloat16()
    got = _kernel_model(_prepare_x(x, tw), tw)
    ref = x.double() @ qw.dequantize(torch.float32).double().T
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())
