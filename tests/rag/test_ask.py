"""`kb.ask`: grounded prompt, citations mapped to chunks, refusal when nothing is relevant; real default LLM."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from xpullm.rag import Answer, KnowledgeBase
from xpullm.rag.answer import NO_ANSWER, SYSTEM, build_prompt, extract_citations
from xpullm.rag.retrieval import Hit
from xpullm.rag.support import SupportConfig

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


def _assert_citations_match_chunks(kb: KnowledgeBase, answer: Answer) -> None:
    """Every citation is marked in the text, names the source of its number and quotes that stored chunk."""
    chunks = kb.store.get_chunks([c.chunk_id for c in answer.citations.values()])
    for n, cite in answer.citations.items():
        assert f"[{n}]" in answer.text or f"{n}," in answer.text or f", {n}]" in answer.text
        assert cite.chunk_id == answer.sources[n - 1].chunk_id
        assert chunks[cite.chunk_id].text == cite.text


def test_ask_with_the_default_llm_answers_from_the_retrieved_chunks(facts_kb: KnowledgeBase, llm) -> None:
    """The real packaged model end to end. Whether its 32 greedy tokens cite is not asserted: at sym_int4 its
    second token is a near-tie (logit margin 0.03 between "\n" and " error"), so the answer depends on the
    CPU's kernel rounding - "printer" repeated (AVX2 native kernels) or a cited sentence (PyTorch's kernel).
    `test_ask_attributes_citations_to_a_recorded_answer` checks the citation path on a replayed answer."""
    answer = facts_kb.ask("What does printer error E4417 mean?", llm=llm, max_new_tokens=32)
    assert answer.grounded and answer.text
    assert answer.sources[0].text == FACTS["e4417"]  # the right chunk was retrieved and shown first
    assert "rain" not in {s.document for s in answer.sources}  # below the similarity threshold
    _assert_citations_match_chunks(facts_kb, answer)


class RecordedChat:
    """Replays recorded chat answers exactly; a conversation or parameters not in the recording fail the test."""

    def __init__(self, path: Path) -> None:
        self.calls = json.loads(path.read_text())

    def chat(self, messages: list[dict[str, str]], **params) -> SimpleNamespace:
        for call in self.calls:
            if call["messages"] == messages and call["params"] == params:
                return SimpleNamespace(text=call["text"])
        raise AssertionError(f"no recorded answer for {messages!r} with {params!r}")


def test_ask_attributes_citations_to_a_recorded_answer(facts_kb: KnowledgeBase) -> None:
    """The default model's own answer (fp32 weights of the packaged GGUF, greedy; recorded in
    data/ask_transcript.json) copies the source's words without writing [n]; `ask` attributes them to the
    chunk they came from, and every citation maps to that stored chunk. The answer itself is wrong (the source says
    the paper tray is empty; the model blames "a malfunctioning printer"), so with the support check on (the
    default) it is refused; attribution is checked with the support check off."""
    recorded = RecordedChat(Path(__file__).parent / "data" / "ask_transcript.json")
    checked = facts_kb.ask("What does printer error E4417 mean?", llm=recorded, max_new_tokens=32)
    assert checked.refused and checked.text == NO_ANSWER and checked.references == {}
    assert checked.draft.startswith("The source of the printer error E4417 is the printer itself. [1]")
    assert [s.supported for s in checked.support] == [False, False]
    off = SupportConfig(enabled=False)
    answer = facts_kb.ask("What does printer error E4417 mean?", llm=recorded, max_new_tokens=32, support=off)
    assert answer.grounded and answer.citation_mode == "attributed"
    assert answer.text.startswith("The source of the printer error E4417 is the printer itself. [1]")
    assert sorted(answer.citations) == [1]
    assert answer.citations[1].text == FACTS["e4417"] and answer.citations[1].document == "e4417"
    _assert_citations_match_chunks(facts_kb, answer)


def test_stream_matches_generate(facts_kb: KnowledgeBase, llm) -> None:
    q = "What does printer error E4417 mean?"
    full = facts_kb.ask(q, llm=llm, max_new_tokens=12)
    stream = facts_kb.ask(q, llm=llm, max_new_tokens=12, stream=True)
    deltas = list(stream)
    assert len(deltas) > 1
    assert stream.result() == full


ZORBLAT = (
    "The Zorblat Lighthouse stands on Kerrow Point. It was built in 1873 by the engineer Alma Fenwick. Its lamp "
    "is painted cobalt blue and can be seen from 19 nautical miles."
)
QUILLON = (
    "The Quillon Bakery in Mardale sells rye bread every Tuesday. It was founded by Tomas Quill in 1990."
)


def test_attribution_cites_sentences_that_copy_a_source(embedder) -> None:
    from xpullm.rag.answer import attribute_citations

    src = hits(QUILLON, ZORBLAT)
    question = "Who built the Zorblat Lighthouse?"
    # A loose sentence whose embedding is far from the chunk (cosine 0.21), but whose name and year come from source 2.
    loose = "Alma Fenwick did, back in 1873."
    assert attribute_citations(loose, src, embedder.embed, question=question) == loose + " [2]"
    # The same words are no evidence when the question already holds them.
    assert (
        attribute_citations(loose, src, embedder.embed, question="Did Alma Fenwick build it in 1873?")
        == loose
    )
    # Recorded off-topic output (SmolLM2-135M, int4, AVX-512) takes nothing from either source: it stays uncited.
    off_topic = "2024 Zerwin's Light & Skybridge Inc."
    assert attribute_citations(off_topic, src, embedder.embed, question=question) == off_topic


def test_references_fall_back_to_the_sources_given() -> None:
    src = tuple(hits("alpha", "beta"))
    uncited = Answer("Something else entirely.", {}, src, "q", citation_mode="none")
    assert [(n, c.chunk_id) for n, c in uncited.references.items()] == [(1, 100), (2, 101)]
    cited = Answer("Beta [2].", extract_citations("Beta [2].", src), src, "q")
    assert list(cited.references) == [2]  # cited: only what the text cites
    assert Answer(NO_ANSWER, {}, (), "q", grounded=False).references == {}


def test_cut_repetition_stops_at_the_first_repeated_sentence() -> None:
    from xpullm.rag.answer import cut_repetition, until_repetition

    loop = "It costs 25 euro. See the price list.\n\nIt costs 25 euro. See the price list.\n\nIt costs"
    assert cut_repetition(loop) == "It costs 25 euro. See the price list."
    assert cut_repetition("1. 1. 1. 1. The answer is: 1.") == "1."
    assert cut_repetition("A is 1. B is 2. 3. 3") == "A is 1. B is 2. 3. 3"  # "3" is not the sentence "3."

    pulled = []

    def deltas():
        for piece in [*loop.split(" "), *(["never", "pulled"] * 20)]:
            pulled.append(piece)
            yield piece + " "

    gen = deltas()
    streamed = "".join(until_repetition(gen))
    assert cut_repetition(streamed.strip()) == cut_repetition((loop + " never pulled").strip())
    assert "never" not in pulled  # generation stopped once the repeat was complete
    assert gen.gi_frame is None  # and the engine's generator was closed


def test_ask_does_not_penalize_the_sources_tokens(facts_kb: KnowledgeBase) -> None:
    # The engine's repetition penalty counts prompt tokens: it would push the model off the sources' words and
    # the `[n]` markers, the very tokens a grounded answer copies.
    seen = {}

    class Recorder:
        def chat(self, messages, **params):
            seen.update(params)
            return type("Completion", (), {"text": "Refill the paper tray. Refill the paper tray."})()

    answer = facts_kb.ask("What does printer error E4417 mean?", llm=Recorder())
    assert seen.get("repetition_penalty", 1.0) == 1.0
    assert answer.text == "Refill the paper tray. [1]" and answer.citation_mode == "attributed"


def test_llm_reranker_orders_by_the_calibrated_margin(llm) -> None:
    """The packaged model answers "no" to nearly every passage, so its generated verdict cannot reorder; the
    logit(yes) - logit(no) margin still ranks the passage that answers above one that does not."""
    from xpullm.rag import LLMReranker

    reranker = LLMReranker(llm)
    question = "What does printer error E4417 mean?"
    off_topic, answer = hits(FACTS["rain"], FACTS["e4417"])
    margins = [reranker.score(question, h) for h in (off_topic, answer)]
    assert margins[1] > margins[0], margins
    assert [h.text for h in reranker.rerank(question, [off_topic, answer])] == [FACTS["e4417"], FACTS["rain"]]
