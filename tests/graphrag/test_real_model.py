"""One real end-to-end run with the packaged default model (`xpullm.LLM()`) on a two-document corpus.

A 135M model writes poor tuples and short JSON: the point is that every stage runs through the real engine (chat
template, batching, constrained JSON, token counts), every table is written with the right columns, and queries
return text. Budgets are tiny so the test stays short on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from xpullm.graphrag import COLUMNS, GraphRAG, GraphRAGConfig

DOCS = [
    "Marta Ruiz founded the Ruiz Bakery in Toledo in 1998. The bakery sells bread to the Toledo Cathedral.",
    "The Toledo Cathedral hired Marta Ruiz to bake bread for the spring festival. The festival is held in Toledo.",
]


@pytest.fixture(scope="module")
def llm():
    from xpullm.engine import LLM

    return LLM()


@pytest.mark.slow
def test_default_model_end_to_end(tmp_path, llm, embedder):
    config = GraphRAGConfig().replace(
        llm={"batch_size": 2},
        chunks={"size": 200, "overlap": 20},
        extract_graph={"method": "llm", "max_gleanings": 0, "max_new_tokens": 64},
        summarize_descriptions={"max_new_tokens": 24},
        community_reports={"max_new_tokens": 64, "max_retries": 1},
        query={"max_new_tokens": 24, "global_map_new_tokens": 32, "drift_follow_ups": 1},
        progress=False,
    )
    rag = GraphRAG(tmp_path, llm=llm, embedder=embedder, config=config)
    result = rag.index(DOCS)
    for name, columns in COLUMNS.items():
        assert list(rag.table(name).columns) == columns, name
    assert result.documents == 2 and result.text_units == 2
    stats = rag.stats()
    assert stats["stages"]["extract_graph"]["llm_calls"] == 2
    assert stats["totals"]["prompt_tokens"] > 0 and stats["totals"]["completion_tokens"] > 0
    assert (
        len(rag.table("community_reports")) == result.communities
    )  # a report per community, even if fallback
    for method in ("local", "global", "basic", "drift"):
        answer = rag.query("What does Marta Ruiz do?", method=method)
        assert isinstance(answer.text, str) and answer.text.strip(), method
    # a second run is served from the cache: zero engine calls
    again = rag.index(DOCS)
    assert again.stats["totals"]["llm_calls"] == 0
    rag.close()


@pytest.mark.slow
def test_default_method_for_the_packaged_model_is_nlp(tmp_path, llm, embedder):
    """135M parameters: "auto" picks the nlp method; the graph has edges, communities and LLM-written reports, and
    every answer cites its records or refuses."""
    config = GraphRAGConfig().replace(
        community_reports={"max_new_tokens": 160, "max_retries": 0},
        query={"max_new_tokens": 48, "global_map_new_tokens": 48, "drift_follow_ups": 1},
        progress=False,
    )
    rag = GraphRAG(tmp_path, llm=llm, embedder=embedder, config=config)
    result = rag.index(DOCS)
    stats = rag.stats()
    assert stats["info"]["extraction_method"] == "nlp"
    assert stats["info"]["extraction_method_reason"].startswith("auto: 13")  # ~135M parameters
    assert stats["stages"]["extract_graph"]["llm_calls"] == 0
    titles = set(rag.table("entities")["title"])
    assert {"MARTA RUIZ", "RUIZ BAKERY", "TOLEDO", "TOLEDO CATHEDRAL"} <= titles
    assert result.relationships > 0 and result.communities > 0
    assert result.community_reports == result.communities
    assert stats["stages"]["community_reports"]["llm_calls"] >= 1
    for method in ("local", "global", "drift"):
        answer = rag.query("What does Marta Ruiz bake for the Toledo Cathedral?", method=method)
        assert answer.citations() or answer.details.get("refused"), (method, answer.text)
    off_topic = rag.query("How do rockets reach orbit?", method="local")
    assert off_topic.details["refused"]
    rag.close()
