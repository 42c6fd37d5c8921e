"""Loop detection on the loops small models were seen in (2026-12-05), and none on real prose."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from xpullm.engine.loops import drop_trailing_marker, normalize_unit, tandem_repeat, tandem_repeat_at_end


def _cut(text: str) -> str:
    at = tandem_repeat(text)
    return text if at is None else text[:at].rstrip()


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        # A phrase looping inside one sentence that never ends (no sentence boundary to compare).
        (
            "The lighthouse stands in the town of Kerrow in the town of Kerrow in the town of Kerrow in the town "
            "of Kerrow in the town of Kerrow",
            "The lighthouse stands in the town of Kerrow",
        ),
        # A number repeated to the token limit (GraphRAG drift, 2026-12-05).
        (
            "It was built in 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831, 1831",
            "It was built in 1831,",
        ),
        # A description that merges into itself.
        (
            "Merged description: Merged description: Merged description: Merged description: Merged description: x",
            "Merged description:",
        ),
        # A long unit repeated once back to back is already a loop.
        (
            "Alma Fenwick built the lighthouse on Kerrow Point in 1873 and Alma Fenwick built the lighthouse on "
            "Kerrow Point in 1873 and",
            "Alma Fenwick built the lighthouse on Kerrow Point in 1873 and",
        ),
    ],
)
def test_a_loop_is_cut_after_its_first_copy(text: str, kept: str) -> None:
    assert _cut(text) == kept


def test_a_streamed_loop_is_found_when_it_reaches_the_threshold() -> None:
    words = ("in the town of Kerrow " * 6).split()
    found_at = None
    text = "The lighthouse stands"
    for i, word in enumerate(words):
        text += " " + word
        if tandem_repeat_at_end(text, final=False) is not None:
            found_at = i
            break
    # Unit of 4 words ("in the town of Kerrow" is 5): caught on the third copy's first word of the next one,
    # long before the token limit, and never on the first copy.
    assert found_at is not None and 10 <= found_at <= 16
    assert (
        text[: tandem_repeat_at_end(text, final=False)].rstrip()
        == "The lighthouse stands in the town of Kerrow"
    )


def test_list_items_under_new_numbers_are_the_same_item() -> None:
    assert normalize_unit("1. Rye bread.") == normalize_unit("14) rye   bread.") == "rye bread."
    assert normalize_unit("- The Zorblat Lighthouse!") == normalize_unit("* the zorblat lighthouse!") != ""
    assert normalize_unit("a) Kerrow Point") == "kerrow point"
    assert normalize_unit("1873 was the year.") == "1873 was the year."  # a number that is not a marker stays
    assert normalize_unit("3") != normalize_unit("3.")  # an unfinished sentence is not the finished one


def test_a_numbered_list_that_repeats_its_items_is_cut_after_the_first_round() -> None:
    from xpullm.rag.answer import cut_repetition

    items = ["Rye bread.", "Sourdough.", "Croissants."]
    looping = "\n".join(f"{i + 1}. {items[i % 3]}" for i in range(16))
    assert cut_repetition(looping) == "1. Rye bread.\n2. Sourdough.\n3. Croissants."
    assert drop_trailing_marker("A is 1. B is 2.") == "A is 1. B is 2."  # a number ending a sentence stays


@pytest.mark.parametrize("text", ["No, no, no. That is not it.", "It was very, very, very cold that year."])
def test_ordinary_emphasis_is_not_a_loop(text: str) -> None:
    assert tandem_repeat(text) is None


def _wiki_articles(n: int) -> list[str]:
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or spec.submodule_search_locations is None:
        pytest.skip("exllamav2's text data is not installed (make venv installs it)")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    articles = path.read_text(encoding="utf-8").split("\n\n")
    return [a for a in articles if len(a.split()) > 200][:n]


def test_real_prose_has_no_loops() -> None:
    """120 Wikipedia articles (about 100k words): not one false alarm."""
    articles = _wiki_articles(120)
    assert len(articles) == 120
    flagged = [a[:80] for a in articles if tandem_repeat(a) is not None]
    assert not flagged, flagged


def test_the_streaming_check_reads_only_the_tail_of_a_long_text() -> None:
    prose = " ".join(_wiki_articles(6))
    assert len(prose) > 2 * 4000
    looping = prose + " and then the town of Kerrow" * 5
    at = tandem_repeat_at_end(looping, final=True)
    assert at is not None and looping[:at].endswith("and then the town of Kerrow ")
    assert tandem_repeat(looping) == at
