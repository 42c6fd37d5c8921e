"""Grounded answers: the prompt built from retrieved chunks, and `[n]` citations mapped back to chunks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpullm.rag.retrieval import Hit

__all__ = ["NO_ANSWER", "Answer", "AnswerStream", "Citation", "build_prompt", "extract_citations"]

NO_ANSWER = "I could not find anything about this in the knowledge base."

SYSTEM = (
    "Answer the question using only the numbered sources. After each fact, cite its source number in square "
    "brackets, like [1]. If the sources do not contain the answer, reply exactly: " + NO_ANSWER
)


@dataclass(frozen=True)
class Citation:
    """What `[n]` in an answer points to."""

    n: int
    chunk_id: int
    doc_id: str
    document: str
    text: str
    source: str = ""


@dataclass(frozen=True)
class Answer:
    """An answer with its citations and the chunks it was built from."""

    text: str
    citations: dict[int, Citation] = field(default_factory=dict)
    sources: tuple[Hit, ...] = ()  # what the prompt showed, numbered from 1
    question: str = ""
    grounded: bool = True  # False when nothing relevant was retrieved and the LLM was not called
    citation_mode: str = "model"  # "model": the LLM wrote the [n]; "attributed": added by similarity; "none"


def format_source(n: int, hit: Hit, max_chars: int) -> str:
    """One numbered source block of the prompt."""
    title = hit.document + (f" — {hit.section}" if hit.section and hit.section != hit.document else "")
    return f"[{n}] ({title})\n{hit.text[:max_chars]}"


def build_prompt(question: str, hits: Sequence[Hit], max_chars_per_source: int = 1500) -> str:
    """The user message: numbered sources, then the question."""
    sources = "\n\n".join(format_source(i, h, max_chars_per_source) for i, h in enumerate(hits, start=1))
    return f"Sources:\n\n{sources}\n\nQuestion: {question}"


def fit_sources(
    question: str, hits: Sequence[Hit], count_tokens: Callable[[str], int] | None, budget: int | None
) -> list[Hit]:
    """Drop the lowest-ranked sources until the prompt fits `budget` tokens (never below one source)."""
    kept = list(hits)
    if count_tokens is None or budget is None:
        return kept
    while len(kept) > 1 and count_tokens(SYSTEM + build_prompt(question, kept)) > budget:
        kept.pop()
    return kept


_CITE = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def extract_citations(text: str, sources: Sequence[Hit]) -> dict[int, Citation]:
    """Map every valid `[n]` / `[n, m]` in `text` to its source; numbers outside 1..len(sources) are ignored."""
    out: dict[int, Citation] = {}
    for m in _CITE.finditer(text):
        for part in m.group(1).split(","):
            n = int(part)
            if 1 <= n <= len(sources) and n not in out:
                h = sources[n - 1]
                out[n] = Citation(n, h.chunk_id, h.doc_id, h.document, h.text, h.source)
    return dict(sorted(out.items()))


def attribute_citations(
    text: str, sources: Sequence[Hit], embed: Callable[[list[str]], Any], min_similarity: float = 0.5
) -> str:
    """Append `[n]` to each answer sentence that closely matches source n (for models that do not cite).

    Small models often copy facts from the sources without writing the markers; matching each sentence to its most
    similar source recovers where it came from. Sentences that match no source well stay uncited.
    """
    import numpy as np

    from xpullm.rag.chunking import split_sentences

    sentences = split_sentences(text)
    if not sentences or not sources:
        return text
    vecs = np.asarray(embed(sentences + [h.text for h in sources]), dtype=np.float32)
    sims = vecs[: len(sentences)] @ vecs[len(sentences) :].T
    out = []
    for sentence, row in zip(sentences, sims, strict=True):
        best = int(row.argmax())
        out.append(f"{sentence} [{best + 1}]" if row[best] >= min_similarity else sentence)
    return " ".join(out)


class AnswerStream:
    """Iterate to get text deltas as the LLM produces them; `.answer` holds the final `Answer` afterwards."""

    def __init__(self, deltas: Iterator[str], finish: Callable[[str], Answer]) -> None:
        self._deltas = deltas
        self._finish = finish
        self._parts: list[str] = []
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self._parts.append(delta)
            yield delta
        self.answer = self._finish("".join(self._parts))

    def result(self) -> Answer:
        """Consume what is left and return the final answer."""
        if self.answer is None:
            for _ in self:
                pass
        assert self.answer is not None
        return self.answer


def llm_messages(question: str, hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Chat messages for engines with a chat template."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": build_prompt(question, hits)}]
