"""The answer both knowledge pipelines return, whole or streamed.

`Answer` is what the knowledge base (`xpullm.rag`, with citations) and GraphRAG (`xpullm.graphrag`, with its
context records) both answer with; `AnswerStream` streams either: iterate for text deltas, then read `.answer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Answer", "AnswerStream", "stream_until"]


@dataclass
class Answer:
    """An answer's text; each pipeline's answer adds what it was built from (sources, context records, usage)."""

    text: str


A = TypeVar("A", bound=Answer)


class AnswerStream(Generic[A]):
    """Iterate to get text deltas as the LLM produces them; `.answer` holds the final answer afterwards.

    `context` is what the answer is built from, known before the first delta (the knowledge base's retrieved hits,
    GraphRAG's context records). `answer` may be given up front (GraphRAG: the records without the text); `finish`
    turns the streamed text into the final answer.
    """

    def __init__(
        self,
        deltas: Iterator[str],
        finish: Callable[[str], A],
        context: Sequence[Any] = (),
        answer: A | None = None,
    ) -> None:
        self._deltas = deltas
        self._finish = finish
        self._parts: list[str] = []
        self._done = False
        self.context = list(context)
        self.answer: A | None = answer

    @property
    def text(self) -> str:
        """The text streamed so far (the whole answer once iteration ended)."""
        return "".join(self._parts)

    def __iter__(self) -> Iterator[str]:
        for delta in self._deltas:
            self._parts.append(delta)
            yield delta
        self.answer = self._finish(self.text)
        self._done = True

    def result(self) -> A:
        """Consume what is left and return the final answer."""
        if not self._done:
            for _ in self:
                pass
        assert self.answer is not None
        return self.answer


def stream_until(deltas: Iterator[str], done: Callable[[str], bool]) -> Iterator[str]:
    """Pass `deltas` through until `done(text so far)` holds, then stop and close `deltas` (which releases the
    engine's generation, so the rest of `max_new_tokens` is never computed)."""
    text = ""
    try:
        for delta in deltas:
            yield delta
            text += delta
            if done(text):
                return
    finally:
        close = getattr(deltas, "close", None)
        if callable(close):
            close()
