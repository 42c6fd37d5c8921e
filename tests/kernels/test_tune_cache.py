"""The tuner's on-disk winners (`kernels/triton/tune_cache.py`): a shape one process timed is taken, untimed, by the
next; records merge by key; a broken file is set aside, never fatal; the switch turns reading and writing off.

The end-to-end test runs two real processes under the Triton interpreter: the first tunes with stand-in timings
(the interpreter's would say nothing; the candidate runs for real), the second has timing off and must take the
first one's winner instead of the untimed default."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("triton")

from xpullm.kernels.triton import tune_cache
from xpullm.kernels.triton.configs import LaunchConfig

DEVICE = "NVIDIA Test GPU 80GB"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("XPULLM_CACHE", str(tmp_path))
    monkeypatch.setenv("XPULLM_TRITON_TUNE_CACHE", "1")
    return tmp_path


def _record(n: int, m: int, cfg: LaunchConfig, device: str = DEVICE) -> dict:
    key = (device, "sym_int4", 4, n, 512, m, "torch.bfloat16")
    return {**dict(zip(tune_cache.FIELDS, key, strict=True)), "config": asdict(cfg)}


TILE = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True)


def test_records_merge_by_key_in_a_file_named_for_the_device_and_the_code(cache_dir: Path):
    a, b = _record(4096, 16, TILE), _record(1024, 16, TILE)
    a2 = _record(4096, 16, LaunchConfig("mma_t", 16, 128, 4, 2, 4, 2, plane_dots=True))
    other = _record(4096, 16, TILE, device="Another GPU")
    tune_cache.remember([a, b, other])
    tune_cache.remember([a2])
    file = tune_cache.path(DEVICE)
    assert file == cache_dir / "triton" / f"tuned-nvidia_test_gpu_80gb-{tune_cache.fingerprint()}.json"
    assert sorted(tune_cache.read(DEVICE), key=lambda r: r["n"]) == [b, a2]  # a2 replaced a
    assert tune_cache.read("Another GPU") == [other]
    assert not list(file.parent.glob("*.tmp"))  # written whole, then renamed


def test_a_broken_file_is_set_aside_with_a_warning_and_records_that_do_not_fit_are_skipped(cache_dir: Path):
    file = tune_cache.path(DEVICE)
    file.parent.mkdir(parents=True)
    file.write_text('[{"device": "NVIDIA Test GPU 80GB", "form')  # a crash mid-write of an older version
    with pytest.warns(UserWarning, match="set aside the unreadable tuning cache"):
        assert tune_cache.read(DEVICE) == []
    assert file.with_suffix(".bad").is_file() and not file.exists()
    good = _record(4096, 16, TILE)
    unknown_field = {**_record(1024, 16, TILE), "config": {**asdict(TILE), "warp_specialize": True}}
    file.write_text(json.dumps([good, unknown_field, {"device": DEVICE}]))
    assert tune_cache.read(DEVICE) == [good]
    tune_cache.remember([_record(2048, 16, TILE)])
    assert [r["n"] for r in tune_cache.read(DEVICE)] == [4096, 2048]


def test_switched_off_nothing_is_read_or_written(cache_dir: Path, monkeypatch):
    tune_cache.remember([_record(4096, 16, TILE)])
    monkeypatch.setenv("XPULLM_TRITON_TUNE_CACHE", "0")
    assert tune_cache.path(DEVICE) is None and tune_cache.read(DEVICE) == []
    tune_cache.remember([_record(1024, 16, TILE, device="Another GPU")])
    assert [p.name.split("-")[1] for p in (cache_dir / "triton").glob("tuned-*.json")] == [
        "nvidia_test_gpu_80gb"
    ]


def test_the_fingerprint_follows_the_kernel_sources(tmp_path: Path, monkeypatch):
    here = Path(tune_cache.__file__).parent
    copy = tmp_path / "triton"
    shutil.copytree(here, copy, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(here.parent / "cuda", tmp_path / "cuda", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(tune_cache, "_HERE", copy)
    try:
        tune_cache.fingerprint.cache_clear()
        same = tune_cache.fingerprint()
        (tmp_path / "cuda" / "lowbit_mma.cu").write_text(
            (here.parent / "cuda" / "lowbit_mma.cu").read_text() + "\n"
        )
        tune_cache.fingerprint.cache_clear()
        changed_cuda = tune_cache.fingerprint()
        (copy / "tuned_nvidia_h200.json").write_text("[]\n")
        tune_cache.fingerprint.cache_clear()
        changed_table = tune_cache.fingerprint()
    finally:
        monkeypatch.undo()
        tune_cache.fingerprint.cache_clear()
    assert same == tune_cache.fingerprint()
    assert len({same, changed_cuda, changed_table}) == 3


_SETUP = """
import json, sys, torch
from dataclasses import asdict
from xpullm.formats import get_format
from xpullm.kernels.triton import LaunchConfig, launch, pack_weight
from xpullm.kernels.triton.configs import default_config
w = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)) * 0.03
tw = pack_weight(get_format("sym_int4").quantize(w, 128), torch.device("cpu"))
pick = LaunchConfig("mma_t", 16, 32, 4, 1, 4, 2, plane_dots=True)
"""
_TUNE = """
launch.autotune_enabled = lambda: True  # timing on, as on a GPU; the interpreter's times would say nothing
launch.candidates = lambda *args: [pick]
launch.time_cold = lambda fn, device: (fn(), 1.0)[1]  # the candidate runs for real
assert launch.select_config(tw, 16, torch.bfloat16) == pick
"""
_TAKE = """
print(json.dumps({"chosen": asdict(launch.select_config(tw, 16, torch.bfloat16)),
                  "pick": asdict(pick), "default": asdict(default_config(tw, 16, torch.bfloat16))}))
"""


def _python(code: str, cache: Path, switch: str) -> str:
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "XPULLM_CACHE": str(cache),
        "XPULLM_TRITON_TUNE_CACHE": switch,
    }
    done = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_later_process_takes_the_winner_an_earlier_one_timed(tmp_path: Path):
    _python(_SETUP + _TUNE, tmp_path, "1")
    files = list((tmp_path / "triton").glob("tuned-cpu-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())[0]["m_bucket"] == 16
    later = json.loads(_python(_SETUP + _TAKE, tmp_path, "1"))
    assert later["chosen"] == later["pick"] != later["default"]
    switched_off = json.loads(_python(_SETUP + _TAKE, tmp_path, "0"))
    assert switched_off["chosen"] == switched_off["default"]
