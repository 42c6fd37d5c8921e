"""Each chunking template on small documents; budgets counted in whitespace words for exact expectations."""

from __future__ import annotations

import pytest

from xpullm.rag import Block, ChunkingConfig, ParsedDocument, UnknownTemplate, chunk_document, template_names

WORDS = ChunkingConfig(chunk_tokens=12, overlap_tokens=4)


def doc(*blocks: Block, title: str = "Doc") -> ParsedDocument:
    return ParsedDocument(title, tuple(blocks))


def test_registry() -> None:
    assert {"naive", "qa", "book", "manual", "table", "one"} <= set(template_names())
    with pytest.raises(UnknownTemplate, match=r"'nope'.*naive"):
        chunk_document(doc(Block("text", "x")), "nope")


def test_naive_budget_overlap_and_sentences() -> None:
    text = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen. Fourteen fifteen sixteen seventeen."
    chunks = chunk_document(doc(Block("text", text)), "naive", WORDS)
    assert [c.text for c in chunks] == [
        "One two three four five. Six seven eight nine ten.",
        "Eleven twelve thirteen. Fourteen fifteen sixteen seventeen.",
    ]
    # overlap: a 3-word sentence fits into the 4-word overlap, so it is repeated at the start of the next chunk
    text2 = "Alpha beta gamma delta epsilon zeta. Eta theta iota. Kappa lambda mu nu xi omicron pi."
    chunks2 = chunk_document(doc(Block("text", text2)), "naive", WORDS)
    assert [c.text for c in chunks2] == [
        "Alpha beta gamma delta epsilon zeta. Eta theta iota.",
        "Eta theta iota. Kappa lambda mu nu xi omicron pi.",
    ]
    assert all(len(c.text.split()) <= 12 for c in chunks + chunks2)


def test_naive_respects_headings_and_splits_long_sentences() -> None:
    long = " ".join(f"w{i}" for i in range(30))
    d = doc(
        Block("heading", "Intro", level=1),
        Block("text", "Short intro."),
        Block("heading", "Body", level=1),
        Block("text", long),
    )
    chunks = chunk_document(d, "naive", WORDS)
    assert chunks[0].text == "Intro\nShort intro." and chunks[0].section == "Intro"
    assert all(c.section == "Body" for c in chunks[1:])
    assert all(len(c.text.split()) <= 12 for c in chunks)
    assert (
        " ".join(chunks[1:][0].text.split()[1:3]) == "w0 w1"
    )  # "Body" heading leads the section's first chunk


def test_book_keeps_section_path_and_merges_small_siblings() -> None:
    d = doc(
        Block("heading", "Part A", level=1),
        Block("heading", "Ch 1", level=2),
        Block("text", "Tiny one."),
        Block("heading", "Ch 2", level=2),
        Block("text", "Tiny two."),
        Block("heading", "Part B", level=1),
        Block("text", "Other part."),
    )
    book = chunk_document(d, "book", ChunkingConfig(chunk_tokens=20))
    manual = chunk_document(d, "manual", ChunkingConfig(chunk_tokens=20))
    assert [c.section for c in manual] == ["Part A > Ch 1", "Part A > Ch 2", "Part B"]
    assert manual[0].text == "Part A > Ch 1\nTiny one."
    # book merges the two small chapters of Part A (common path "Part A"), but not across parts
    assert [c.section for c in book] == ["Part A", "Part B"]
    assert "Tiny one." in book[0].text and "Tiny two." in book[0].text


def test_book_long_section_is_split_with_path_on_every_piece() -> None:
    long = ". ".join(f"Sentence number {i} here" for i in range(12)) + "."
    chunks = chunk_document(doc(Block("heading", "Setup", level=1), Block("text", long)), "manual", WORDS)
    assert len(chunks) > 2
    assert all(c.text.startswith("Setup\n") and c.section == "Setup" for c in chunks)


def test_qa_pairs_from_lines_tables_and_question_headings() -> None:
    lines = doc(
        Block("text", "Q: What is xpullm?\nA: A low-bit runtime.\nQ: Is it free?\nA: Yes.\nIt is Apache-2.0.")
    )
    chunks = chunk_document(lines, "qa")
    assert [c.text for c in chunks] == [
        "Q: What is xpullm?\nA: A low-bit runtime.",
        "Q: Is it free?\nA: Yes. It is Apache-2.0.",
    ]
    assert chunks[0].metadata == {"question": "What is xpullm?"}
    table = doc(Block("table", rows=(("Question", "Answer"), ("Where?", "Here."))))
    assert [c.text for c in chunk_document(table, "qa")] == ["Q: Where?\nA: Here."]
    heads = doc(
        Block("heading", "FAQ", level=1), Block("heading", "How fast is it?", level=2), Block("text", "Very.")
    )
    assert [(c.text, c.section) for c in chunk_document(heads, "qa")] == [
        ("Q: How fast is it?\nA: Very.", "FAQ")
    ]
    # no pairs at all: falls back to naive
    assert [c.text for c in chunk_document(doc(Block("text", "Just prose.")), "qa")] == ["Just prose."]


def test_table_rows_with_headers() -> None:
    d = doc(
        Block("text", "Price list."),
        Block("table", rows=(("item", "price"), ("apple", "3"), ("pear", ""))),
        title="Prices",
    )
    chunks = chunk_document(d, "table")
    assert [(c.text, c.metadata) for c in chunks[:2]] == [
        ("item: apple; price: 3", {"row": 1}),
        ("item: pear", {"row": 2}),
    ]
    assert chunks[2].text == "Price list."


def test_one_is_whole_document() -> None:
    d = doc(
        Block("heading", "T", level=1), Block("text", "a b c"), Block("table", rows=(("x", "y"), ("1", "2")))
    )
    chunks = chunk_document(d, "one")
    assert len(chunks) == 1 and chunks[0].text == "T\n\na b c\n\nx\ty\n1\t2"
