"""The tile kernels' L2 prefetch of their weight slices (`kernels/triton/l2.py`, XPULLM_L2_PREFETCH).

On the CPU: when a launch asks for it (never off a Hopper+ CUDA device, never unless switched on, never for
slices it cannot address). On a GPU: a prefetch is a hint, so every tile gives bitwise the same product with it
as without it, over random shapes and tiles (ragged ones included, where it stays off).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

pytest.importorskip("triton")

from xpullm.formats import get_format
from xpullm.kernels.triton import LaunchConfig, pack_weight, run
from xpullm.kernels.triton.configs import mma_block_m, valid
from xpullm.kernels.triton.l2 import aligned
from xpullm.kernels.triton.launch import _prepare_x
from xpullm.kernels.triton.pdl import launch_options, pdl_enabled
from xpullm.settings import RuntimeSettings

ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"


def test_off_by_default_and_never_off_a_gpu(monkeypatch) -> None:
    assert RuntimeSettings.from_env({}).l2_prefetch is False
    assert RuntimeSettings.from_env({"XPULLM_L2_PREFETCH": "1"}).l2_prefetch is True
    monkeypatch.setenv("XPULLM_L2_PREFETCH", "1")
    assert launch_options(torch.device("cpu"), True) == {"PDL": False, "L2_PREFETCH": False}
    # kernels without the argument get none
    assert launch_options(torch.device("cpu")) == {"PDL": False}


def test_only_whole_16_byte_rows_are_prefetched() -> None:
    assert aligned(0, 2048, 512, 2048)
    assert not aligned(0, 2048, 512, 200)  # a row length of K = 400 int4 codes
    assert not aligned(8, 2048)  # a base that is not 16-byte aligned


@pytest.mark.skipif(not ON_GPU, reason="the prefetch runs only on a CUDA GPU (never in the interpreter)")
def test_on_exactly_from_hopper_when_switched_on(monkeypatch) -> None:
    dev = torch.device("cuda")
    monkeypatch.setenv("XPULLM_L2_PREFETCH", "1")
    assert launch_options(dev, True)["L2_PREFETCH"] is pdl_enabled(dev)
    assert launch_options(dev, False)["L2_PREFETCH"] is False
    monkeypatch.setenv("XPULLM_L2_PREFETCH", "0")
    assert launch_options(dev, True)["L2_PREFETCH"] is False


# (format, group size, config family); the shapes and tiles are drawn at random per case
FAMILIES = [
    ("sym_int4", 128, dict(plane_dots=True, pairs=True, join=4)),
    ("sym_int4", 32, dict(plane_dots=True, pairs=True)),
    ("asym_int4", 128, dict(plane_dots=True)),
    ("nf4", 64, dict(plane_dots=True, pairs=True, join=2)),
    ("sym_int8", 0, dict(plane_dots=True)),
    ("fp8_e4m3", 0, dict(plane_dots=True)),
    ("fp8_e4m3", 0, dict(path="w8a8_t")),
]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="the prefetch runs only on a CUDA GPU (never in the interpreter)")
@pytest.mark.parametrize("fmt,gs,family", FAMILIES)
def test_prefetch_changes_no_bit(fmt: str, gs: int, family: dict, monkeypatch) -> None:
    dev = torch.device("cuda")
    rng = random.Random(f"{fmt}{gs}{family}")
    family = dict(family)
    path = family.pop("path", "mma_t")
    for case in range(4):
        n = rng.choice([64, 128, 320, 1000]) if case else 4096
        k = rng.choice([512, 1024, 2048, 1536]) if case % 3 else rng.choice([4096, 1000])
        m = rng.choice([2, 9, 16, 33, 64])
        kb = 16 if path == "w8a8_t" else rng.choice([4, 8])
        cfg = LaunchConfig(
            path, mma_block_m(m), rng.choice([32, 64, 128]), kb, rng.choice([1, 2, 4]), 4, 3,
            fixup=rng.random() < 0.5, **family,
        )  # fmt: skip
        weight = torch.randn(n, k, generator=torch.Generator().manual_seed(case)) * 0.02
        tw = pack_weight(get_format(fmt).quantize(weight, gs), dev)
        if not valid(cfg, tw, torch.bfloat16):
            continue
        x = _prepare_x(torch.randn(m, k, device=dev, dtype=torch.bfloat16), tw)
        monkeypatch.setenv("XPULLM_L2_PREFETCH", "0")
        plain = run(x, tw, cfg)
        monkeypatch.setenv("XPULLM_L2_PREFETCH", "1")
        fetched = run(x, tw, cfg)
        assert torch.equal(plain, fetched), (
            f"{fmt} g{gs} {n}x{k}, {m} rows, {cfg}: the prefetch changed the product"
        )
