"""The "nlp" extraction method (real spaCy model) and the method registry's "auto" rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpullm.graphrag import ConfigError, GraphRAGConfig
from xpullm.graphrag.chunking import chunk_document, load_inputs
from xpullm.graphrag.communities import cluster_graph
from xpullm.graphrag.graph import build_graph
from xpullm.graphrag.methods import EXTRACTION_METHODS, choose_method, get_method
from xpullm.graphrag.stats import IndexStats

ARTICLES = Path(__file__).parent / "data" / "articles"


class _Counter:
    """What extraction and build_graph need of an LLMCaller when no LLM call is made: counters and a tokenizer."""

    def __init__(self) -> None:
        self.stats = IndexStats()

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@pytest.fixture(scope="module")
def graph():
    config = GraphRAGConfig()
    docs = load_inputs(ARTICLES)
    units = [u for d in docs for u in chunk_document(d, 600, 50, lambda t: len(t.split()))]
    caller = _Counter()
    records = get_method("nlp").extract(units, caller, config.extract_graph)
    entities, relationships = build_graph(records, caller, config.summarize_descriptions, None, False)
    return (
        docs,
        records,
        entities,
        relationships,
        cluster_graph(entities, relationships, config.cluster_graph),
    )


def test_entities_are_typed_noun_phrases_and_named_entities(graph):
    _, _, entities, _, _ = graph
    by_title = {e["title"]: e for e in entities}
    for name in (
        "HANA MORROW",
        "TOBIAS WREN",
        "LENA FISCHER",
        "SAMUEL OKAFOR",
        "ELLIS RIVER",
        "ALDER PAPER MILL",
    ):
        assert name in by_title, name
    assert by_title["TOBIAS WREN"]["type"] == "person"
    assert by_title["ELLIS RIVER"]["type"] == "geo"
    assert by_title["GREYFEN FOREST COOPERATIVE"]["type"] == "organization"
    assert by_title["REPLANTING PROGRAM"]["type"] == "concept"  # a noun phrase, no named entity
    assert "THE" not in {t.split()[0] for t in by_title}  # leading determiners are dropped
    assert not any(t.isdigit() for t in by_title)  # dates and numbers are not entities
    # Tobias Wren is in three articles: one entity, three text units.
    assert by_title["TOBIAS WREN"]["frequency"] == 3


def test_descriptions_are_sentences_of_the_text(graph):
    docs, _, entities, _, _ = graph
    text = " ".join(" ".join(d.text.split()) for d in docs)
    for e in entities:
        assert e["description"], e["title"]
        for sentence in e["description"].split(". "):
            assert sentence.rstrip(".") in text, (e["title"], sentence)


def test_cooccurrence_edges_weighted_by_frequency(graph):
    _, records, _, relationships, communities = graph
    rel = {(r["source"], r["target"]): r for r in relationships}
    rel.update({(r["target"], r["source"]): r for r in relationships})
    # One shared sentence (library.txt: 1 for the unit + 1 for the sentence), one shared article (brannock_dam.txt,
    # where the sentence says "the dam": 1): 3 in all, described by the shared sentence.
    edge = rel[("HANA MORROW", "BRANNOCK DAM")]
    assert edge["weight"] == 3.0
    assert "including her drawings of the Brannock Dam." in edge["description"]
    # Same article, different sentences: weight 1 and a plain description.
    edge = rel[("OWEN PRICE", "LENA FISCHER")]
    assert edge["weight"] == 1.0 and "same passage" in edge["description"]
    # Ellis River and Kestrel Falls share several articles: their weights add up.
    assert rel[("ELLIS RIVER", "KESTREL FALLS")]["weight"] >= 3.0
    assert all(r.source != r.target for res in records.values() for r in res.relationships)
    assert len(communities) >= 3 and {c["level"] for c in communities} >= {0}


def test_registry_and_auto_rule():
    assert {"llm", "nlp"} <= set(EXTRACTION_METHODS)

    class Sized:
        def __init__(self, n: int) -> None:
            self.parameter_count = n

    assert choose_method("auto", Sized(135_000_000), 10**9)[0] == "nlp"
    assert choose_method("auto", Sized(8_000_000_000), 10**9)[0] == "llm"
    assert choose_method("auto", object(), 10**9)[0] == "llm"  # unknown size: the LLM extracts
    assert choose_method("llm", Sized(1), 10**9)[0] == "llm"  # an explicit method is kept
    with pytest.raises(ConfigError, match="unknown extraction method 'spacy'; choose one of auto, llm, nlp"):
        GraphRAGConfig().replace(extract_graph={"method": "spacy"})
