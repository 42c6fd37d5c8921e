"""Grounded answers: the prompt built from retrieved chunks, and `[n]` citations mapped back to chunks."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from xpullm.answers import Answer, AnswerStream, stream_until
from xpullm.protocols import ChatEngine, TokenCounter
from xpullm.rag.retrieval import Hit
from xpullm.rag.support import SentenceSupport, SupportConfig, answer_sentences, check_support, kept_text

__all__ = [
    "NO_ANSWER",
    "Citation",
    "CitedAnswer",
    "answer_from_hits",
    "attribute_citations",
    "build_prompt",
    "cut_repetition",
    "extract_citations",
    "until_repetition",
]

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


@dataclass
class CitedAnswer(Answer):
    """The knowledge base's answer: its text with `[n]` citations and the chunks it was built from."""

    citations: dict[int, Citation] = field(default_factory=dict)
    sources: tuple[Hit, ...] = ()  # what the prompt showed, numbered from 1
    question: str = ""
    grounded: bool = True  # False when nothing relevant was retrieved and the LLM was not called
    citation_mode: str = "model"  # "model": the LLM wrote the [n]; "attributed": added by overlap; "none"
    refused: bool = (
        False  # the answer is NO_ANSWER: nothing retrieved, the model said so, or nothing was supported
    )
    support: tuple[SentenceSupport, ...] = ()  # the verdict on each sentence the model wrote (see `support`)
    draft: str = ""  # the model's text before unsupported sentences were dropped

    @property
    def references(self) -> dict[int, Citation]:
        """The sources to list under the answer: the cited ones, or, when nothing is cited, every source the
        answer was built from (a reader must always see what the model was given; `citation_mode` says which)."""
        if self.citations or not self.grounded or self.refused:
            return self.citations
        return {n: _citation(n, h) for n, h in enumerate(self.sources, start=1)}


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
                out[n] = _citation(n, sources[n - 1])
    return dict(sorted(out.items()))


def _citation(n: int, h: Hit) -> Citation:
    return Citation(n, h.chunk_id, h.doc_id, h.document, h.text, h.source)


_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")
# Words that carry no fact: a sentence sharing only these with a source has not taken anything from it.
_STOPWORDS = frozenset(
    _WORD.findall(
        "a an and are as at be been by can could did do does for from had has have how in into is it its of on or "
        "that the their then there these they this to was were what when where which who whom why will with would "
        "you your not no yes also about after before than"
    )
)


def _content_words(text: str) -> set[str]:
    return {w for w in (m.group().lower() for m in _WORD.finditer(text)) if w not in _STOPWORDS}


def _copied_words(sentence: str, source: str, question: str) -> int:
    """How many of the sentence's content words come from the source and not from the question.

    Words echoed from the question prove nothing (the question and the source share them by retrieval); a name, a
    number or a term found only in the source shows the sentence was taken from it.
    """
    return len((_content_words(sentence) - _content_words(question)) & _content_words(source))


def attribute_citations(
    text: str,
    sources: Sequence[Hit],
    embed: Callable[[list[str]], Any],
    min_similarity: float = 0.5,
    question: str = "",
    min_copied_words: int = 2,
) -> str:
    """Append `[n]` to each answer sentence that overlaps source n (for models that do not cite).

    Small models often copy facts from the sources without writing the markers; a sentence is taken to come from
    a source when its embedding is at least `min_similarity` close to it, or when it contains `min_copied_words`
    content words of that source that the question does not contain (a copied name, date or term can sit in an
    otherwise loose sentence whose embedding is far from the chunk). Among the sources that qualify, the one with
    the most copied words wins, then the most similar. Sentences that overlap no source stay uncited.
    """
    import numpy as np

    from xpullm.documents.templates import split_sentences

    sentences = split_sentences(text)
    if not sentences or not sources:
        return text
    vecs = np.asarray(embed(sentences + [h.text for h in sources]), dtype=np.float32)
    sims = vecs[: len(sentences)] @ vecs[len(sentences) :].T
    out = []
    for sentence, row in zip(sentences, sims, strict=True):
        copied = [_copied_words(sentence, h.text, question) for h in sources]
        qualify = [
            j for j in range(len(sources)) if row[j] >= min_similarity or copied[j] >= min_copied_words
        ]
        if qualify:
            best = max(qualify, key=lambda j: (copied[j], float(row[j]), -j))
            out.append(f"{sentence} [{best + 1}]")
        else:
            out.append(sentence)
    return " ".join(out)


