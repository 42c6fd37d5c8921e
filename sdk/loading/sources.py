"""Checkpoint sources: each yields (transformers tensor name, float tensor or QuantizedWeight), one at a time.

Streaming one tensor at a time is what keeps peak memory near the low-bit size while a model is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from xpullm.errors import CorruptCheckpoint, ModelNotFound
from xpullm.formats import QuantizedWeight

__all__ = ["LOWBIT_MANIFEST", "LowBitSource", "SafetensorsSource", "safetensors_files"]

LOWBIT_MANIFEST = "xpullm_lowbit.json"
_ROLES = ("qdata", "scales", "zeros")


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors shards of a HF folder, in index order; a clear error if there are none."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError) as exc:
            raise CorruptCheckpoint(f"{index} is not a valid safetensors index: {exc}") from exc
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = (f" It holds {pickles}: pickle checkpoints are not loaded (they can run code); convert them with "
                "transformers' `save_pretrained(..., safe_serialization=True)`.") if pickles else ""  # fmt: skip
        raise ModelNotFound(f"no *.safetensors weights in {folder}.{hint}")
    return files


def _open(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="pt")
    except Exception as exc:  # SafetensorError: header too short, bad JSON, wrong sizes
        raise CorruptCheckpoint(
            f"cannot read {path}: {exc}. The file is truncated or damaged; re-download or re-save it."
        ) from exc


class SafetensorsSource:
    """Float tensors of a transformers folder."""

    def __init__(self, folder: Path) -> None:
        self.files = safetensors_files(folder)

    def count(self) -> int:
        """How many items `tensors()` yields (read from the files' headers; for progress bars)."""
        return sum(len(_open(path).keys()) for path in self.files)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        for path in self.files:
            handle = _open(path)
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                try:
                    yield key, handle.get_tensor(key)
                except Exception as exc:
                    raise CorruptCheckpoint(f"tensor {key!r} in {path} cannot be read: {exc}") from exc


class LowBitSource:
    """A folder written by `save_low_bit`: quantized layers come back as `QuantizedWeight`s, unchanged."""

    def __init__(self, folder: Path) -> None:
        try:
            self.manifest = json.loads((folder / LOWBIT_MANIFEST).read_text())
        except ValueError as exc:
            raise CorruptCheckpoint(
                f"{folder / LOWBIT_MANIFEST} is not valid JSON: {exc}; save the model again"
            ) from exc
        self.files = safetensors_files(folder)

    def count(self) -> int:
        """How many items `tensors()` yields: one per quantized module, one per other tensor (for progress bars)."""
        modules: dict = self.manifest["modules"]
        keys = [k for path in self.files for k in _open(path).keys()]  # noqa: SIM118
        other = [k for k in keys if not (k.rpartition(".")[0] in modules and k.rpartition(".")[2] in _ROLES)]
        return len(modules) + len(other)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor | QuantizedWeight]]:
        modules: dict = self.manifest["modules"]
        pending: dict[str, dict[str, torch.Tensor]] = {}
        for path in self.files:
            handle = _open(path)
            for key in handle.keys():  # noqa: SIM118
                try:
                    tensor = handle.get_tensor(key)
                except Exception as exc:
                    raise CorruptCheckpoint(f"tensor {key!r} in {path} cannot be read: {exc}") from exc
                module, _, role = key.rpartition(".")
                if module in modules and role in _ROLES:
                    parts = pending.setdefault(module, {})
                    parts[role] = tensor
                    if len(parts) == len(modules[module]["tensors"]):
                        yield (
                            f"{module}.weight",
                            QuantizedWeight.from_parts(modules[module], pending.pop(module)),
                        )
                else:
                    yield key, tensor
        if pending:
            raise CorruptCheckpoint(
                f"low-bit layers {sorted(pending)} are missing tensors; save the model again"
            )
