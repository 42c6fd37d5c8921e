"""Build a transformers model from a tensor stream, quantizing each linear layer as its weight arrives.

The model skeleton is created with its parameters on the `meta` device (no memory); each checkpoint tensor
then either becomes a `LowBitLinear` (quantized right away, the float copy dropped) or is assigned as is. Peak
memory therefore stays near the low-bit model plus one float tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from xpullm.errors import CorruptCheckpoint, UnsupportedArchitecture
from xpullm.formats import QuantizedWeight, get_format
from xpullm.linear import LowBitEmbedding, LowBitLinear
from xpullm.optimize import HEAD_FORMAT_FOR_MIXED, set_module, should_convert

__all__ = ["BuildOptions", "build_model", "params_on_meta"]


@dataclass(frozen=True)
class BuildOptions:
    """What to turn the checkpoint into."""

    low_bit: str = "sym_int4"
    group_size: int | None = None  # None = the format's default (32 for 4-bit formats)
    modules_to_not_convert: tuple[str, ...] = ()
    mixed_precision: bool = False  # lm_head in sym_int8 whatever low_bit is
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.bfloat16  # norms, untied embeddings and activations
    progress: bool = True
    stored_formats: bool = False  # keep every QuantizedWeight exactly as stored (load_low_bit)
    only_modules: frozenset[str] | None = None  # convert just these linears (load_low_bit: the saved ones)


@contextmanager
def params_on_meta() -> Iterator[None]:
    """Create parameters on `meta` (no storage) while buffers stay real (rotary tables, masks)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _skeleton(config, dtype: torch.dtype) -> nn.Module:
    import transformers

    try:
        with params_on_meta():
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError as exc:
        raise UnsupportedArchitecture(
            f"transformers cannot build a causal LM for model_type {getattr(config, 'model_type', '?')!r}: {exc}. "
            "Upgrade transformers or pick a supported architecture."
        ) from exc
    return model.eval()


def _head_and_embedding(model: nn.Module) -> tuple[str | None, str | None]:
    names = {id(m): n for n, m in model.named_modules()}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return names.get(id(out)), names.get(id(emb))


class _Builder:
    def __init__(self, model: nn.Module, opts: BuildOptions) -> None:
        self.model, self.opts = model, opts
        self.fmt = get_format(opts.low_bit)
        self.head, self.embedding = _head_and_embedding(model)
        self.tied = bool(getattr(model.config, "tie_word_embeddings", False)) and self.head is not None
        self.convert = {
            n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and should_convert(n, opts.modules_to_not_convert)
            and (opts.only_modules is None or n in opts.only_modules)
        }  # fmt: skip
        self.pending_embedding: torch.Tensor | QuantizedWeight | None = None
        self.seen: set[str] = set()

    def _layer_format(self, module: str) -> tuple[str, int | None]:
        if self.opts.mixed_precision and module == self.head:
            return HEAD_FORMAT_FOR_MIXED, None
        return self.fmt.name, self.opts.group_size

    def _quantized(self, module: str, value: torch.Tensor | QuantizedWeight) -> QuantizedWeight:
        if self.opts.stored_formats and isinstance(value, QuantizedWeight):
            return value
        name, group = self._layer_format(module)
        fmt = get_format(name)
        same_format = isinstance(value, QuantizedWeight) and value.format == fmt.name
        if same_format and value.group_size == fmt.resolve_group_size(group, value.shape[1]):
            return value  # already in the asked-for format: no second rounding
        floats = value.dequantize(torch.float32) if isinstance(value, QuantizedWeight) else value
        return fmt.quantize(floats, group)

    def _float(self, value: torch.Tensor | QuantizedWeight) -> torch.Tensor:
        if isinstance(value, QuantizedWeight):
            return value.dequantize(self.opts.dtype)
        return value.to(self.opts.dtype) if value.is_floating_point() else value

    def put(self, key: str, value: torch.Tensor | QuantizedWeight) -> None:
        module, _, pname = key.rpartition(".")
        self.seen.add(key)
        if self.tied and module == self.embedding and pname == "weight":
            self.pending_embedding = value  # decided at the end: it may also have to become the head
            return
        if module in self.convert and pname == "weight":
            self._set_linear(module, self._quantized(module, value))
            return
        try:
            target = self.model.get_submodule(module)
        except AttributeError:
            return  # a checkpoint extra the architecture does not use (e.g. rotary caches)
        tensor = self._float(value).to(self.opts.device)
        if pname in target._parameters:
            target._parameters[pname] = nn.Parameter(tensor, requires_grad=False)
        elif pname in target._buffers:
            target._buffers[pname] = tensor

    def _set_linear(self, module: str, qw: QuantizedWeight) -> None:
        old = self.model.get_submodule(module)
        bias = (
            old.bias
            if isinstance(old, nn.Linear) and old.bias is not None and old.bias.device.type != "meta"
            else None
        )
        new = LowBitLinear(
            qw.to(self.opts.device) if self.opts.device.type != "cpu" else qw, bias, self.opts.device
        )
        if isinstance(old, nn.Linear) and old.bias is not None and bias is None:
            new.bias = None  # the bias tensor arrives later in the stream and is assigned then
        set_module(self.model, module, new)

    def finish(self) -> None:
        model, opts = self.model, self.opts
        if self.tied:
            head_given = f"{self.head}.weight" in self.seen
            head_module = model.get_submodule(self.head)
            if self.pending_embedding is not None and not head_given:
                if self.head in self.convert:
                    self._set_linear(self.head, self._quantized(self.head, self.pending_embedding))
                else:
                    head_module._parameters["weight"] = nn.Parameter(
                        self._float(self.pending_embedding).to(opts.device), requires_grad=False
                    )
            elif self.pending_embedding is not None:
                self.tied = False  # both ends were stored: keep them separate, as the checkpoint had them
                emb = model.get_submodule(self.embedding)
                emb._parameters["weight"] = nn.Parameter(
                    self._float(self.pending_embedding).to(opts.device), requires_grad=False
                )
            head_module = model.get_submodule(self.head)
            if self.tied:
                emb = model.get_submodule(self.embedding)
                if isinstance(head_module, LowBitLinear):
                    shared = LowBitEmbedding(head_module, getattr(emb, "padding_idx", None))
                    shared.dtype = opts.dtype
                    set_module(model, self.embedding, shared)
                else:
                    emb._parameters["weight"] = head_module.weight
        missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
        if missing:
            raise CorruptCheckpoint(
                f"the checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}; it is incomplete"
            )


def build_model(config, tensors: Iterable[tuple[str, torch.Tensor | QuantizedWeight]], opts: BuildOptions,
                total: int | None = None) -> nn.Module:  # fmt: skip
    """A transformers model for `config` filled from `tensors`, linear layers in `opts.low_bit`."""
    model = _skeleton(config, opts.dtype)
    builder = _Builder(model, opts)
    with torch.no_grad():
        for key, value in tqdm(tensors, total=total, desc=f"loading ({opts.low_bit})", unit="tensor",
                               disable=not opts.progress, leave=False):  # fmt: skip
            builder.put(key, value)
        builder.finish()
    for module in model.modules():  # buffers created on CPU while building (rotary tables) follow the model
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.device != opts.device:
                module._buffers[name] = buf.to(opts.device)
    return model
