"""`xpullm.settings`: every XPULLM_* switch is read in one place, and the documented table matches the fields."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import xpullm.settings as settings_module
from xpullm.settings import ENVIRONMENT, RuntimeSettings, runtime_settings


def test_defaults_and_overrides_from_an_environment() -> None:
    assert RuntimeSettings.from_env({}) == RuntimeSettings()
    env = {var: "0" for var in ENVIRONMENT.values()}
    env |= {"XPULLM_CACHE": "~/somewhere", "XPULLM_TRITON_TUNED": "/t.json"}
    s = RuntimeSettings.from_env(env)
    assert (s.native, s.fused_ops, s.cuda_graphs, s.triton_autotune, s.pdl, s.debug) == (False,) * 6
    assert RuntimeSettings.from_env({"XPULLM_DEBUG": "1"}).debug
    assert s.triton_tuned == "/t.json" and s.cache_dir() == Path("~/somewhere").expanduser()


def test_every_field_has_a_variable_and_a_documented_row() -> None:
    fields = [f.name for f in dataclasses.fields(RuntimeSettings)]
    assert fields == list(ENVIRONMENT)
    doc = settings_module.__doc__ or ""
    assert all(f"| `{var}` | `{name}` |" in doc for name, var in ENVIRONMENT.items())


def test_runtime_settings_follow_the_process_environment(monkeypatch) -> None:
    monkeypatch.setenv("XPULLM_PDL", "0")
    assert runtime_settings().pdl is False
    monkeypatch.delenv("XPULLM_PDL")
    assert runtime_settings().pdl is True


def test_q8_rows_is_a_count_with_a_clear_error() -> None:
    assert RuntimeSettings.from_env({}).q8_rows == 1
    assert RuntimeSettings.from_env({"XPULLM_Q8_ROWS": "4"}).q8_rows == 4
    for bad in ("four", "-2"):
        with pytest.raises(ValueError, match=r"XPULLM_Q8_ROWS=.* must be a whole number of rows"):
            RuntimeSettings.from_env({"XPULLM_Q8_ROWS": bad})


def test_paged_splits_is_a_count_of_at_least_one() -> None:
    assert RuntimeSettings.from_env({}).paged_splits == 16
    assert RuntimeSettings.from_env({"XPULLM_PAGED_SPLITS": "4"}).paged_splits == 4
    assert RuntimeSettings.from_env({"XPULLM_PAGED_SPLITS": "0"}).paged_splits == 1  # 0: no splitting, as 1
    with pytest.raises(ValueError, match=r"XPULLM_PAGED_SPLITS='x' must be a whole number of splits"):
        RuntimeSettings.from_env({"XPULLM_PAGED_SPLITS": "x"})
