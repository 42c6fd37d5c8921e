"""The chat tab's model picker: the packaged model, GGUF files and model folders found on this machine.

Looked for under the configured model directories (`xpullm demo --models-dir`) and in the Hugging Face cache
(`HF_HUB_CACHE`, each cached snapshot). A folder counts when it holds a `config.json` or an xpullm low-bit
manifest; walks stop at `MAX_DEPTH` levels and skip hidden folders, so a home directory is safe to give.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGED", "ModelChoice", "find_models", "hf_cache_dir"]

MAX_DEPTH = 3  # levels below a models directory that are searched
PACKAGED = ""  # the picker's value for the packaged default model


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the picker: `value` is what the loader gets ("" = packaged model)."""

    label: str
    value: str


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache this process would use."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _is_model_folder(folder: Path) -> bool:
    from xpullm.loading.sources import LOWBIT_MANIFEST

    return (folder / "config.json").is_file() or (folder / LOWBIT_MANIFEST).is_file()


def _walk(root: Path, depth: int = MAX_DEPTH) -> Iterable[Path]:
    """Model folders and .gguf files under `root` (a model folder's own files are not searched further)."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() == ".gguf":
            yield entry
        elif entry.is_dir():
            if _is_model_folder(entry):
                yield entry
            elif depth > 1:
                yield from _walk(entry, depth - 1)


def _hf_cache_models(cache: Path) -> Iterable[tuple[str, Path]]:
    """(hub id, snapshot folder) of every cached model snapshot."""
    for repo in sorted(cache.glob("models--*")):
        hub_id = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            if snapshot.is_dir() and _is_model_folder(snapshot):
                yield hub_id, snapshot
            elif snapshot.is_dir():
                for gguf in sorted(snapshot.glob("*.gguf")):
                    yield f"{hub_id}/{gguf.name}", gguf


def find_models(dirs: Sequence[Path], hf_cache: Path | None = None) -> list[ModelChoice]:
    """Picker entries: the packaged model first, then what `dirs` and the HF cache hold (no duplicates)."""
    from xpullm.models import DEFAULT_LLM_NAME

    choices = [ModelChoice(f"{DEFAULT_LLM_NAME} (packaged)", PACKAGED)]
    seen: set[str] = set()

    def add(label: str, path: Path) -> None:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            choices.append(ModelChoice(label, str(path)))

    for d in dirs:
        d = Path(d).expanduser()
        for found in _walk(d):
            kind = "GGUF" if found.is_file() else "folder"
            add(f"{found.relative_to(d)} ({kind})", found)
    cache = hf_cache if hf_cache is not None else hf_cache_dir()
    if cache.is_dir():
        for hub_id, path in _hf_cache_models(cache):
            add(f"{hub_id} (HF cache)", path)
    return choices
