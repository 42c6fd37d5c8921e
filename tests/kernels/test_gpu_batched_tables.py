"""bench/gpu_batched.py's GPU-free parts: the shortlist an earlier sweep seeds, and the tables of a cut run."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_batched.py"
CFG = {
    "path": "mma_t",
    "block_m": 16,
    "block_n": 64,
    "block_kb": 4,
    "split_k": 4,
    "num_warps": 4,
    "num_stages": 3,
}


def _timing(fmt: str, shape: str, m: int, us: float, **cfg) -> dict:
    return {"fmt": fmt, "shape": shape, "m": m, "us": us, **CFG, **cfg}


def _best(fmt: str, shape: str, m: int, us: float, bf16: float, dq: float, nbytes: int) -> dict:
    return {"fmt": fmt, "shape": shape, "m": m, "mma_us": us, "cfg": "mma_t 16x64x4", "bf16_us": bf16,
            "dequant_us": dq, "weight_bytes": nbytes}  # fmt: skip


def test_shortlist_keeps_the_fastest_candidates_per_format_and_rows(tmp_path):
    log = tmp_path / "sweep.log"
    lines = [
        _timing("sym_int4 g128", "6144x4096", 16, us, split_k=s)
        for us, s in ((20.0, 1), (15.0, 4), (17.0, 2))
    ]
    lines += [
        _timing("nf4 g64", "6144x4096", 16, 30.0, split_k=8),
        _best("nf4 g64", "6144x4096", 16, 30, 29, 50, 1),
    ]
    log.write_text("# a comment line\n" + "\n".join(json.dumps(r) for r in lines) + "\n")
    shortlist = runpy.run_path(str(BENCH))["_shortlist"](log, 2)
    assert set(shortlist) == {("sym_int4 g128", 16), ("nf4 g64", 16)}
    assert [c["split_k"] for c in shortlist[("sym_int4 g128", 16)]] == [4, 2]  # fastest first, 2 kept
    assert shortlist[("nf4 g64", 16)] == [{**CFG, "split_k": 8}]


def test_deepen_adds_the_fastest_tiles_one_and_two_stages_deeper():
    from xpullm.kernels.triton import LaunchConfig

    listed = [{**CFG, "split_k": 4}, {**CFG, "split_k": 4, "num_stages": 4}, {**CFG, "split_k": 2}]
    deeper = runpy.run_path(str(BENCH))["_deepened"](listed, 2, LaunchConfig)
    # the fastest at 4 and 5 stages (4 is listed already), the second fastest at 5 (a repeat) and 6
    assert [(c.split_k, c.num_stages) for c in deeper] == [(4, 5), (4, 6)]
    assert deeper[0] == LaunchConfig("mma_t", 16, 64, 4, 4, 4, 5)


def test_records_from_a_log_follow_the_switches_and_the_dequantize_time(tmp_path, monkeypatch):
    log = tmp_path / "sweep.log"
    fmt, shape = "sym_int4 g128", "6144x4096"
    lines = []
    for m, dq in ((1, 99.0), (16, 40.0), (32, 10.0), (1024, 99.0)):
        lines += [
            _timing(fmt, shape, m, 15.0, plane_dots=True, pairs=True, join=4),  # joined dots: MORE_PAIRS
            _timing(fmt, shape, m, 17.0, plane_dots=True, pairs=True),
            _best(fmt, shape, m, 15.0, 29.0, dq, 1),
        ]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    records_from_log = runpy.run_path(str(BENCH))["records_from_log"]
    monkeypatch.delenv("XPULLM_TRITON_MORE_PAIRS", raising=False)
    recs = records_from_log(log, "Some GPU")
    # batch 1 keeps the GEMVs' tuning; 1024 rows are not their bucket's (512) own measurement
    assert [r["m_bucket"] for r in recs] == [16, 32]
    assert recs[0]["config"]["join"] == 4 and recs[0]["config"]["pairs"]
    assert recs[1]["config"]["path"] == "dequant"  # 10 us beat the tiles' 15
    assert (recs[0]["device"], recs[0]["format"], recs[0]["n"], recs[0]["kw"]) == (
        "Some GPU",
        "sym_int4",
        6144,
        512,
    )
    monkeypatch.setenv("XPULLM_TRITON_MORE_PAIRS", "0")
    assert records_from_log(log, "Some GPU")[0]["config"]["join"] == 1  # what the switch lets the tuner pick


def test_summarize_sums_the_shapes_a_cut_run_measured(tmp_path):
    log = tmp_path / "sweep.log"
    recs = [
        _best("fp8_e4m3 per-row", "6144x4096", 8, 20.0, 30.0, 50.0, 25_000_000),
        _timing("fp8_e4m3 per-row", "6144x4096", 8, 26.0, path="w8a8"),
        _best("fp8_e4m3 per-row", "4096x4096", 8, 10.0, 20.0, 40.0, 15_000_000),
        _timing("fp8_e4m3 per-row", "4096x4096", 8, 14.0, path="w8a8"),
    ]
    log.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    out = tmp_path / "table.md"
    done = subprocess.run(
        [sys.executable, "-P", str(BENCH), "--summarize", str(log), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = out.read_text()
    assert text == done.stdout.rstrip("\n") + "\n"
    # 2 shapes: 30 us of tiles for 40 MB (1333 GB/s), w8a8 40 us, dequant 90, bf16 50 -> 1.67x, 0.33
    assert "| fp8_e4m3 per-row | 8 | 2 | 30.0 | 1333 | 40.0 | 90.0 | 50.0 | 1.67x | 0.33 |" in text
    assert "| fp8_e4m3 per-row | 8 | 4096x4096 | 10.0 | 1500 | 20.0 | 2.00x | 40.0 | mma_t 16x64x4 |" in text
