"""`AutoModelForCausalLM`: transformers' loading entry point, returning models with low-bit linear layers.

Accepts a transformers folder, a `.gguf` file (or folder + `gguf_file=`), a folder written by `save_low_bit`,
or a Hugging Face hub id (downloaded with `huggingface_hub`; a clear `ModelNotFound` when offline).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xpullm.devices import default_dtype, resolve_device
from xpullm.errors import ModelNotFound, UnsupportedArchitecture
from xpullm.formats import get_format
from xpullm.loading.build import BuildOptions, build_model
from xpullm.loading.format_choice import FOLLOW_CHECKPOINT, FormatChoice, announce, choose_format
from xpullm.loading.resolve import ModelSource, load_tokenizer, read_config, resolve_source
from xpullm.loading.sources import LOWBIT_MANIFEST, LowBitSource, SafetensorsSource

__all__ = ["AutoModelForCausalLM", "LowBitModelMixin", "ModelSource", "load_tokenizer", "resolve_source"]


class LowBitModelMixin:
    """Methods added to every model xpullm loads (the class is a per-architecture subclass, not a patch)."""

    xpullm_source: ModelSource | None = None
    xpullm_format: FormatChoice | None = None  # the format the load chose and why

    def save_low_bit(self, save_dir: str | os.PathLike, tokenizer: Any = None) -> Path:
        """Write this model in xpullm's portable low-bit layout (safetensors + JSON) with its tokenizer."""
        from xpullm.loading.lowbit_io import save_low_bit

        return save_low_bit(self, save_dir, tokenizer)  # type: ignore[arg-type]

    def memory_footprint(self) -> int:
        """Bytes of weights held: parameters, buffers and low-bit kernel state."""
        from xpullm.memory import model_nbytes

        return model_nbytes(self)  # type: ignore[arg-type]


_CLASSES: dict[type, type] = {}


def _attach(model: nn.Module, src: ModelSource, choice: FormatChoice | None = None) -> nn.Module:
    cls = type(model)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"LowBit{cls.__name__}", (LowBitModelMixin, cls), {})
    model.__class__ = _CLASSES[cls]
    model.xpullm_source = src  # type: ignore[attr-defined]
    model.xpullm_format = choice  # type: ignore[attr-defined]
    return model


class AutoModelForCausalLM:
    """Drop-in for `transformers.AutoModelForCausalLM` that loads straight into low-bit linear layers."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        load_in_low_bit: str | None = None, load_in_4bit: bool = False, load_in_8bit: bool = False,
                        device: str | torch.device = "auto", group_size: int | None = None,
                        modules_to_not_convert: list[str] | tuple[str, ...] = (), mixed_precision: bool = False,
                        dtype: torch.dtype | None = None, torch_dtype: torch.dtype | None = None,
                        gguf_file: str | None = None, progress: bool = True, **kwargs: Any) -> nn.Module:  # fmt: skip
        """Load a causal LM with its linear layers in `load_in_low_bit`.

        With no format named (None or `"auto"`), the checkpoint's own format is kept where xpullm has it exactly
        (GGUF Q4_0 / Q4_1 / Q8_0 -> sym_int4 / asym_int4 / sym_int8, a low-bit folder as saved); float
        checkpoints become `sym_int4`. `model.xpullm_format` says what was chosen and why.
        `load_in_4bit=True` means `sym_int4` and `load_in_8bit=True` means `sym_int8` (as in IPEX-LLM).
        Layers are quantized one at a time as they are read, so peak memory stays near the low-bit size.
        """
        if load_in_low_bit and load_in_low_bit != FOLLOW_CHECKPOINT:
            get_format(load_in_low_bit)  # fail fast on a bad name, before any I/O
        if kwargs.get("trust_remote_code"):
            raise UnsupportedArchitecture(
                "trust_remote_code models are not supported: xpullm builds only transformers' own architectures"
            )
        src = resolve_source(pretrained_model_name_or_path, gguf_file)
        choice = choose_format(src, load_in_low_bit, load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit,
                               group_size=group_size)  # fmt: skip
        low_bit = choice.low_bit
        target = resolve_device(device)
        if group_size is not None:
            get_format(low_bit).resolve_group_size(group_size, 1024)
        announce(choice, src.label, progress)
        opts = BuildOptions(low_bit=low_bit, group_size=group_size, modules_to_not_convert=tuple(modules_to_not_convert),
                            mixed_precision=mixed_precision, device=target, stored_formats=choice.stored_formats,
                            dtype=dtype or torch_dtype or default_dtype(target), progress=progress)  # fmt: skip
        if src.kind == "gguf":
            from xpullm.loading.gguf_source import GGUFSource

            source: Any = GGUFSource(src.folder / str(src.gguf_file))
            if not source.supported:
                return _attach(_via_transformers_gguf(src, opts), src, choice)
        config = read_config(src)  # architecture problems surface before any weight is read
        if src.kind == "lowbit":
            source = LowBitSource(src.folder)
        elif src.kind == "hf":
            source = SafetensorsSource(src.folder)
        model = build_model(config, source.tensors(), opts, total=source.count())
        _load_generation_config(model, src)
        return _attach(model, src, choice)

    @classmethod
    def load_low_bit(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                     dtype: torch.dtype | None = None, progress: bool = False) -> nn.Module:  # fmt: skip
        """Load a folder written by `save_low_bit`; weights keep their stored formats (repacked for the device)."""
        src = resolve_source(path)
        if src.kind != "lowbit":
            raise ModelNotFound(
                f"{path} is not a low-bit folder (no {LOWBIT_MANIFEST}); use from_pretrained() for it"
            )
        source = LowBitSource(src.folder)
        target = resolve_device(device)
        stored_dtype = getattr(torch, source.manifest.get("dtype", "bfloat16"), torch.bfloat16)
        opts = BuildOptions(low_bit=source.manifest["formats"][0] if source.manifest["formats"] else "bf16",
                            device=target, dtype=dtype or stored_dtype, progress=progress, stored_formats=True,
                            only_modules=frozenset(source.manifest["modules"]))  # fmt: skip
        model = build_model(read_config(src), source.tensors(), opts, total=source.count())
        _load_generation_config(model, src)
        return _attach(model, src, FormatChoice(opts.low_bit, "load_low_bit keeps the stored formats", True))


def _load_generation_config(model: nn.Module, src: ModelSource) -> None:
    if src.kind == "gguf" or not (src.folder / "generation_config.json").exists():
        return
    import transformers

    model.generation_config = transformers.GenerationConfig.from_pretrained(src.folder)


def _via_transformers_gguf(src: ModelSource, opts: BuildOptions) -> nn.Module:
    """Architectures without a direct GGUF mapping: let transformers dequantize, then quantize in place."""
    import transformers

    from xpullm.optimize import optimize_model

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            src.folder, gguf_file=src.gguf_file, dtype=opts.dtype
        )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise UnsupportedArchitecture(f"cannot load {src.gguf_file}: {exc}") from exc
    return optimize_model(model.eval(), opts.low_bit, group_size=opts.group_size,
                          modules_to_not_convert=opts.modules_to_not_convert,
                          mixed_precision=opts.mixed_precision, device=opts.device)  # fmt: skip
