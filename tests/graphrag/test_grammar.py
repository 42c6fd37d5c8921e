"""Constrained extraction: the tuple grammar admits exactly what the parser reads, and extraction passes it on."""

from __future__ import annotations

import pytest

from xpullm.graphrag import ConfigError, ExtractionConfig, GraphRAGConfig, LLMCache
from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.chunking import TextUnit
from xpullm.graphrag.config import LLMConfig
from xpullm.graphrag.extraction import extract_graph, parse_tuples
from xpullm.graphrag.grammar import YES_NO_GRAMMAR, tuple_grammar
from xpullm.graphrag.prompts import EXTRACT_LOOP_CHECK
from xpullm.graphrag.stats import IndexStats
from xpullm.graphrag.transcript import Completion, approx_token_count

CFG = ExtractionConfig()
GOOD = [
    '("entity"<|>ADA LOVELACE<|>person<|>Ada Lovelace wrote the first program, for the Analytical Engine)',
    '("entity"<|>London<|>geo<|>The city where Ada Lovelace lived and worked)',
    '("relationship"<|>ADA LOVELACE<|>LONDON<|>Ada Lovelace lived in London<|>7)',
    '("relationship"<|>ADA LOVELACE<|>CHARLES BABBAGE<|>They worked on the engine together<|>10)',
]


def _answer(records: list[str], config: ExtractionConfig = CFG) -> str:
    joined = f"{config.record_delimiter}\n".join(records)
    return f"{joined}\n{config.completion_delimiter}" if records else config.completion_delimiter


@pytest.fixture(scope="module")
def admits():
    """admits(grammar, text): whether llguidance accepts `text` as a complete answer, tokenized by the default LLM."""
    import llguidance

    from xpullm.engine.constrained import llg_tokenizer
    from xpullm.loading import load_tokenizer
    from xpullm.models import default_llm_path

    tok = load_tokenizer(default_llm_path())
    lltok = llg_tokenizer(tok, len(tok), [tok.eos_token_id])

    def check(grammar: str, text: str) -> bool:
        compiled = llguidance.LLMatcher.grammar_from_lark(grammar)
        assert not llguidance.LLMatcher.validate_grammar_with_warnings(compiled, lltok)[0]
        matcher = llguidance.LLMatcher(lltok, compiled, log_level=0)
        return matcher.consume_tokens(lltok.tokenize_str(text)) and matcher.is_accepting()

    return check


def test_grammar_admits_what_the_parser_reads(admits):
    answer = _answer(GOOD)
    assert admits(tuple_grammar(CFG), answer)
    assert admits(tuple_grammar(CFG, require_record=True), answer)
    res = parse_tuples(answer, CFG, "u1")
    assert [(e.name, e.type) for e in res.entities] == [("ADA LOVELACE", "person"), ("LONDON", "geo")]
    assert [(r.source, r.target, r.weight) for r in res.relationships] == [
        ("ADA LOVELACE", "LONDON", 7.0),
        ("ADA LOVELACE", "CHARLES BABBAGE", 10.0),
    ]
    assert res.malformed == 0


@pytest.mark.parametrize(
    "answer",
    [
        "Here are the records:\n" + _answer(GOOD[:1]),  # prose before the records
        _answer(['("entity"<|>GREY BAY)']),  # missing type and description
        _answer(['("entity"<|>ADA<|>scientist<|>A mathematician)']),  # type not in entity_types
        _answer(['("relationship"<|>ADA<|>LONDON<|>lived in<|>11)']),  # strength out of 1-10
        _answer(['("relationship"<|>ADA<|>LONDON<|>lived in<|>high)']),
        _answer(['("relationship"<|>ADA<|>LONDON<|>lived in)']),  # no strength
        GOOD[0] + "\n" + GOOD[1] + "\n<|COMPLETE|>",  # records without the record delimiter
        _answer(['("entity"<|>ADA<|>person<|>She wrote code. She lived in London)']),  # a second sentence
        _answer(['("entity"<|>ADA<|>person<|>line one\nline two)']),
        _answer(['("entity"<|>' + "A" * 61 + "<|>person<|>Too long a name)"]),
        _answer(['("entity"<|>ADA<|>person<|>' + "x" * 201 + ")"]),
        _answer(GOOD[:1]) + "\nmore text",  # anything after the completion delimiter
    ],
)
def test_grammar_rejects_malformed_answers(admits, answer):
    assert not admits(tuple_grammar(CFG), answer)


def test_first_round_must_write_a_record(admits):
    assert admits(tuple_grammar(CFG), CFG.completion_delimiter)
    assert not admits(tuple_grammar(CFG, require_record=True), CFG.completion_delimiter)
    assert admits(YES_NO_GRAMMAR, "Y") and admits(YES_NO_GRAMMAR, "N") and not admits(YES_NO_GRAMMAR, "Yes")


