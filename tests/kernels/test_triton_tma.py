"""The batched tiles' TMA load path (`tma=True`: each K step's weight tile by one tensor-descriptor copy).

A load path changes no number: every `mma_t` / `w8a8_t` tile must give bitwise the product of its thread-load twin,
over random whole-tile shapes, row counts, splits and formats. Tiles that would need masked weight loads decline
with the reason; XPULLM_TRITON_TMA=0 keeps the tuner and the tuned records off the path. Runs on a CUDA GPU
(Hopper+) and on CPU under `TRITON_INTERPRET=1` (which `make test` runs).
"""

from __future__ import annotations

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
from xpullm.kernels.triton import LaunchConfig, pack_weight, run  # noqa: E402
from xpullm.kernels.triton.configs import (  # noqa: E402
    can_tma,
    candidates,
    mma_block_m,
    switched_on,
    valid,
)
from xpullm.kernels.triton.launch import _prepare_x  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu
if DEVICE.type == "cuda" and torch.cuda.get_device_capability()[0] < 9:
    pytest.skip("TMA copies need compute capability 9.0+ (Hopper)", allow_module_level=True)

# (format, group size, the tile family's fields)
FAMILIES = [
    ("sym_int4", 128, dict(plane_dots=True, pairs=True, join=4)),
    ("sym_int4", 32, dict(plane_dots=True, pairs=True)),
    ("asym_int4", 64, dict(plane_dots=True, accs=2)),
    ("nf4", 64, dict(plane_dots=True, pairs=True, join=2)),
    ("sym_int8", 0, dict(plane_dots=True)),
    ("fp8_e4m3", 0, dict(plane_dots=True, fold=True)),
    ("fp8_e4m3", 0, dict(path="w8a8_t")),
]


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _weight(fmt: str, gs: int, n: int, k: int, seed: int):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.03
    return pack_weight(get_format(fmt).quantize(w, gs), DEVICE)


def _x(m: int, tw, seed: int) -> torch.Tensor:
    x = torch.randn(m, tw.k, generator=torch.Generator().manual_seed(seed))
    return _prepare_x(x.to(DEVICE, torch.bfloat16), tw)


@pytest.mark.parametrize("fmt,gs,family", FAMILIES, ids=lambda v: str(v))
def test_tma_tiles_give_the_thread_loads_numbers_bit_for_bit(fmt: str, gs: int, family: dict) -> None:
    seed = _seed()
    rng = random.Random(seed)
    fields = dict(family)
    path = fields.pop("path", "mma_t")
    cases = 2 if INTERPRET else 6
    ran = 0
    for case in range(40):  # draws until `cases` valid tiles ran (some draws cannot run the family)
        if ran == cases:
            break
        block_n = rng.choice([16, 32, 64] if INTERPRET else [32, 64, 128])
        split = rng.choice([1, 2, 4])
        step = 256 if path == "w8a8_t" else 128  # elements per K step (8-bit bytes / 4-bit: 4 words of 32)
        n = block_n * rng.randint(1, 3 if INTERPRET else 40)
        k = step * split * rng.randint(1, 2 if INTERPRET else 8)
        m = rng.randint(1, 40)
        kb = 16 if path == "w8a8_t" else 4
        cfg = LaunchConfig(
            path, mma_block_m(16 if m <= 16 else 64), block_n, kb, split, 4, 2,
            fixup=split > 1 and rng.random() < 0.5, **fields,
        )  # fmt: skip
        tw = _weight(fmt, gs, n, k, seed + case)
        if not valid(cfg, tw, torch.bfloat16):
            continue
        copies = replace(cfg, tma=True)
        assert valid(copies, tw, torch.bfloat16), (seed, fmt, n, k, cfg)
        x = _x(m, tw, seed + 100 + case)
        want = run(x, tw, cfg)
        got = run(x, tw, copies)
        assert torch.equal(got, want), (seed, fmt, gs, n, k, m, cfg)
        ran += 1
    assert ran == cases, f"only {ran} of {cases} drawn tiles could run (seed {seed})"


