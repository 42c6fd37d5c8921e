"""Relevance of a passage to a query as the LLM's probability of answering "yes" (no reranker model ships offline).

The engine has no scoring call yet, so this runs one forward pass of the engine's own model per passage and
compares the next-token logits of " yes"/"yes" against " no"/"no" after a yes/no question in the chat template.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["relevance_scores"]

# Wording chosen by measurement on SmolLM2-135M: passage-first or "help answer" phrasings ranked off-topic text
# above the answer; asking whether the passage "contains the answer" ranked it first.
QUESTION = (
    "Question: {query}\nPassage: {passage}\nDoes the passage contain the answer to the question? "
    "Answer with yes or no."
)


def _first_ids(tokenizer: object, words: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for w in words:
        enc = tokenizer(w, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        if enc and enc[0] not in ids:
            ids.append(enc[0])
    return ids


def relevance_scores(
    llm: LLM, query: str, passages: Sequence[str], max_passage_tokens: int = 384
) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for each passage, in input order."""
    import torch

    if not isinstance(query, str) or not query:
        raise ValueError(f"query must be a non-empty string, got {query!r}")
    tok = llm.tokenizer
    model = llm.model
    yes = _first_ids(tok, ["yes", " yes", "Yes", " Yes"])
    no = _first_ids(tok, ["no", " no", "No", " No"])
    device = next(model.parameters()).device
    scores: list[float] = []
    for passage in passages:
        ids = tok(passage, add_special_tokens=False)["input_ids"][:max_passage_tokens]
        text = tok.decode(ids)
        prompt = llm.render_chat([{"role": "user", "content": QUESTION.format(query=query, passage=text)}])
        input_ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]], device=device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        p_yes = torch.logsumexp(lp[yes], 0).item()
        p_no = torch.logsumexp(lp[no], 0).item()
        scores.append(1.0 / (1.0 + math.exp(p_no - p_yes)))
    return scores
