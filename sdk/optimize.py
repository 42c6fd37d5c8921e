"""`optimize_model`: swap the `nn.Linear` layers of any module for `LowBitLinear` ones, in place."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from xpullm.devices import resolve_device
from xpullm.formats import get_format
from xpullm.linear import LowBitEmbedding, LowBitLinear

__all__ = ["HEAD_FORMAT_FOR_MIXED", "optimize_model", "set_module", "should_convert"]

HEAD_FORMAT_FOR_MIXED = "sym_int8"  # the output head is the most quantization-sensitive layer of small LMs


def should_convert(name: str, skip: Iterable[str]) -> bool:
    """False when `name` (dotted) equals, ends with, or has a component equal to an entry of `skip`."""
    parts = name.split(".")
    return not any(name == s or name.endswith("." + s) or s in parts for s in skip)


def set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path `name`."""
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def _tied_embedding(model: nn.Module, head_name: str) -> tuple[str, nn.Embedding] | None:
    get_in = getattr(model, "get_input_embeddings", None)
    head = model.get_submodule(head_name)
    emb = get_in() if callable(get_in) else None
    if isinstance(emb, nn.Embedding) and emb.weight is getattr(head, "weight", None):
        for name, module in model.named_modules():
            if module is emb:
                return name, emb
    return None


@torch.no_grad()
def optimize_model(model: nn.Module, low_bit: str = "sym_int4", *, group_size: int | None = None,
                   modules_to_not_convert: Iterable[str] = (), mixed_precision: bool = False,
                   device: str | torch.device | None = None) -> nn.Module:  # fmt: skip
    """Quantize every `nn.Linear` of `model` to `low_bit` in place and return the model.

    Args:
        model: any `torch.nn.Module` (a transformers model, a sentence-transformers encoder, your own).
        low_bit: a registered format name (`xpullm.formats.list_formats()`).
        group_size: elements per scale group along the input dimension; None = the format's default.
        modules_to_not_convert: names (or dotted suffixes / components) of linear layers to keep as they are.
        mixed_precision: keep the output head (`lm_head`) in `sym_int8` whatever `low_bit` is.
        device: where the quantized layers run (`auto`, `cpu`, `cuda`, `xpu`); None keeps each layer's device.
    """
    fmt = get_format(low_bit)
    skip = list(modules_to_not_convert)
    target = None if device is None else resolve_device(device)
    linears = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and should_convert(n, skip)
    ]
    head_name = linears[-1][0] if linears and linears[-1][0].endswith("lm_head") else None
    tied = _tied_embedding(model, head_name) if head_name else None
    for name, linear in linears:
        layer_format = HEAD_FORMAT_FOR_MIXED if (mixed_precision and name == head_name) else fmt.name
        layer_group = group_size if layer_format == fmt.name else None
        set_module(model, name, LowBitLinear.from_linear(linear, layer_format, layer_group, target))
    if tied is not None:
        # One low-bit copy serves both ends of a tied model: the head multiplies, the embedding reads rows.
        emb_name, emb = tied
        shared = LowBitEmbedding(model.get_submodule(head_name), emb.padding_idx)
        shared.dtype = emb.weight.dtype
        set_module(model, emb_name, shared)
    if target is not None:
        model.to(target)
    return model
