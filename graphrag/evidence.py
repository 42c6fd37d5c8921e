"""Query-time evidence for global search: the source sentences of the communities that are closest to a question.

Global search maps the question over community reports. A model too small to write a useful report (the packaged
135M model writes "The community is a group of entities and their relationships.") or to find a point in one
leaves the reduce step nothing to answer from. The communities still hold what the reports should summarize: the
text units their entities come from. Ranking those units' sentences by their closeness to the question (the mean of
their cosine and the share of the question's content words they hold) and citing each
with the reports of the communities that hold it (the communities whose entities it names, else every community
holding its unit) gives the reduce step short, relevant, cited points - the idea of LazyGraphRAG's query-time
relevance test, with the report ids as the citations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xpullm.protocols import EmbeddingModel

__all__ = ["Evidence", "community_evidence"]


@dataclass(frozen=True)
class Evidence:
    """One source sentence and the reports (community numbers) it is cited with."""

    sentence: str
    reports: tuple[int, ...]
    score: (
        float  # closeness to the question: mean of the cosine and the share of the question's words it holds
    )


def _names_in(sentence: str, titles: Sequence[str]) -> bool:
    upper = sentence.upper()
    return any(len(t) > 2 and re.search(rf"\b{re.escape(t)}\b", upper) for t in titles)


def community_evidence(
    question: str,
    reports: Sequence[dict[str, Any]],
    communities: Sequence[dict[str, Any]],
    entities: Sequence[dict[str, Any]],
    text_units: Sequence[dict[str, Any]],
    embedder: EmbeddingModel,
    top_k: int,
    min_score: float,
    max_reports: int = 3,
) -> list[Evidence]:
    """The `top_k` sentences of the text units of `reports`' communities closest to `question` (cosine at least
    `min_score`), best first, each cited with up to `max_reports` report community numbers (highest rank first).

    The cosine alone ranks "Engineer Hana Morrow designed the dam" above "The Kestrel Falls Library holds the papers
    of Hana Morrow, including her drawings of the Brannock Dam" for "Where are Hana Morrow's drawings of the
    Brannock Dam kept?"; the shared words (drawings) put the second first.
    """
    from xpullm.documents.templates import split_sentences
    from xpullm.graphrag.query_text import content_words

    by_community = {c["community"]: c for c in communities}
    titles = {e["id"]: e["title"] for e in entities}
    units = {u["id"]: u for u in text_units}
    holders: dict[str, list[tuple[int, list[str]]]] = {}  # unit id -> (community, its entity titles)
    for r in sorted(reports, key=lambda r: (-r["rank"], r["community"])):
        c = by_community.get(r["community"])
        if c is None:
            continue
        names = [titles[e] for e in c["entity_ids"] if e in titles]
        for u in c["text_unit_ids"]:
            holders.setdefault(u, []).append((int(r["community"]), names))
    cited: dict[str, tuple[int, ...]] = {}
    for u in sorted(holders, key=lambda u: units[u]["human_readable_id"] if u in units else 0):
        if u not in units:
            continue
        for sentence in split_sentences(units[u]["text"]):
            naming = [c for c, names in holders[u] if _names_in(sentence, names)]
            ids = tuple(dict.fromkeys(cited.get(sentence, ()) + tuple(naming or [c for c, _ in holders[u]])))
            cited[sentence] = ids
    if not cited:
        return []
    sentences = list(cited)
    mat = embedder.embed_matrix([question, *sentences], batch_size=32, show_progress=False)
    q, rows = mat[0], mat[1:]
    sims = rows @ q / ((rows**2).sum(axis=1) ** 0.5 * float((q**2).sum()) ** 0.5 + 1e-9)
    asked = content_words(question)
    close = [
        (float(sims[i]) + len(asked & content_words(s)) / max(len(asked), 1)) / 2
        for i, s in enumerate(sentences)
    ]
    order = sorted(
        (i for i in range(len(sentences)) if float(sims[i]) >= min_score), key=lambda i: (-close[i], i)
    )
    return [
        Evidence(sentences[i], cited[sentences[i]][:max_reports], round(close[i], 4)) for i in order[:top_k]
    ]