def _repeat_start(text: str, final: bool) -> int | None:
    """Offset where the text starts to loop, or None: the first sentence or list item that repeats an earlier one
    (list numbers, case and outer punctuation ignored), or a phrase repeated back to back inside a sentence
    (`xpullm.engine.loops`), whichever comes first.

    The last piece only counts when `final`: while text streams in it may still grow into another sentence.
    """
    from xpullm.documents.templates import sentence_spans
    from xpullm.engine.loops import normalize_unit, tandem_repeat, tandem_repeat_at_end

    spans = sentence_spans(text)
    seen: set[str] = set()
    repeat = None
    for start, end in spans if final else spans[:-1]:
        unit = normalize_unit(text[start:end])
        if unit in seen:
            repeat = start
            break
        if unit:
            seen.add(unit)
    loop = tandem_repeat(text) if final else tandem_repeat_at_end(text, final=False)
    found = [at for at in (repeat, loop) if at is not None]
    return min(found) if found else None


def cut_repetition(text: str) -> str:
    """`text` up to where it starts to loop (see `_repeat_start`).

    Small greedy models fall into loops ("The answer is: 1. 1. 1. ..."); an answer never needs a sentence twice.
    """
    from xpullm.engine.loops import drop_trailing_marker

    cut = _repeat_start(text, final=True)
    return text if cut is None else drop_trailing_marker(text[:cut])


def until_repetition(deltas: Iterator[str]) -> Iterator[str]:
    """Pass `deltas` through until the text repeats a whole sentence, then stop the generation.

    Stopping early saves the rest of `max_new_tokens`; `cut_repetition` of what was streamed equals
    `cut_repetition` of the full generation, so streamed and non-streamed answers agree.
    """
    return stream_until(deltas, lambda text: _repeat_start(text, final=False) is not None)


def llm_messages(question: str, hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Chat messages for engines with a chat template."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": build_prompt(question, hits)}]


def answer_from_hits(
    question: str,
    hits: Sequence[Hit],
    llm: ChatEngine,
    embed: Callable[[list[str]], Any],
    stream: bool,
    params: dict[str, Any],
    support: SupportConfig = SupportConfig(),
) -> CitedAnswer | AnswerStream[CitedAnswer]:
    """Ask `llm` to answer `question` from `hits` (best first, at least one) and cite them.

    The sources that fit the context window are shown (when `llm` is a `TokenCounter`); an answer that cites
    nothing gets its sentences attributed by overlap (`embed` compares them with the sources); the text stops at
    the first sentence it repeats; sentences their cited chunks do not support are dropped, and an answer left
    with none becomes the refusal (`xpullm.rag.support`). A stream yields the model's raw text; its final
    `.answer` is the checked one.
    """
    count, budget = None, None
    if isinstance(llm, TokenCounter):
        count = llm.count_tokens
        budget = llm.context_length - int(params["max_new_tokens"]) - 64  # 64: chat-template markup
    sources = tuple(fit_sources(question, hits, count, budget))

    def finish(text: str) -> CitedAnswer:
        text = cut_repetition(text.strip())
        if not text or NO_ANSWER in text:
            return CitedAnswer(
                NO_ANSWER, {}, sources, question, citation_mode="none", refused=True, draft=text
            )
        citations, mode = extract_citations(text, sources), "model"
        if not citations:
            text = attribute_citations(text, sources, embed, question=question)
            citations = extract_citations(text, sources)
            mode = "attributed" if citations else "none"
        if not support.enabled:
            return CitedAnswer(text, citations, sources, question, citation_mode=mode)
        checks = tuple(check_support(answer_sentences(text), sources, question, embed, support))
        if not any(c.supported and c.cited for c in checks):
            return CitedAnswer(NO_ANSWER, {}, sources, question, citation_mode=mode, refused=True,
                               support=checks, draft=text)  # fmt: skip
        kept = kept_text(checks)
        return CitedAnswer(kept, extract_citations(kept, sources), sources, question, citation_mode=mode,
                           support=checks, draft=text)  # fmt: skip

    messages = llm_messages(question, sources)
    if stream:
        return AnswerStream(
            until_repetition(iter(llm.stream_chat(messages, **params))), finish, context=sources
        )
    return finish(llm.chat(messages, **params).text)
