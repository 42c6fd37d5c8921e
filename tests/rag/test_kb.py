"""Knowledge-base behaviour on real SQLite/FTS5/FAISS with the real default embedder."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from xpullm.rag import (
    DocumentNotFound,
    EmbedderMismatch,
    KnowledgeBase,
    KnowledgeBaseExists,
    KnowledgeBaseLocked,
    KnowledgeBaseNotFound,
)

PRINTER = {
    "e4471": "Printer error E4471 means the toner cartridge is empty and must be replaced.",
    "e4417": "Printer error E4417 means the paper tray is empty and must be refilled.",
    "e7144": "Printer error E7144 means the fuser unit is overheating and must cool down.",
    "e1447": "Printer error E1447 means the output bin is full and must be emptied.",
    "cats": "Felines doze for up to sixteen hours daily, mostly during the day.",
    "rain": "The Amazon basin receives more than two metres of precipitation every year.",
    "bread": "To bake a sourdough loaf, feed the starter, mix flour and water, proof overnight and bake hot.",
    "cable": "A long printer cable can reduce signal quality; keep the cable short.",
    "dogs": "A dog needs a daily walk and a long run in the park to stay healthy.",
    "weather": "Sunny weather is expected in the desert this week with no clouds.",
    "yeast": "Commercial yeast makes dough rise quickly.",
}
# Identifier questions defeat the vector retriever (the codes look alike to it); paraphrases defeat BM25.
CRAFTED = {
    "What does E4417 mean?": "e4417",
    "Explain E7144": "e7144",
    "E1447 printer": "e1447",
    "How long do cats nap?": "cats",
    "Which place gets a lot of rain?": "rain",
}


@pytest.fixture
def printer_kb(make_kb) -> KnowledgeBase:
    kb = make_kb()
    report = kb.add(texts=list(PRINTER.values()), names=list(PRINTER))
    assert len(report.added) == len(PRINTER) and not report.failed
    return kb


def hit_at_1(kb: KnowledgeBase, **kw) -> dict[str, bool]:
    out = {}
    for q, want in CRAFTED.items():
        hits = kb.search(q, top_k=3, **kw)
        out[q] = bool(hits) and hits[0].document == want
    return out


def test_hybrid_beats_both_single_retrievers(printer_kb: KnowledgeBase) -> None:
    vector = hit_at_1(printer_kb, vector_weight=1.0)
    keyword = hit_at_1(printer_kb, vector_weight=0.0)
    hybrid = hit_at_1(printer_kb, vector_weight=0.5)
    assert not vector["What does E4417 mean?"]  # vector alone confuses E4417 with E4471
    assert not keyword["How long do cats nap?"] and not keyword["Which place gets a lot of rain?"]
    assert all(hybrid.values()), hybrid
    assert sum(hybrid.values()) > sum(vector.values()) and sum(hybrid.values()) > sum(keyword.values())


def test_search_hit_fields_and_scores(printer_kb: KnowledgeBase) -> None:
    hits = printer_kb.search("What does E4417 mean?", top_k=2)
    top = hits[0]
    assert top.text == PRINTER["e4417"]
    assert top.document == "e4417" and top.source == "text:e4417"
    assert top.bm25_score > 0 and 0.3 < top.vector_score <= 1.0
    assert hits[0].score >= hits[1].score
    assert printer_kb.store.get_chunks([top.chunk_id])[top.chunk_id].text == top.text


def test_rrf_and_threshold(printer_kb: KnowledgeBase) -> None:
    rrf = printer_kb.search("Explain E7144", top_k=3, fusion="rrf")
    assert rrf[0].document == "e7144"
    strict = printer_kb.search("How long do cats nap?", top_k=5, min_similarity=0.5)
    assert [h.document for h in strict] == ["cats"]
    assert printer_kb.search("quantum chromodynamics lattice gauge", top_k=5, min_similarity=0.3) == []
    with pytest.raises(ValueError, match="fusion"):
        printer_kb.search("x", fusion="max")
    with pytest.raises(ValueError, match="vector_weight"):
        printer_kb.search("x", vector_weight=1.5)
    with pytest.raises(ValueError, match="query"):
        printer_kb.search("   ")


def test_rerank_callable_reorders(printer_kb: KnowledgeBase) -> None:
    hits = printer_kb.search(
        "printer error", top_k=3, rerank=lambda q, hs: sorted(hs, key=lambda h: h.document)
    )
    assert [h.document for h in hits] == sorted(h.document for h in hits)


def test_dedup_replace_delete(make_kb, tmp_path: Path) -> None:
    kb = make_kb()
    f = tmp_path / "policy.txt"
    f.write_text("Vacation policy: employees get 25 days of paid leave.")
    first = kb.add(f)
    assert len(first.added) == 1 and first.chunks == 1
    again = kb.add(f)
    assert again.added == [] and again.chunks == 0 and "unchanged" in again.skipped[0][1]
    copy = tmp_path / "copy_of_policy.txt"
    copy.write_text(f.read_text())
    dup = kb.add(copy)
    assert "same content" in dup.skipped[0][1]
    old_ids = {h.chunk_id for h in kb.search("paid leave days", top_k=5)}
    f.write_text("Vacation policy: employees get 30 days of paid leave. Unused days expire in March.")
    changed = kb.add(f)
    assert changed.replaced == first.added
    hits = kb.search("paid leave days", top_k=5)
    assert [h.text for h in hits] == [
        "Vacation policy: employees get 30 days of paid leave. Unused days expire in March."
    ]
    assert not old_ids & {h.chunk_id for h in hits}
    assert kb.check()["chunks"] == 1 == kb.check()["vectors"]
    assert kb.delete(str(f)) == 1
    assert kb.search("paid leave days", top_k=5) == [] and kb.documents() == []
    assert kb.check() == {
        "chunks": 0,
        "vectors": 0,
        "fts_rows": 0,
        "chunks_without_vector": 0,
        "vectors_without_chunk": 0,
    }
    with pytest.raises(DocumentNotFound, match="nope"):
        kb.delete("nope")


def test_bad_files_are_reported_and_the_rest_go_in(make_kb, tmp_path: Path, pdf_writer) -> None:
    from pypdf import PdfReader, PdfWriter

    good = tmp_path / "good.md"
    good.write_text("# Good\n\nThis file is fine.")
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.4 garbage")
    plain = pdf_writer(tmp_path / "plain.pdf", ["confidential"])
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="pw")
    with open(tmp_path / "locked.pdf", "wb") as fh:
        writer.write(fh)
    plain.unlink()
    (tmp_path / "image.xyz").write_bytes(b"\x89PNG")
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("no access")
    unreadable.chmod(0)
    kb = make_kb()
    report = kb.add(
        [
            good,
            tmp_path / "corrupt.pdf",
            tmp_path / "locked.pdf",
            tmp_path / "image.xyz",
            unreadable,
            tmp_path / "missing.txt",
        ]
    )
    reasons = {Path(s).name: r for s, r in report.failed}
    import os

    is_root = os.geteuid() == 0  # root reads files without permission bits
    assert len(report.added) == (2 if is_root else 1)
    assert "not a readable PDF" in reasons["corrupt.pdf"]
    assert "encrypted" in reasons["locked.pdf"]
    assert "no parser" in reasons["image.xyz"]
    assert "not found" in reasons["missing.txt"]
    if not is_root:
        assert "cannot read" in reasons["secret.txt"]
    assert kb.search("fine file", top_k=1)[0].document == "Good"


def test_folder_ingest_templates_and_metadata_filters(make_kb, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "prices.csv").write_text("fruit,price\napple,3 euro\nmango,7 euro\n")
    (folder / "sub" / "faq.md").write_text("# FAQ\n\nQ: Do you ship abroad?\nA: Yes, to all EU countries.\n")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    kb = make_kb()
    report = kb.add(folder, template={".md": "qa"}, metadata={"team": "sales"})
    assert len(report.added) == 2 and not report.failed  # .bin has no parser: not picked from folders
    by_name = {Path(d.source).name: d for d in kb.documents()}
    assert by_name["prices.csv"].template == "table" and by_name["faq.md"].template == "qa"
    mango = kb.search("How much is a mango?", top_k=1)[0]
    assert mango.text == "fruit: mango; price: 7 euro" and mango.metadata["team"] == "sales"
    only_faq = kb.search("price", top_k=5, filters={"doc_id": by_name["faq.md"].doc_id})
    assert {h.doc_id for h in only_faq} == {by_name["faq.md"].doc_id}
    assert kb.search("price", top_k=5, filters={"team": "support"}) == []


def test_names_cannot_escape_the_base(make_kb, tmp_path: Path) -> None:
    kb = make_kb("inner")
    kb.add(texts=["escape attempt one", "escape attempt two"], names=["../../evil.txt", "/etc/passwd2.txt"])
    assert not (tmp_path / "evil.txt").exists() and not Path("/etc/passwd2.txt").exists()
    stored = sorted(p.name for p in (tmp_path / "inner" / "texts").iterdir())
    assert len(stored) == 2 and all(".." not in n and "/" not in n for n in stored)
    assert all(
        kb.text_path(d.source).parent == (tmp_path / "inner" / "texts").resolve() for d in kb.documents()
    )


def test_open_create_errors_and_embedder_mismatch(make_kb, tmp_path: Path, embedder) -> None:
    kb = make_kb()
    kb.add(texts=["hello there"], names=["greeting"])
    kb.close()
    with pytest.raises(KnowledgeBaseExists):
        KnowledgeBase.create(tmp_path / "kb", embedder=embedder)
    with pytest.raises(KnowledgeBaseNotFound):
        KnowledgeBase.open(tmp_path / "nothing")

    class OtherEmbedder:  # a different model: same interface, other name and size
        model_name = "other/model"
        dim = 8

        def embed(self, texts):
            return [[1.0] + [0.0] * 7 for _ in texts]

    with pytest.raises(EmbedderMismatch, match=r"all-MiniLM-L6-v2.*other/model"):
        KnowledgeBase.open(tmp_path / "kb", embedder=OtherEmbedder())
    reopened = KnowledgeBase.open(tmp_path / "kb", embedder=embedder)
    assert reopened.search("hello", top_k=1)[0].text == "hello there"
    with pytest.raises(KnowledgeBaseLocked):  # a second writer on the same folder
        other = KnowledgeBase.open(tmp_path / "kb", embedder=embedder)
        reopened.add(texts=["x"], names=["x"])
        other.add(texts=["y"], names=["y"])
    reopened.close()
    other.close()


def test_concurrent_reader_sees_consistent_state(make_kb, embedder) -> None:
    kb = make_kb(ingest_batch_chunks=4)
    stop = threading.Event()
    problems: list[str] = []
    seen: list[int] = []

    def reader() -> None:
        ro = KnowledgeBase.open(kb.path, embedder=embedder, read_only=True)
        while not stop.is_set():
            for h in ro.search("fact number", top_k=5):
                if h.text != f"Fact number {h.document.removeprefix('f')} is about topic {h.document}.":
                    problems.append(f"{h.document}: {h.text}")
            seen.append(len(ro.vectors))
            c = kb.check()
            if c["chunks_without_vector"] or c["vectors_without_chunk"]:
                problems.append(str(c))
        ro.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        names = [f"f{i}" for i in range(40)]
        kb.add(texts=[f"Fact number {n[1:]} is about topic {n}." for n in names], names=names)
    finally:
        stop.set()
        t.join()
    assert problems == []
    assert seen == sorted(seen)  # the reader only ever saw the base grow
    assert kb.check()["chunks"] == 40