def test_partial_tiles_decline_with_the_reason() -> None:
    ragged_n = _weight("sym_int4", 128, 40, 256, 0)  # 40 rows: a partial 32-row tile
    tile = LaunchConfig("mma_t", 16, 32, 4, 1, 4, 2, plane_dots=True, pairs=True, tma=True)
    assert not can_tma(tile, ragged_n) and not valid(tile, ragged_n, torch.bfloat16)
    with pytest.raises(ValueError, match="use tma=False"):
        run(_x(3, ragged_n, 0), ragged_n, tile)
    ragged = _weight("fp8_e4m3", 0, 80, 512, 0)  # 80 rows: a partial 64-row tile
    bytes_tile = LaunchConfig("w8a8_t", 16, 64, 16, 1, 4, 2, tma=True)
    assert not can_tma(bytes_tile, ragged)
    with pytest.raises(ValueError, match="use tma=False"):
        run(_x(3, ragged, 0), ragged, bytes_tile)
    uneven = _weight("fp8_e4m3", 0, 64, 640, 0)  # 5 blocks of 128 over 2 splits of 2-block steps
    assert not can_tma(replace(bytes_tile, split_k=2), uneven)
    gemv = LaunchConfig("gemv", 1, 16, 4, 1, 4, 2, tma=True)
    assert not valid(gemv, _weight("sym_int4", 128, 64, 256, 0), torch.bfloat16)  # tiles only


def test_switch_keeps_the_tuner_and_tuned_records_off_the_path(monkeypatch) -> None:
    """The tuner times a winner's TMA twin (`launch.tune`), never a pool of them; XPULLM_TRITON_TMA=0 keeps a
    tuned record's tile with its thread loads."""
    from xpullm.kernels.triton import launch

    tw = _weight("sym_int4", 128, 64, 512, 0)
    tile = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, pairs=True, tma=True)
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "0")  # the untimed default where the record is passed over
    launch.select_config(tw, 16, torch.bfloat16)  # the packaged tables are loaded before the record is set
    monkeypatch.setitem(launch._tuned, launch._key(tw, 16, torch.bfloat16), tile)
    monkeypatch.delenv("XPULLM_TRITON_TMA", raising=False)
    assert switched_on(tile, tw) and launch.select_config(tw, 16, torch.bfloat16) == tile
    monkeypatch.setenv("XPULLM_TRITON_TMA", "0")
    assert not switched_on(tile, tw)
    assert launch.select_config(tw, 16, torch.bfloat16) == replace(tile, tma=False)  # the tile, thread loads
    assert all(not c.tma for c in candidates("cuda", tw, 16, torch.bfloat16))
    # switched on, but where TMA cannot run (a pre-Hopper card, a Triton without host descriptors): the same
    monkeypatch.delenv("XPULLM_TRITON_TMA")
    from xpullm.kernels.triton import configs

    monkeypatch.setattr(configs, "_has_tma", lambda device: False)
    assert launch.select_config(tw, 16, torch.bfloat16) == replace(tile, tma=False)


@pytest.mark.parametrize("tma_faster", [True, False])
def test_the_tuner_keeps_the_winners_tma_twin_only_where_it_times_faster(
    tma_faster: bool, monkeypatch
) -> None:
    """`launch.tune` times the pool, then the winner against its TMA twin head to head; the timings here are
    stand-ins (the interpreter's would say nothing), the runs real."""
    from xpullm.kernels.triton import launch

    tw = _weight("sym_int4", 128, 64, 512, 0)
    fast = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True, pairs=True)
    slow = replace(fast, block_n=32)
    monkeypatch.setattr(launch, "candidates", lambda *args: [slow, fast])
    timed: list[LaunchConfig] = []

    def time_cold(fn, device):
        fn()  # the candidate runs (a broken launch would raise here)
        cfg = timed[-1]
        return {slow: 3.0, fast: 2.0}.get(cfg, 1.0 if tma_faster else 2.5)

    real_run = launch.run

    def recording_run(x, w, cfg, *rest):
        timed.append(cfg)
        return real_run(x, w, cfg, *rest)

    monkeypatch.setattr(launch, "time_cold", time_cold)
    monkeypatch.setattr(launch, "run", recording_run)
    monkeypatch.delitem(launch._tuned, launch._key(tw, 16, torch.bfloat16), raising=False)
    best = launch.tune(tw, 16)
    assert replace(fast, tma=True) in timed  # the twin was timed
    assert best == (replace(fast, tma=True) if tma_faster else fast)
    launch._tuned.pop(launch._key(tw, 16, torch.bfloat16))
