"""Grounded answers: each cited sentence must be supported by its cited chunk; rerankers that really reorder."""

from __future__ import annotations

import pytest

from xpullm.rag import EmbeddingReranker, KnowledgeBase
from xpullm.rag.answer import NO_ANSWER
from xpullm.rag.retrieval import Hit
from xpullm.rag.support import answer_sentences, check_support, focus_terms

VARN = (
    "The Varn Lighthouse stands on Kerrow Point. It was first lit in 1873 and was designed by the engineer Alma "
    "Fenwick. Its lamp is painted cobalt blue and can be seen from 19 nautical miles."
)
BAKERY = "The Kerrow Rye Bakery was founded in 1921 by Marit Solgell. It is known for its caraway rye loaves."
FERRY = "The Hestholm ferry connects Kerrow with the island of Hestholm. In summer it crosses twice a day."


def _hits(*texts: str) -> list[Hit]:
    return [
        Hit(t, 1.0 - i / 10, f"doc{i}", 100 + i, f"id{i}", vector_score=0.5 - i / 20)
        for i, t in enumerate(texts)
    ]


def test_sentences_are_judged_against_the_chunk_they_cite(embedder) -> None:
    src = _hits(VARN, BAKERY)
    question = "When was the Varn Lighthouse first lit?"
    answer = (
        "The Varn Lighthouse was first lit in 1873. [1] It was designed by Alma Fenwick [2]. "
        "About 212,000 people visit it every year [1]."
    )
    sentences = answer_sentences(answer)
    assert (
        sentences[0] == "The Varn Lighthouse was first lit in 1873. [1]"
    )  # the marker after the stop is kept
    checks = check_support(sentences, src, question, embedder.embed)
    assert [c.supported for c in checks] == [True, False, False]
    assert checks[1].missing == ("alma", "fenwick")  # true, but not in the chunk it cites (source 2)
    assert checks[2].missing == ("212000",)  # an invented number


FESTIVAL = (
    "The Kerrow Sea Festival takes place every July on the harbour front. It began in 1977 as a rowing race between "
    "the fishing crews of Kerrow and Hestholm. The winning crew receives the Brass Oar."
)
ROCKY_MOUNT = (
    "Rocky Mount is a city in North Carolina. Its mayor is elected every four years by the city council."
)


def test_names_and_numbers_taken_from_the_question_must_be_in_the_cited_chunk(embedder) -> None:
    # The packaged model's answers to unanswerable questions (bench/kb_quality.py): each repeats the question's
    # names or year and cites a chunk that does not hold them.
    src = _hits(FESTIVAL, ROCKY_MOUNT)
    mayor = check_support(
        ["The mayor of Kerrow is the former mayor of Rocky Mount, North Carolina. [2]"],
        src,
        "Who is the mayor of Kerrow?",
        embedder.embed,
    )
    assert mayor[0].missing == ("kerrow",) and not mayor[0].supported
    winner = check_support(
        ["The 2019 Kerrow Sea Festival rowing race took place in 2019. [1]"],
        src,
        "Who won the Kerrow Sea Festival rowing race in 2019?",
        embedder.embed,
    )
    assert winner[0].missing == ("2019",) and not winner[0].supported
    tautology = check_support(
        ["The mayor of Kerrow Harbour is the mayor of Kerrow Harbour. [1]"],
        _hits(FESTIVAL),
        "Who is the mayor of Kerrow?",
        embedder.embed,
    )
    assert tautology[0].score == 0.0 and not tautology[0].supported  # says nothing, whatever it cites
    # The same names held by the cited chunk: supported.
    right = check_support(
        ["The Kerrow Sea Festival began in 1977 as a rowing race. [1]"],
        src,
        "When did the Kerrow Sea Festival begin?",
        embedder.embed,
    )
    assert right[0].missing == () and right[0].supported


