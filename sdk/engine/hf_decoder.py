"""`HFDecoder`: any transformers causal LM through its own forward and a DynamicCache (the fallback decoder)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["HFDecoder"]


class HFDecoder:
    """Any transformers causal LM: its own forward with a DynamicCache, one token per step."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.capacity = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._next_pos: torch.Tensor | None = None
        # transformers renamed `past_key_values` to `cache`; probe the signature instead of comparing versions.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @torch.inference_mode()
    def start(self, input_ids: torch.Tensor, pad: torch.Tensor, max_len: int) -> torch.Tensor:
        from transformers import DynamicCache

        t = input_ids.shape[1]
        cols = torch.arange(t, device=self.device)
        self._mask = (cols[None] >= pad.to(self.device)[:, None]).long()
        positions = (self._mask.cumsum(-1) - 1).clamp(min=0)
        self._cache = DynamicCache()
        out = self.model(
            input_ids=input_ids,
            attention_mask=self._mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self._cache},
        )
        self._cache = _returned_cache(out, self._cache)
        self._next_pos = positions[:, -1:] + 1
        return out.logits[:, -1]

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        self._mask = torch.cat([self._mask, self._mask.new_ones(self._mask.shape[0], 1)], dim=1)
        out = self.model(
            input_ids=token_ids[:, None],
            attention_mask=self._mask,
            position_ids=self._next_pos,
            use_cache=True,
            **{self._cache_kw: self._cache},
        )
        self._cache = _returned_cache(out, self._cache)
        self._next_pos = self._next_pos + 1
        return out.logits[:, -1]


def _returned_cache(out: Any, fallback: Any) -> Any:
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return fallback
