"""`prepare_model_for_kbit_training`: freeze a low-bit model and ready it for adapter training.

xpullm's counterpart of `peft.prepare_model_for_kbit_training`, which only recognises bitsandbytes / GPTQ / HQQ /
torchao models by their `quantization_method`: it would cast nothing wrong here, but it also would not know that
a model of `LowBitLinear` layers is quantized, so it would skip the input-gradient hook that reentrant activation
checkpointing needs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["prepare_model_for_kbit_training"]


def prepare_model_for_kbit_training(model: nn.Module, use_gradient_checkpointing: bool = True,
                                    gradient_checkpointing_kwargs: dict | None = None) -> nn.Module:  # fmt: skip
    """Freeze every parameter, keep float parameters (norms, float embeddings) in float32, turn the KV cache
    off and, optionally, turn activation checkpointing on (non-reentrant by default). Returns `model`."""
    for param in model.parameters():
        param.requires_grad_(False)
        # Norm weights in bf16 make the backward's statistics noisy; QLoRA keeps them in fp32 (small tensors).
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False  # a training forward needs no cache, and checkpointing forbids it
    if use_gradient_checkpointing:
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise TypeError(
                f"{type(model).__name__} has no gradient_checkpointing_enable(): pass use_gradient_checkpointing=False"
            )
        enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
            # Reentrant checkpoints only recompute a segment whose input requires grad; the embeddings are frozen.
            model.enable_input_require_grads()
    return model
