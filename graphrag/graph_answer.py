"""GraphRAG's answer type: the text, the context records it was built from, and its `[Data: ...]` citations."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xpullm.answers import Answer, AnswerStream

__all__ = ["ContextRecord", "GraphAnswer", "stream_answer"]


@dataclass(frozen=True)
class ContextRecord:
    """One record shown to the model: an entity, relationship, source text unit, report or map point."""

    kind: str  # "entity" | "relationship" | "source" | "report" | "point"
    id: str
    human_readable_id: int
    text: str
    score: float | None = None


@dataclass
class GraphAnswer(Answer):
    """GraphRAG's answer: its text with the records it was built from and the usage of its LLM calls."""

    method: str
    context: list[ContextRecord]
    context_text: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    question: str = ""
    """The question this answers (empty for drift's follow-up answers, which only feed its final answer)."""

    def records(self, kind: str) -> list[ContextRecord]:
        """The context records of one kind."""
        return [r for r in self.context if r.kind == kind]

    @staticmethod
    def citations_in(text: str) -> bool:
        """Whether `text` holds a `[Data: Kind (ids)]` reference."""
        return bool(re.search(r"\[Data:[^\]]*\(\s*\d", text))

    def citations(self) -> dict[str, list[int]]:
        """Ids cited in the answer text as [Data: Entities (1, 2); Reports (3)], by kind (lower-case plural)."""
        out: dict[str, list[int]] = {}
        for block in re.findall(r"\[Data:([^\]]*)\]", self.text):
            for kind, ids in re.findall(r"(\w+)\s*\(([^)]*)\)", block):
                nums = [int(x) for x in re.findall(r"\d+", ids)]
                out.setdefault(kind.lower(), []).extend(n for n in nums if n not in out.get(kind.lower(), []))
        return out


def stream_answer(
    answer: GraphAnswer,
    pieces: Iterator[str],
    finish_text: Callable[[GraphAnswer, str], str] | None = None,
) -> AnswerStream[GraphAnswer]:
    """`answer` (context known, text empty) streamed: its text is set when the pieces are all read."""

    def finish(text: str) -> GraphAnswer:
        answer.text = finish_text(answer, text) if finish_text is not None else text
        return answer

    return AnswerStream(pieces, finish, context=answer.context, answer=answer)
