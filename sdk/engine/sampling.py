"""Turn next-token logits into token ids: repetition penalty, temperature, top-k, top-p, seeded sampling."""

from __future__ import annotations

import torch

from xpullm.engine.params import GenerationParams

__all__ = ["Sampler"]


class Sampler:
    """Picks the next token for every row of a batch.

    Greedy decoding is a plain argmax (no generator, no float copies); sampling owns a `torch.Generator`
    seeded per call, so outputs depend only on the seed and never on global RNG state or other threads.
    """

    def __init__(self, params: GenerationParams, batch_size: int, vocab_size: int, device: torch.device):
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        # One "seen" mask per row for the repetition penalty, updated in place as tokens arrive.
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(batch_size, vocab_size, dtype=torch.float32, device=device)

    def observe(self, token_ids: torch.Tensor, row_mask: torch.Tensor | None = None) -> None:
        """Record tokens (prompt [B, T] or new [B]) for the repetition penalty; pad positions masked out."""
        if self._seen is None:
            return
        ids = token_ids if token_ids.dim() == 2 else token_ids[:, None]
        if row_mask is None:
            weight = torch.ones(ids.shape, dtype=self._seen.dtype, device=ids.device)
        else:
            weight = (row_mask if row_mask.dim() == 2 else row_mask[:, None]).to(self._seen.dtype)
        # Counting (scatter_add) rather than flagging lets masked pad positions add 0 without erasing a hit.
        self._seen.scatter_add_(1, ids, weight)

    def __call__(self, logits: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Return next token ids [B] from logits [B, V]; `allowed` is an optional bool mask [B, V]."""
        p = self.params
        logits = logits.float()
        if self._seen is not None:
            penalized = torch.where(logits > 0, logits / p.repetition_penalty, logits * p.repetition_penalty)
            logits = torch.where(self._seen > 0, penalized, logits)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        # top_k=1 is greedy; argmax also breaks ties the same way (first index) where a value mask would not.
        if p.greedy or p.top_k == 1:
            return logits.argmax(dim=-1)
        logits = logits / p.temperature
        if p.top_k > 0 and p.top_k < logits.shape[-1]:
            # Keep exactly k tokens by rank (bf16 logits tie often; a value threshold would keep every tie).
            keep = torch.zeros_like(logits, dtype=torch.bool)
            keep.scatter_(1, torch.topk(logits, p.top_k, dim=-1).indices, True)
            logits = logits.masked_fill(~keep, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            # Drop a token when the mass before it already reaches top_p; the best token always survives.
            drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= p.top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