def test_grammar_follows_configured_delimiters_and_types(admits):
    cfg = ExtractionConfig(
        entity_types=("person", "place"),
        tuple_delimiter="|",
        record_delimiter=";;",
        completion_delimiter="<DONE>",
        max_description_chars=40,
    )
    records = ['("entity"|MARIE CURIE|person|Born in Warsaw)', '("entity"|WARSAW|place|A city, the capital)']
    answer = _answer(records, cfg)
    assert admits(tuple_grammar(cfg), answer)
    res = parse_tuples(answer, cfg, "u1")
    assert [(e.name, e.type, e.description) for e in res.entities] == [
        ("MARIE CURIE", "person", "Born in Warsaw"),
        ("WARSAW", "place", "A city, the capital"),
    ]
    assert not admits(tuple_grammar(cfg), _answer(['("entity"|A|person|has | inside)'], cfg))
    assert not admits(tuple_grammar(cfg), _answer(['("entity"|A|person|has ; inside)'], cfg))
    assert not admits(tuple_grammar(cfg), _answer(['("entity"|A|geo|a geo type)'], cfg))


def test_delimiters_that_start_with_a_letter_are_refused_when_constrained():
    with pytest.raises(ConfigError, match=r"completion_delimiter='DONE'.*constrained: false"):
        GraphRAGConfig().replace(extract_graph={"completion_delimiter": "DONE"})
    relaxed = GraphRAGConfig().replace(extract_graph={"completion_delimiter": "DONE", "constrained": False})
    assert relaxed.extract_graph.completion_delimiter == "DONE"


class _RecordingEngine:
    """Answers every extraction call with one valid record, the loop check with Y; remembers the params."""

    model_name = "recording"
    context_length = 8192

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def count_tokens(self, text: str) -> int:
        return approx_token_count(text)

    def generate(self, prompt, **params):
        if isinstance(prompt, list):
            return [self.generate(p, **params) for p in prompt]
        self.calls.append((prompt, params))
        if prompt.rstrip().endswith(EXTRACT_LOOP_CHECK.strip()):
            return Completion("Y")
        round_no = sum(1 for p, _ in self.calls if not p.rstrip().endswith(EXTRACT_LOOP_CHECK.strip()))
        name = ("ADA", "LOVELACE", "LONDON")[round_no - 1]  # names the text holds (others are dropped)
        return Completion(_answer([f'("entity"<|>{name}<|>person<|>Found in round {round_no})']))


@pytest.mark.parametrize("constrained", [True, False])
def test_extraction_passes_grammars_to_the_engine(constrained):
    cfg = ExtractionConfig(max_gleanings=2, constrained=constrained)
    engine = _RecordingEngine()
    caller = LLMCaller(engine, LLMCache(None, mode="off"), IndexStats(), LLMConfig(chat_template=False))
    unit = TextUnit("u1", "Ada Lovelace lived in London.", 7, "d1", 0)
    result = extract_graph([unit], caller, cfg)["u1"]
    assert [e.name for e in result.entities] == ["ADA", "LOVELACE", "LONDON"]  # first round + two gleanings
    grammars = [params.get("grammar") for _, params in engine.calls]
    if constrained:
        first, more = tuple_grammar(cfg, require_record=True), tuple_grammar(cfg)
        assert grammars == [first, more, YES_NO_GRAMMAR, more]
    else:
        assert grammars == [None, None, None, None]


def test_first_round_requires_a_relationship(admits):
    first = tuple_grammar(CFG, require_record=True)
    assert admits(first, _answer(GOOD))  # entities, then relationships
    assert not admits(first, _answer(GOOD[:2]))  # entities only: the graph would have no edges
    assert not admits(first, _answer(GOOD[2:]))  # a relationship needs an entity first
    relaxed = ExtractionConfig(require_relationships=False)
    assert admits(tuple_grammar(relaxed, require_record=True), _answer(GOOD[:2]))


