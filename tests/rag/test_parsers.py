"""Each parser on a small file written by the test; bad files fail with a clear reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpullm.rag import ParseError, UnsupportedFileType, parse_file, supported_extensions


def test_registry_covers_required_types() -> None:
    assert {".txt", ".md", ".html", ".pdf", ".docx", ".csv"} <= set(supported_extensions())


def test_txt_paragraphs(tmp_path: Path) -> None:
    p = tmp_path / "notes_file.txt"
    p.write_text("First paragraph line one.\nline two.\n\nSecond paragraph.\n")
    doc = parse_file(p)
    assert doc.title == "notes file"
    assert [b.text for b in doc.blocks] == ["First paragraph line one.\nline two.", "Second paragraph."]


def test_markdown_headings_tables_code(tmp_path: Path) -> None:
    p = tmp_path / "guide.md"
    p.write_text(
        "# Guide\n\nIntro text.\n\n## Install\n\nRun the installer.\n\n"
        "| os | command |\n|---|---|\n| linux | apt install x |\n| mac | brew install x |\n\n"
        "```\n# not a heading\n```\n"
    )
    doc = parse_file(p)
    kinds = [(b.kind, b.level) for b in doc.blocks]
    assert doc.title == "Guide"
    assert kinds == [("heading", 1), ("text", 0), ("heading", 2), ("text", 0), ("table", 0), ("text", 0)]
    assert doc.blocks[4].rows == (("os", "command"), ("linux", "apt install x"), ("mac", "brew install x"))
    assert doc.blocks[5].text == "```\n# not a heading\n```"


def test_html_structure_and_noise_removed(tmp_path: Path) -> None:
    p = tmp_path / "page.html"
    p.write_text(
        "<html><head><title>Page Title</title><script>var x = 1;</script></head><body>"
        "<nav>Home | About</nav><h1>Top</h1><p>Hello <b>world</b>.</p><ul><li>one <p>inner</p></li><li>two</li></ul>"
        "<h2>Data</h2><table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table></body></html>"
    )
    doc = parse_file(p)
    assert doc.title == "Page Title"
    assert [(b.kind, b.text) for b in doc.blocks if b.kind != "table"] == [
        ("heading", "Top"),
        ("text", "Hello world ."),
        ("text", "one inner"),
        ("text", "two"),
        ("heading", "Data"),
    ]
    assert doc.blocks[-1].rows == (("k", "v"), ("a", "1"))
    assert "var x" not in doc.text and "Home" not in doc.text


def test_pdf_pages_and_title(tmp_path: Path, pdf_writer) -> None:
    p = pdf_writer(
        tmp_path / "report.pdf",
        ["The first page talks about turbines.", "Page two covers gearboxes."],
        "Wind Report",
    )
    doc = parse_file(p)
    assert doc.title == "Wind Report"
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "The first page talks about turbines."),
        (2, "Page two covers gearboxes."),
    ]


def test_encrypted_pdf_is_a_clear_error(tmp_path: Path, pdf_writer) -> None:
    from pypdf import PdfReader, PdfWriter

    plain = pdf_writer(tmp_path / "plain.pdf", ["secret text"])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="hunter2", owner_password="owner")
    enc = tmp_path / "locked.pdf"
    with open(enc, "wb") as f:
        writer.write(f)
    with pytest.raises(ParseError, match="encrypted"):
        parse_file(enc)


def test_corrupt_pdf_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "broken.pdf"
    p.write_bytes(b"%PDF-1.4\nthis is not really a pdf\x00\x01\x02")
    with pytest.raises(ParseError, match=r"broken\.pdf"):
        parse_file(p)


def test_docx_headings_paragraphs_tables(tmp_path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Handbook", level=0)
    d.add_heading("Safety", level=1)
    d.add_paragraph("Wear gloves at all times.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "tool", "risk"
    table.cell(1, 0).text, table.cell(1, 1).text = "saw", "cuts"
    p = tmp_path / "handbook.docx"
    d.save(p)
    doc = parse_file(p)
    assert doc.title == "Handbook"
    assert [(b.kind, b.level, b.text) for b in doc.blocks[:3]] == [
        ("heading", 1, "Handbook"),
        ("heading", 1, "Safety"),
        ("text", 0, "Wear gloves at all times."),
    ]
    assert doc.blocks[3].rows == (("tool", "risk"), ("saw", "cuts"))


def test_corrupt_docx_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.docx"
    p.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ParseError, match=r"bad\.docx"):
        parse_file(p)


def test_csv_sniffs_delimiter(tmp_path: Path) -> None:
    p = tmp_path / "prices.csv"
    p.write_text("item;price\napple;3\npear;4\n")
    doc = parse_file(p)
    assert doc.blocks[0].rows == (("item", "price"), ("apple", "3"), ("pear", "4"))


def test_unsupported_type(tmp_path: Path) -> None:
    p = tmp_path / "image.bmp"
    p.write_bytes(b"BM....")
    with pytest.raises(UnsupportedFileType, match=r"\.bmp"):
        parse_file(p)
