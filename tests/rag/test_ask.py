"""`kb.ask`: grounded prompt, citations mapped to chunks, refusal when nothing is relevant; real default LLM."""

from __future__ import annotations

import pytest

from xpullm.rag import Answer, KnowledgeBase
from xpullm.rag.answer import NO_ANSWER, SYSTEM, build_prompt, extract_citations
from xpullm.rag.retrieval import Hit

FACTS = {
    "e4417": "Printer error E4417 means the paper tray is empty and must be refilled.",
    "e4471": "Printer error E4471 means the toner cartridge is empty and must be replaced.",
    "rain": "The Amazon basin receives more than two metres of precipitation every year.",
}


@pytest.fixture(scope="module")
def llm():
    from xpullm.engine import LLM

    return LLM(device="cpu")


@pytest.fixture
def facts_kb(make_kb) -> KnowledgeBase:
    kb = make_kb()
    kb.add(texts=list(FACTS.values()), names=list(FACTS))
    return kb


def hits(*texts: str) -> list[Hit]:
    return [Hit(t, 1.0 - i / 10, f"doc{i}", 100 + i, f"id{i}") for i, t in enumerate(texts)]


def test_prompt_numbers_sources_in_rank_order() -> None:
    prompt = build_prompt("Why?", hits("alpha", "beta"))
    assert prompt == "Sources:\n\n[1] (doc0)\nalpha\n\n[2] (doc1)\nbeta\n\nQuestion: Why?"
    assert "[1]" in SYSTEM and NO_ANSWER in SYSTEM


def test_extract_citations_maps_numbers_to_chunks() -> None:
    src = hits("alpha", "beta", "gamma")
    cites = extract_citations("A is alpha [1]. B and C [2, 3]. Nonsense [7] and [0]. Again [1].", src)
    assert sorted(cites) == [1, 2, 3]
    assert [(c.chunk_id, c.doc_id, c.text) for c in cites.values()] == [
        (100, "id0", "alpha"),
        (101, "id1", "beta"),
        (102, "id2", "gamma"),
    ]


def test_nothing_relevant_means_no_llm_call(facts_kb: KnowledgeBase) -> None:
    class MustNotBeCalled:
        def generate(self, *a, **k):
            raise AssertionError("the LLM must not be called without relevant sources")

        chat = stream = stream_chat = generate

    answer = facts_kb.ask("Who painted the Sistine Chapel ceiling?", llm=MustNotBeCalled())
    assert isinstance(answer, Answer)
    assert (
        answer.text == NO_ANSWER and answer.citations == {} and answer.sources == () and not answer.grounded
    )
    stream = facts_kb.ask("Who painted the Sistine Chapel ceiling?", llm=MustNotBeCalled(), stream=True)
    assert "".join(stream) == NO_ANSWER and stream.answer is not None and not stream.answer.grounded


def test_ask_with_the_default_llm_cites_retrieved_chunks(facts_kb: KnowledgeBase, llm) -> None:
    answer = facts_kb.ask("What does printer error E4417 mean?", llm=llm, max_new_tokens=32)
    assert answer.grounded and answer.text
    assert answer.sources[0].text == FACTS["e4417"]  # the right chunk was retrieved and shown first
    assert "rain" not in {s.document for s in answer.sources}  # below the similarity threshold
    assert answer.citations, answer.text
    chunks = facts_kb.store.get_chunks([c.chunk_id for c in answer.citations.values()])
    for n, cite in answer.citations.items():
        assert f"[{n}]" in answer.text or f"{n}," in answer.text or f", {n}]" in answer.text
        assert cite.chunk_id == answer.sources[n - 1].chunk_id
        assert chunks[cite.chunk_id].text == cite.text


def test_stream_matches_generate(facts_kb: KnowledgeBase, llm) -> None:
    q = "What does printer error E4417 mean?"
    full = facts_kb.ask(q, llm=llm, max_new_tokens=12)
    stream = facts_kb.ask(q, llm=llm, max_new_tokens=12, stream=True)
    deltas = list(stream)
    assert len(deltas) > 1
    assert stream.result() == full
