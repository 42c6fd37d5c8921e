"""GraphRAG reads every format the knowledge base ingests, through the shared parsers (`xpullm.documents`).

The recorded corpus is rewritten as a PDF, a DOCX and an HTML page made here, then indexed with the authored
answers the transcript was recorded from (`data/author_transcript.py`): the entities of each file's sentences
must come out, attributed to that file.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from xpullm.graphrag import GraphRAG, GraphRAGConfig
from xpullm.graphrag.chunking import load_inputs

DATA = Path(__file__).parent / "data"


def _author_llm():
    spec = importlib.util.spec_from_file_location("author_transcript", DATA / "author_transcript.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.AuthorLLM()


def _sentences(name: str) -> list[str]:
    text = (DATA / "corpus" / name).read_text()
    return [s for s in re.split(r"(?<=\.)\s+", text) if s.strip()]


@pytest.fixture
def inputs(tmp_path: Path, pdf_writer) -> Path:
    import docx

    folder = tmp_path / "inputs"
    folder.mkdir()
    pdf_writer(folder / "harbor.pdf", _sentences("harbor.txt"))  # one sentence per page
    d = docx.Document()
    d.add_heading("The Lantern Festival", level=1)
    for sentence in _sentences("festival.txt"):
        d.add_paragraph(sentence)
    d.save(str(folder / "festival.docx"))
    paragraphs = "".join(f"<p>{s}</p>" for s in _sentences("river.txt"))
    (folder / "river.html").write_text(
        f"<html><head><title>River</title></head><body>{paragraphs}</body></html>"
    )
    return folder


def test_load_inputs_reads_pdf_docx_and_html(inputs: Path) -> None:
    docs = {d.title: d for d in load_inputs(inputs)}
    assert sorted(docs) == ["festival.docx", "harbor.pdf", "river.html"]
    assert "run by the Velmora Harbor Authority" in docs["harbor.pdf"].text
    assert "Ines Caldera, opened" in docs["harbor.pdf"].text
    assert docs["festival.docx"].text.startswith("The Lantern Festival\n\n")
    assert "Sable River Trust" in docs["river.html"].text and "<p>" not in docs["river.html"].text


def test_pdf_docx_and_html_are_indexed(inputs: Path, tmp_path: Path, embedder) -> None:
    config = GraphRAGConfig.from_yaml(DATA / "settings.yaml").replace(cache={"mode": "off"})
    rag = GraphRAG(tmp_path / "project", llm=_author_llm(), embedder=embedder, config=config)
    result = rag.index(inputs)
    assert result.documents == 3 and result.entities > 0
    docs = {d["id"]: d["title"] for d in rag.store.read("documents")}
    unit_doc = {u["id"]: docs[u["document_ids"][0]] for u in rag.store.read("text_units")}
    found: dict[str, set[str]] = {}
    for e in rag.store.read("entities"):
        for unit in e["text_unit_ids"]:
            found.setdefault(unit_doc[unit], set()).add(e["title"])
    assert {"PORT OF VELMORA", "INES CALDERA", "OMAR TALLIS"} <= found["harbor.pdf"]
    assert "SABLE RIVER TRUST" in found["river.html"]
    assert "LANTERN FESTIVAL" in found["festival.docx"]