def test_ask_drops_unsupported_sentences_and_refuses_when_none_is_left(make_kb) -> None:
    kb: KnowledgeBase = make_kb()
    kb.add(texts=[VARN, BAKERY, FERRY], names=["varn.txt", "bakery.txt", "ferry.txt"])

    class Recorded:
        """Replays one answer (the packaged model's kind of invention, with a plausible citation)."""

        def __init__(self, text: str) -> None:
            self.text = text

        def chat(self, messages, **params):
            return type("Completion", (), {"text": self.text})()

    # In topic (the base knows Kerrow and its ferry) but unanswered by it: the invented figure is refused.
    invented = Recorded(
        "The population of Kerrow is approximately 212,000 [3]. The town is on the coast [3]."
    )
    refused = kb.ask("What is the population of Kerrow?", llm=invented)
    assert (
        refused.refused and refused.text == NO_ANSWER and refused.citations == {} and refused.references == {}
    )
    assert refused.draft.startswith("The population of Kerrow is approximately 212,000")
    # A half-right answer keeps its supported sentence and citation only.
    mixed = Recorded("The lighthouse was first lit in 1873 [1]. It was rebuilt in 1990 after a storm [1].")
    kept = kb.ask("When was the Varn Lighthouse first lit?", llm=mixed)
    assert kept.text == "The lighthouse was first lit in 1873 [1]." and not kept.refused
    assert list(kept.citations) == [1] and kept.citations[1].text == VARN
    assert [s.supported for s in kept.support] == [True, False] and kept.support[1].missing == ("1990",)


# Whole articles of bench/kb_quality.py: the packaged model's drafts below were written from these chunks.
LIGHTHOUSE = (
    "The Varn Lighthouse stands on Kerrow Point, at the northern tip of the Orlen peninsula. It was first lit in 1873 "
    "and was designed by the engineer Alma Fenwick. Its lamp is painted cobalt blue and can be seen from 19 nautical "
    "miles. The tower is 31 metres tall and has 142 steps. Since 1994 the light has been automatic, and the keeper's "
    "cottage is now a small museum about shipwrecks on the Orlen coast."
)
HARBOUR = (
    "Kerrow Harbour was built in 1802 to shelter the herring fleet. Its stone breakwater is 410 metres long. The "
    "herring trade collapsed in the 1950s, and today the harbour serves mostly pleasure boats and the Hestholm ferry."
)
MARSH = (
    "The Orlen Salt Marsh is a protected wetland south of Kerrow covering 840 hectares. The marsh became a nature "
    "reserve in 1968 after a campaign led by the teacher Per Vangsmo."
)
TARNEL = (
    "The Hestholm ferry connects the town of Kerrow with the island of Hestholm. The current vessel, the MV Tarnel, "
    "was built in 2009 and carries up to 140 passengers and 12 cars. The crossing takes 55 minutes."
)


def test_focus_terms_are_the_asked_property_not_the_entity() -> None:
    assert focus_terms("Who was the last keeper of the Varn Lighthouse?") == {"last", "keeper"}
    assert focus_terms("How many passengers can the MV Tarnel carry?") == {"passeng", "carr"}
    assert focus_terms("How deep is the water in Kerrow Harbour?") == {"deep", "water"}
    assert focus_terms("Who is Alma Fenwick?") == set()  # only a name: nothing beyond the entity to check


