"""LoRA on `LowBitLinear` through PEFT's custom-module API (the role `peft.tuners.lora.bnb` plays for bitsandbytes).

PEFT picks a LoRA layer class per base-layer type with a fixed list of dispatchers (bitsandbytes, GPTQ, HQQ,
torchao, ... then `nn.Linear`) and exposes one extension point for other types: `LoraConfig._register_custom_module`
(documented as experimental in PEFT's "custom models" guide). `register_lowbit(config)` registers
`LowBitLoraLinear` there, so `peft.get_peft_model(model, config)`, `PeftModel.from_pretrained(..., config=config)`
and TRL's `SFTTrainer(peft_config=config)` wrap xpullm's low-bit layers. Adapters are saved by PEFT itself
(`adapter_model.safetensors` + `adapter_config.json`), so they load anywhere PEFT does.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from xpullm.finetune.config import DEFAULT_TARGETS
from xpullm.formats import get_format
from xpullm.linear import LowBitLinear

__all__ = ["LowBitLoraLinear", "lora_config", "register_lowbit", "requantized"]


def requantized(layer: LowBitLinear, weight: torch.Tensor) -> LowBitLinear:
    """A new `LowBitLinear` holding `weight` [N, K] in `layer`'s format, group size and device, with its bias."""
    qw = get_format(layer.format_name).quantize(weight.float().cpu(), _group_arg(layer))
    return LowBitLinear(qw.to(layer.device), layer.bias, layer.device)


def _group_arg(layer: LowBitLinear) -> int:
    """The group size argument that reproduces `layer`'s stored groups (per-channel formats store the row)."""
    fmt = get_format(layer.format_name)
    return layer.group_size if layer.group_size in fmt.group_sizes else 0


class LowBitLoraLinear(nn.Module, LoraLayer):
    """y = base(x) + B(A(dropout(x))) * scaling, with `base` a frozen `LowBitLinear`.

    Merging dequantizes the base weight, adds B @ A * scaling and re-quantizes into the same format (the merged
    layer differs from base + adapter by that format's rounding error). Unmerging re-quantizes again, so
    merge/unmerge round trips are lossy, as they are for PEFT's bitsandbytes and HQQ layers.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig,
                 r: int = 0, lora_alpha: int = 1, **kwargs: Any) -> None:  # fmt: skip
        if config.lora_bias:
            raise ValueError("LowBitLoraLinear does not support lora_bias: set LoraConfig(lora_bias=False)")
        if config.use_dora:
            raise ValueError("LowBitLoraLinear does not support DoRA yet: set LoraConfig(use_dora=False)")
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Any = None) -> None:
        # The base layer has no float `weight` to read a device from: its buffers say where it lives; the
        # adapter stays in float32 (the trainable part keeps full precision, as in QLoRA).
        super()._move_adapter_to_device_of_base_layer(adapter_name, device or self.get_base_layer().device)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> None:
        return None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """B @ A * scaling: what merging adds to the dequantized base weight, [N, K] float32."""
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        return (b.float() @ a.float()) * self.scaling[adapter]

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Fold the active adapters into a re-quantized base layer."""
        adapter_names = check_adapters_to_merge(self, adapter_names)
        for name in adapter_names:
            if name not in self.lora_A:
                continue
            base = self.get_base_layer()
            weight = base.dequantize(torch.float32, "cpu") + self.get_delta_weight(name).cpu()
            if safe_merge and not torch.isfinite(weight).all():
                raise ValueError(f"merging adapter {name!r} gives non-finite weights: the adapter is broken")
            self.base_layer = requantized(base, weight)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Subtract merged adapters again (re-quantizing: the base does not come back bit for bit)."""
        if not self.merged:
            warnings.warn("LowBitLoraLinear: already unmerged, nothing to do", stacklevel=2)
            return
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name not in self.lora_A:
                continue
            base = self.get_base_layer()
            weight = base.dequantize(torch.float32, "cpu") - self.get_delta_weight(name).cpu()
            self.base_layer = requantized(base, weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        kwargs.pop("adapter_names", None)
        if self.disable_adapters and self.merged:
            self.unmerge()
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            delta = lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]
            result = result + delta.to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def register_lowbit(config: LoraConfig) -> LoraConfig:
    """Register `LowBitLoraLinear` for `LowBitLinear` in `config` (in place) and return it."""
    config._register_custom_module({LowBitLinear: LowBitLoraLinear})
    return config


def lora_config(r: int = 16, alpha: int = 32, targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
                dropout: float = 0.05, **kwargs: Any) -> LoraConfig:  # fmt: skip
    """A causal-LM `LoraConfig` that wraps `LowBitLinear` layers (extra `kwargs` go to `LoraConfig`)."""
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=dropout,
                        bias="none", task_type="CAUSAL_LM", **kwargs)  # fmt: skip
    return register_lowbit(config)
