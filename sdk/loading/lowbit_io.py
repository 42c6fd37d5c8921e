"""`save_low_bit`: write a quantized model as safetensors + a JSON manifest (never pickle), atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xpullm.linear import LowBitLinear
from xpullm.loading.sources import LOWBIT_MANIFEST

__all__ = ["FORMAT_VERSION", "atomic_folder", "save_low_bit"]

FORMAT_VERSION = 1


class atomic_folder:
    """Write into a temporary sibling folder and rename it over `dest` only when the block succeeds."""

    def __init__(self, dest: str | os.PathLike) -> None:
        self.dest = Path(dest)

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.dest.name}.", dir=self.dest.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.dest.exists():
            old = self.dest.with_name(f".{self.dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            self.dest.rename(old)
            self.tmp.rename(self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.dest)


def _lowbit_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    modules: dict[str, Any] = {}
    # LowBitLinear buffers hold a kernel's machine-specific layout: the portable export is written instead.
    runtime: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, LowBitLinear):
            runtime.update(f"{name}.{b}" for b in module._buffers)
            qw = module.export()
            parts = {k: v.detach().cpu().contiguous() for k, v in qw.tensors().items()}
            modules[name] = {**qw.meta(), "tensors": sorted(parts)}
            tensors.update({f"{name}.{k}": v for k, v in parts.items()})
    for key, value in model.state_dict().items():
        if key not in tensors and key not in runtime:
            tensors[key] = value.detach().cpu()
    # safetensors refuses aliased storage (tied weights): keep the first name of each storage.
    seen: set[tuple[int, int]] = set()
    unique = {}
    for key, value in tensors.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset())
        if ident in seen:
            continue
        seen.add(ident)
        unique[key] = value.contiguous()
    return unique, modules


def save_low_bit(model: nn.Module, save_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
    """Write `model` (with its LowBitLinear layers) to `save_dir`; returns the folder.

    The folder holds `config.json`, `model.safetensors`, `xpullm_lowbit.json` and the tokenizer, so
    `AutoModelForCausalLM.load_low_bit(save_dir)` and `transformers.AutoTokenizer.from_pretrained(save_dir)` work.
    """
    from safetensors.torch import save_file

    from xpullm.loading.resolve import load_tokenizer

    tensors, modules = _lowbit_tensors(model)
    formats = sorted({m["format"] for m in modules.values()})
    manifest = {
        "xpullm_format_version": FORMAT_VERSION,
        "formats": formats,
        "modules": modules,
        "dtype": str(
            next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        ).removeprefix("torch."),
    }
    if tokenizer is None and getattr(model, "xpullm_source", None) is not None:
        tokenizer = load_tokenizer(model.xpullm_source)
    with atomic_folder(save_dir) as tmp:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "producer": "xpullm"})
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / LOWBIT_MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Path(save_dir)
