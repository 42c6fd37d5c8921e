"""Rerankers: reorder a query's hits with a finer relevance signal than the first-stage fusion.

- `EmbeddingReranker` (bi-encoder cross-scoring): a chunk is as relevant as its best sentence. The first stage
  embeds whole chunks, where the one sentence that answers the question is averaged with the rest; scoring each
  sentence against the query finds it. One embedder pass over the candidates' sentences; no LLM call.
- `LLMReranker`: the LLM's yes/no judgement as a calibrated score, logit(yes) - logit(no) of the first answer token,
  not the generated word. Small models answer "no" to nearly everything (SmolLM2-135M said "no" to 150 of 150), so
  a yes/no verdict never reorders; the margin still ranks the passages the model finds more relevant higher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

from xpullm.protocols import ChatEngine
from xpullm.rag.retrieval import Hit

__all__ = ["EmbeddingReranker", "LLMReranker", "RerankFn", "Reranker", "apply_reranker"]


@runtime_checkable
class Reranker(Protocol):
    """Reorders hits for a query; may drop some."""

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]: ...


RerankFn = Callable[[str, list[Hit]], list[Hit]]
"""A plain reranking function: `fn(query, hits) -> hits`."""


class EmbeddingReranker:
    """Bi-encoder cross-scoring: score = `sentence_weight` * best sentence cosine + the rest * chunk cosine."""

    def __init__(self, embed: Callable[[list[str]], Any], sentence_weight: float = 0.6) -> None:
        if not 0.0 <= sentence_weight <= 1.0:
            raise ValueError(f"sentence_weight must be in [0, 1], got {sentence_weight!r}")
        self.embed = embed
        self.sentence_weight = sentence_weight

    def scores(self, query: str, hits: Sequence[Hit]) -> list[float]:
        """The reranking score of each hit."""
        import numpy as np

        from xpullm.documents import split_sentences

        pieces = [split_sentences(h.text) or [h.text] for h in hits]
        flat = [s for p in pieces for s in p]
        vecs = np.asarray(self.embed([query, *flat]), dtype=np.float32)
        sims = vecs[1:] @ vecs[0]
        out, at = [], 0
        for h, p in zip(hits, pieces, strict=True):
            best = float(sims[at : at + len(p)].max())
            at += len(p)
            out.append(self.sentence_weight * best + (1 - self.sentence_weight) * h.vector_score)
        return out

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        """Hits by descending score (ties keep the first stage's order)."""
        if not hits:
            return []
        order = self.scores(query, hits)
        return [
            h
            for _, _, h in sorted(
                zip(order, range(len(hits)), hits, strict=True), key=lambda t: (-t[0], t[1])
            )
        ]


@runtime_checkable
class _ScoresTokens(Protocol):
    """An engine whose next-token logits can be read (`xpullm.LLM`): the model and its tokenizer."""

    model: Any
    tokenizer: Any


class LLMReranker:
    """Pointwise LLM relevance: hits ordered by the model's logit(yes) - logit(no) margin (see the module doc).

    Engines that expose no logits (only `ChatEngine.chat`) fall back to the generated verdict: "yes" hits first,
    keeping their order.
    """

    PROMPT = (
        "Does the passage help answer the question? Reply with yes or no.\n\n"
        "Question: {question}\n\nPassage: {passage}\n\nAnswer (yes or no):"
    )

    def __init__(self, llm: ChatEngine, max_passage_chars: int = 1200) -> None:
        self.llm = llm
        self.max_passage_chars = max_passage_chars
        self._ids: tuple[list[int], list[int]] | None = None

    def _messages(self, query: str, hit: Hit) -> list[dict[str, str]]:
        prompt = self.PROMPT.format(question=query, passage=hit.text[: self.max_passage_chars])
        return [{"role": "user", "content": prompt}]

    def _answer_ids(self, tokenizer: Any) -> tuple[list[int], list[int]]:
        if self._ids is None:
            variants = ("yes", "Yes", " yes", " Yes"), ("no", "No", " no", " No")
            self._ids = tuple(  # type: ignore[assignment]
                sorted({tokenizer.encode(v, add_special_tokens=False)[0] for v in vs}) for vs in variants
            )
        assert self._ids is not None
        return self._ids

    def score(self, query: str, hit: Hit) -> float:
        """logit(yes) - logit(no) for the first answer token (higher = more relevant); needs a `_ScoresTokens`."""
        import torch

        from xpullm.engine.chat import render_chat

        engine = self.llm
        if not isinstance(engine, _ScoresTokens):
            raise TypeError(
                f"LLMReranker.score needs an engine that exposes its model and tokenizer, got {engine!r:.60}"
            )
        tok = engine.tokenizer
        text = render_chat(tok, self._messages(query, hit))
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        model = engine.model
        with torch.no_grad():
            logits = model(ids.to(next(model.parameters()).device), use_cache=False).logits[0, -1].float()
        yes, no = self._answer_ids(tok)
        return float(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0))

    def judge(self, query: str, hit: Hit) -> bool:
        """True when the LLM's generated verdict is yes (the uncalibrated signal)."""
        import re

        out = self.llm.chat(self._messages(query, hit), max_new_tokens=3, temperature=0.0)
        return bool(re.match(r"\s*yes\b", out.text, re.IGNORECASE))

    def rerank(self, query: str, hits: Sequence[Hit]) -> list[Hit]:
        """By margin when the engine exposes logits, else "yes" hits first (stable)."""
        if isinstance(self.llm, _ScoresTokens):
            margins = [self.score(query, h) for h in hits]
            ranked = sorted(zip(margins, range(len(hits)), hits, strict=True), key=lambda t: (-t[0], t[1]))
            return [h for _, _, h in ranked]
        verdicts = [self.judge(query, h) for h in hits]
        return [h for h, v in zip(hits, verdicts, strict=True) if v] + [
            h for h, v in zip(hits, verdicts, strict=True) if not v
        ]


def apply_reranker(reranker: Reranker | RerankFn, query: str, hits: list[Hit]) -> list[Hit]:
    """Accept a `Reranker` object or a plain `fn(query, hits) -> hits` callable."""
    if isinstance(reranker, Reranker):
        out = reranker.rerank(query, hits)
    elif callable(reranker):
        out = reranker(query, hits)
    else:
        raise TypeError(f"rerank must be None, a Reranker or a callable, got {type(reranker).__name__}")
    return [replace(h) for h in out]
