"""The packaged tuned tables (`kernels/triton/tuned_<device>.json`): records are merged into them by hand from
benchmark runs, and a bad one would only show on that GPU, at load time (a field `LaunchConfig` does not know) or as
a tile the CUDA kernel is not built for (passed over silently). Checked here, without a GPU."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import get_args

import pytest

pytest.importorskip("triton")

from xpullm.formats import get_format
from xpullm.kernels.triton import launch
from xpullm.kernels.triton.configs import (
    CUDA_MMA_FORMATS,
    LaunchConfig,
    cuda_mma_tile_built,
    m_bucket,
)
from xpullm.kernels.triton.configs import Path as TilePath

TABLES = sorted(Path(launch.__file__).parent.glob("tuned_*.json"))
KEY_DTYPES = {"torch.bfloat16", "torch.float16", "torch.float32", launch.Q8_KEY_DTYPE}


def _records(table: Path) -> list[dict]:
    return json.loads(table.read_text())


def test_the_h100_and_h200_tables_are_packaged():
    assert {t.name for t in TABLES} >= {"tuned_nvidia_h100_80gb_hbm3.json", "tuned_nvidia_h200.json"}


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_record_loads_under_its_own_device_and_key(table: Path):
    records = _records(table)
    assert records
    config_fields = {f.name for f in fields(LaunchConfig)}
    keys = set()
    for rec in records:
        assert set(rec) == {*launch._FIELDS, "config"}, rec
        assert table.name == f"tuned_{launch._slug(rec['device'])}.json", rec["device"]
        key = tuple(rec[f] for f in launch._FIELDS)
        assert key not in keys, f"two records for {key}"
        keys.add(key)
        get_format(rec["format"])  # a registered format
        assert rec["m_bucket"] == m_bucket(rec["m_bucket"]), rec  # a power of two up to 512
        assert rec["dtype"] in KEY_DTYPES, rec
        assert set(rec["config"]) <= config_fields, set(rec["config"]) - config_fields
        cfg = LaunchConfig(**rec["config"])
        assert cfg.path in get_args(TilePath), rec


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_cuda_kernel_records_name_tiles_it_is_built_for(table: Path):
    for rec in _records(table):
        cfg = LaunchConfig(**rec["config"])
        if cfg.path != "cuda_mma":
            continue
        assert rec["format"] in CUDA_MMA_FORMATS, rec
        assert rec["dtype"] == "torch.bfloat16", rec
        assert cfg.block_m == rec["m_bucket"], rec  # the tuner records the bucket's rows
        assert cuda_mma_tile_built(cfg, rec["kw"]), rec


def test_a_tile_outside_the_build_is_refused():
    ok = LaunchConfig("cuda_mma", 16, 128, 4, 4, 8, 1, tiles=1)
    assert cuda_mma_tile_built(ok, 512)
    refused = {
        "block_n is not 16 x tiles x warps": LaunchConfig("cuda_mma", 16, 128, 4, 4, 4, 1, tiles=1),
        "3 tiles a warp": LaunchConfig("cuda_mma", 16, 384, 4, 4, 8, 1, tiles=3),
        "2 warps": LaunchConfig("cuda_mma", 16, 128, 4, 4, 2, 1, tiles=4),
        "4 tiles x 8 column tiles of accumulators": LaunchConfig("cuda_mma", 64, 256, 4, 1, 4, 1, tiles=4),
        "65 rows": LaunchConfig("cuda_mma", 65, 128, 4, 1, 8, 1, tiles=1),
    }
    for why, cfg in refused.items():
        assert not cuda_mma_tile_built(cfg, 512), why
    assert not cuda_mma_tile_built(ok, 100)  # 4 splits of 100 words: under two chunks each
