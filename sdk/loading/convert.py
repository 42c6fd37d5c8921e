"""Lossless GGUF -> low-bit folder conversion (GGUF block formats kept exactly as stored)."""

from __future__ import annotations

from pathlib import Path

import torch

from xpullm.loading.auto import ModelSource, _attach, load_tokenizer
from xpullm.loading.build import BuildOptions, build_model
from xpullm.loading.gguf_source import GGUFSource
from xpullm.loading.lowbit_io import save_low_bit
from xpullm.loading.resolve import read_config

__all__ = ["convert_gguf_lossless"]


def convert_gguf_lossless(gguf_path: Path, dest: Path) -> Path:
    """Write `dest` from `gguf_path`: Q4_0/Q4_1/Q8_0 tensors keep their codes, the rest becomes bf16."""
    src = ModelSource("gguf", gguf_path.parent, gguf_path.name)
    source = GGUFSource(gguf_path)
    opts = BuildOptions(low_bit="bf16", stored_formats=True, dtype=torch.bfloat16, progress=False)
    model = _attach(build_model(read_config(src), source.tensors(), opts, total=source.count()), src)
    return save_low_bit(model, dest, load_tokenizer(src))
