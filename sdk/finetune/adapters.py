"""Using a trained adapter: attach it to a low-bit model, or merge it into re-quantized base weights."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

__all__ = ["attach_adapter", "merge_adapter"]


def attach_adapter(model: nn.Module, adapter: str | os.PathLike, *, trainable: bool = False) -> nn.Module:
    """`model` (with `LowBitLinear` layers) wrapped as a PEFT model running the adapter saved at `adapter`."""
    from peft import LoraConfig, PeftModel

    from xpullm.finetune.peft_lora import register_lowbit

    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"{path} holds no adapter_config.json: give the folder `xpullm finetune` wrote"
        )
    config = register_lowbit(LoraConfig.from_pretrained(str(path)))
    return PeftModel.from_pretrained(model, str(path), config=config, is_trainable=trainable)


def merge_adapter(model: nn.Module, adapter: str | os.PathLike) -> nn.Module:
    """The base model with `adapter` folded into its weights, each layer re-quantized in its own format.

    The result is a plain model of `LowBitLinear` layers again (no PEFT wrapper), ready for `save_low_bit`.
    Its outputs equal base + adapter up to the format's rounding of the merged weights.
    """
    return attach_adapter(model, adapter).merge_and_unload()