def test_records_copied_from_the_example_or_mangled_are_dropped():
    from xpullm.graphrag.extraction import ground_records

    text = "Marit Solberg leads the Kerrow Choir in the town of Kerrow."
    answer = _answer(
        [
            '("entity"<|>QUILL VARGA<|>person<|>Quill Varga is a lichenologist)',  # the prompt's example
            '("entity"<|>MARIT SOLGELLITERALCONCUMBER<|>person<|>A mangled name)',
            '("entity"<|>MARIT SOLBERG<|>person<|>Marit Solberg leads the choir in the town of Kerrow in the town '
            "of Kerrow in the town of Kerrow in the town of Kerrow)",
            '("entity"<|>KERROW CHOIR<|>organization<|>A choir)',
            '("relationship"<|>MARIT SOLBERG<|>KERROW CHOIR<|>Marit Solberg leads the Kerrow Choir<|>9)',
            '("relationship"<|>QUILL VARGA<|>KERROW CHOIR<|>copied<|>5)',
        ]
    )
    stats = IndexStats()
    res = ground_records(parse_tuples(answer, CFG, "u1"), text, CFG, stats)
    assert [e.name for e in res.entities] == ["MARIT SOLBERG", "KERROW CHOIR"]
    assert res.entities[0].description == "Marit Solberg leads the choir in the town of Kerrow"
    assert [(r.source, r.target) for r in res.relationships] == [("MARIT SOLBERG", "KERROW CHOIR")]
    assert stats.issues == {
        "extract_graph.example_copies_dropped": 2,
        "extract_graph.ungrounded_names_dropped": 1,
    }
    # A text that does name an example entity keeps it.
    kept = ground_records(
        parse_tuples(answer, CFG, "u1"), "Quill Varga met Marit Solberg.", CFG, IndexStats()
    )
    assert "QUILL VARGA" in [e.name for e in kept.entities]


def test_merged_descriptions_never_echo_the_label():
    from xpullm.graphrag.loopfree import cut_loops, strip_echo

    echoed = "Merged description: Merged description: merged description:  The pier opened in 2019."
    assert strip_echo(echoed, "Merged description:") == "The pier opened in 2019."
    assert cut_loops("1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831") == "1831,"
    assert cut_loops("It opened. It opened. It opened.") == "It opened."


def test_glued_loops_are_cut_and_unreadable_reports_fall_back():
    from xpullm.graphrag.loopfree import cut_loops
    from xpullm.graphrag.reports import _readable, normalize_report

    assert cut_loops("Brannock VAL.WIL.TR.REPL.REPL.REPL.REPL.REPL.REPL.R") == "Brannock VAL.WIL.TR.REPL"
    looped = {
        "title": "Alder",
        "summary": "Alder, Alder, Al, Alder, Alder, Al, Alder, Alder, Al,",
        "rating": 3,
    }
    report = normalize_report({**looped, "rating_explanation": "", "findings": []})
    assert report["summary"] == "Alder, Alder, Al," and not _readable(report)
    fine = normalize_report(
        {**looped, "summary": "The mill buys timber from the cooperative.", "findings": []}
    )
    assert _readable(fine)


def test_counting_loops_are_cut():
    from xpullm.graphrag.loopfree import cut_loops, stop_at_loop

    # The packaged model's drift answers (bench/graphrag_quality.py, sym_int4): a bare count to the token limit.
    assert cut_loops("1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12. 13. 14.") == ""
    assert cut_loops("The flood came. 1: 2: 3: 4: 5: 6: 7: 8:") == "The flood came."
    listed = "1. The science club plants trees. 2. The trust counts otters. 3. The mill buys timber."
    assert cut_loops(listed) == listed  # a numbered list with content is not a loop
    streamed = "".join(stop_at_loop(iter(["Otters. ", "1. ", "2. ", "3. ", "4. ", "5. ", "6. ", "7. "])))
    assert cut_loops(streamed) == "Otters."


def test_answers_with_invented_numbers_or_no_content_are_refused():
    from xpullm.graphrag.query_text import grounded_sentences, says_nothing

    context = [
        "The Brannock Dam was completed in 1931.",
        "The regatta is held every June on the Ellis River.",
    ]
    # The packaged model's answers to questions the articles do not answer (bench/graphrag_quality.py).
    assert grounded_sentences("The population of Marlow is 2. [Data: Sources (7)]", context) == ("", 1)
    text, dropped = grounded_sentences(
        "The dam was completed in 1931. The mill won the regatta in 2023. [Data: Sources (8, 0)]", context
    )
    assert (text, dropped) == ("The dam was completed in 1931.", 1)
    kept = "The Brannock Dam was completed in 1931. [Data: Sources (1)]"
    assert grounded_sentences(kept, context) == (kept, 0)  # citation ids are not facts
    # With the question: the number must stand in a record sentence about what is asked (drift's answer to an
    # unanswerable question, bench/graphrag_quality.py).
    otters = ["Marlow is a village on the Ellis River. The Marlow otter count found 43 animals."]
    invented = "The population of Marlow is 43 animals. [Data: Sources (7)]"
    assert grounded_sentences(invented, otters) == (invented, 0)  # 43 is in the records, not as a population
    assert grounded_sentences(invented, otters, "What is the population of Marlow?") == ("", 1)
    counted = "The otter count found 43 animals. [Data: Sources (7)]"
    assert grounded_sentences(counted, otters, "How many otters did the Marlow count find?") == (counted, 0)
    assert says_nothing("The answer is:") and says_nothing(
        "The answer to this question is: [Data: Sources (1)]"
    )
    assert not says_nothing("The answer is: Hana Morrow.")