def test_a_chunk_that_names_the_entity_but_not_the_asked_property_does_not_support(embedder) -> None:
    # The packaged model's two cited hallucinations that passed the lexical/embedding check: every word is in the
    # chunk, but the number belongs to another property (the tower's height, the breakwater's length).
    keeper = check_support(
        ["The last keeper of the Varn Lighthouse is the 31-meter-tall Varn Lighthouse. [1]"],
        _hits(LIGHTHOUSE),
        "Who was the last keeper of the Varn Lighthouse?",
        embedder.embed,
    )
    assert keeper[0].missing == () and not keeper[0].states_asked and not keeper[0].supported
    deep = check_support(
        ["The water in Kerrow Harbour is approximately 410 meters deep. [1]"],
        _hits(HARBOUR),
        "How deep is the water in Kerrow Harbour?",
        embedder.embed,
    )
    assert deep[0].missing == () and not deep[0].states_asked and not deep[0].supported
    # A chunk about another entity: the question's names must be in it even when the sentence drops them.
    other = check_support(
        ["The building is the Komae Station. [1]"],
        _hits("Komae Station is a railway station in Komae, Tokyo. The station building opened in 1927."),
        "What building does Kerrow station house now?",
        embedder.embed,
    )
    assert other[0].missing == () and not other[0].states_asked and not other[0].supported
    # The same numbers stated about the asked property: supported.
    tall = check_support(
        ["The Varn Lighthouse is 31 metres tall. [1]"], _hits(LIGHTHOUSE), "How tall is the Varn Lighthouse?",
        embedder.embed,
    )  # fmt: skip
    assert (
        tall[0].states_asked
        and tall[0].supported
        and tall[0].kept == "The Varn Lighthouse is 31 metres tall. [1]"
    )


def test_unsupported_sentences_are_rewritten_to_the_source_sentence_that_states_the_asked_fact(
    embedder,
) -> None:
    # Drafts of the packaged model: the right year wrapped in an invented date / body.
    lit = check_support(
        ["The Varn Lighthouse is said to have been first lit on January 24, 1873. [1]"],
        _hits(LIGHTHOUSE),
        "When was the Varn Lighthouse first lit?",
        embedder.embed,
    )
    assert lit[0].missing == ("24", "januar")
    assert lit[0].kept == "It was first lit in 1873 and was designed by the engineer Alma Fenwick. [1]"
    reserve = check_support(
        [
            "The Orlen Salt Marsh became a nature reserve on November 19, 1968, when the Orlen Salt Marsh was "
            "declared a nature reserve by the IDA. [1]"
        ],
        _hits(MARSH),
        "When did the Orlen Salt Marsh become a nature reserve?",
        embedder.embed,
    )
    assert (
        reserve[0].kept
        == "The marsh became a nature reserve in 1968 after a campaign led by the teacher Per Vangsmo. [1]"
    )
    # An invented number shares no fact with the source: nothing to rewrite it to.
    staff = check_support(
        ["The Kerrow Rye Bakery has a total of 17 employees. [1]"],
        _hits(BAKERY),
        "How many employees does the Kerrow Rye Bakery have?",
        embedder.embed,
    )
    assert staff[0].missing == ("17",) and staff[0].kept == ""


def test_a_supported_sentence_without_a_marker_is_cited_with_its_source(embedder) -> None:
    checks = check_support(
        ["The answer is: 140."], _hits(HARBOUR, TARNEL), "How many passengers can the MV Tarnel carry?",
        embedder.embed,
    )  # fmt: skip
    assert checks[0].cited == (2,) and checks[0].kept == "The answer is: 140. [2]"


def test_embedding_reranker_finds_the_answer_sentence_in_a_long_chunk(embedder) -> None:
    diluted = (
        "Kerrow has a harbour, a library in the old station and a rowing club. The town hall was renovated in "
        "2001. The Kerrow Rye Bakery opened its doors in 1921, founded by Marit Solgell. Tourists come for the "
        "salt marsh birds and the summer ferry to Hestholm."
    )
    first_stage = _hits(FERRY, diluted)  # the whole-chunk cosine put the ferry first
    reranked = EmbeddingReranker(embedder.embed).rerank("Who founded the Kerrow Rye Bakery?", first_stage)
    assert [h.chunk_id for h in reranked] == [101, 100]
    with pytest.raises(ValueError, match="sentence_weight"):
        EmbeddingReranker(embedder.embed, sentence_weight=1.5)
