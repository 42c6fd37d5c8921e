"""The winners this machine timed, kept on disk: a shape the tuner timed once is not timed again by later processes.

On a GPU without a packaged table (`tuned_<device>.json`), the first decode step of each batch bucket times every
candidate tile for every layer shape, seconds to minutes; without this file every server start paid that again.
`<XPULLM_CACHE>/triton/tuned-<device>-<fingerprint>.json` holds `launch.export_tuned`-style records for one device
name. The fingerprint hashes the kernels' sources (this package's modules and packaged tables, the CUDA kernel)
and the Triton and torch versions: after an upgrade a new file starts rather than trusting timings of other code.
Writes merge under an exclusive lock and replace the file whole, so concurrent processes (tensor-parallel ranks)
keep each other's records and a crash mid-write leaves the previous file; a file that does not parse is set aside
(`.bad`) with a warning, never fatal. `XPULLM_TRITON_TUNE_CACHE=0` turns reading and writing off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path

import torch
import triton

from xpullm.kernels.triton.configs import LaunchConfig
from xpullm.settings import runtime_settings

__all__ = ["FIELDS", "device_slug", "fingerprint", "path", "read", "remember"]

FIELDS = ("device", "format", "group_words", "n", "kw", "m_bucket", "dtype")  # a record's key, then "config"
_HERE = Path(__file__).parent
_CONFIG_FIELDS = frozenset(f.name for f in fields(LaunchConfig))


@functools.cache
def fingerprint() -> str:
    """16 hex digits over the kernel sources, the packaged tables and the Triton / torch versions."""
    digest = hashlib.sha256(f"triton {triton.__version__} torch {torch.__version__}".encode())
    sources = [*_HERE.glob("*.py"), *_HERE.glob("tuned_*.json"), *(_HERE.parent / "cuda").glob("*.cu")]
    for source in sorted(sources, key=lambda p: (p.parent.name, p.name)):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def device_slug(device_name: str) -> str:
    """A device name as a file name part: "NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3"."""
    return re.sub(r"[^a-z0-9]+", "_", device_name.lower()).strip("_")


def path(device_name: str) -> Path | None:
    """The file of `device_name`'s records, or None where `XPULLM_TRITON_TUNE_CACHE=0`."""
    settings = runtime_settings()
    if not settings.triton_tune_cache:
        return None
    return settings.cache_dir() / "triton" / f"tuned-{device_slug(device_name)}-{fingerprint()}.json"


def _well_formed(rec: object) -> bool:
    return (
        isinstance(rec, dict)
        and set(rec) == {*FIELDS, "config"}
        and isinstance(rec["config"], dict)
        and "path" in rec["config"]
        and set(rec["config"]) <= _CONFIG_FIELDS
    )


def _load(file: Path) -> list[dict]:
    """The file's well-formed records; a file that does not parse is renamed `.bad` (kept to look at)."""
    try:
        records = json.loads(file.read_text())
        if not isinstance(records, list):
            raise ValueError("not a list of records")
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            file.replace(file.with_suffix(".bad"))
        warnings.warn(
            f"xpullm triton: set aside the unreadable tuning cache {file} ({exc}); shapes are timed again",
            stacklevel=3,
        )
        return []
    return [rec for rec in records if _well_formed(rec)]


def read(device_name: str) -> list[dict]:
    """This machine's records for `device_name` ([] when there are none or the cache is off)."""
    file = path(device_name)
    return [] if file is None else _load(file)


@contextlib.contextmanager
def _locked(file: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: last writer wins
        yield
        return
    with open(file.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remember(records: Iterable[dict]) -> None:
    """Merge `records` (each with its "device") into their devices' files: a record replaces one of the same key."""
    by_device: dict[str, list[dict]] = {}
    for rec in records:
        by_device.setdefault(rec["device"], []).append(rec)
    for device_name, new in by_device.items():
        file = path(device_name)
        if file is None:  # XPULLM_TRITON_TUNE_CACHE=0
            return
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            with _locked(file):
                merged = {tuple(r[f] for f in FIELDS): r for r in [*_load(file), *new]}
                tmp = file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(list(merged.values()), indent=1) + "\n")
                tmp.replace(file)
        except OSError as exc:  # a read-only or full cache costs the next process its timings, nothing else
            warnings.warn(f"xpullm triton: could not write the tuning cache {file}: {exc}", stacklevel=2)
