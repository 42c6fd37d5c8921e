"""A base recovers from what goes wrong on real disks and real runs: a damaged vector file, interrupted jobs,
binary files posing as text, and a kill in the middle of one large file."""

from __future__ import annotations

import random
import sqlite3
import warnings
from pathlib import Path

import pytest

from xpullm.rag import KnowledgeBase
from xpullm.rag.storage.faiss_index import IndexRebuilt

FACTS = [
    "The Varn lighthouse stands on Kerrow Point and was first lit in 1873.",
    "Marit Solgell founded the Kerrow rye bakery, known for its caraway loaves.",
    "The Kerrow ferry crosses to Hestholm twice a day in summer.",
]


class _Stop(Exception):
    """Raised from a progress callback: a real way for a caller to stop a job midway."""


def _stop_after(n: int):
    def on_progress(p) -> None:
        if p.docs_done >= n:
            raise _Stop

    return on_progress


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_damaged_vector_file_is_rebuilt_from_sqlite(make_kb, embedder, damage: str) -> None:
    kb = make_kb()
    kb.add(texts=FACTS, names=["varn.txt", "bakery.txt", "ferry.txt"])
    kb.close()
    index = kb.path / "vectors.faiss"
    data = index.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "random": random.Random(3).randbytes(999)}[
        damage
    ]
    index.write_bytes(damaged)

    with pytest.warns(IndexRebuilt, match="rebuilding it from the document store") as caught:
        reader = KnowledgeBase.open(kb.path, embedder=embedder, read_only=True)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)  # one line
    assert reader.search("When was the lighthouse first lit?", top_k=1)[0].text == FACTS[0]
    reader.close()
    assert index.read_bytes() == damaged  # a read-only open writes nothing

    with pytest.warns(IndexRebuilt):
        kb = KnowledgeBase.open(kb.path, embedder=embedder)
    state = kb.check()
    assert state["chunks"] == state["vectors"] == 3 and state["chunks_without_vector"] == 0
    kb.close()
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", IndexRebuilt
        )  # a writer saved the repaired file: the next open is silent
        KnowledgeBase.open(kb.path, embedder=embedder, read_only=True).close()


def test_random_bytes_without_nul_are_rejected(make_kb, tmp_path: Path) -> None:
    rng = random.Random(7)
    noise = bytes(rng.randrange(1, 256) for _ in range(8192))  # no NUL byte: the old check let it through
    (tmp_path / "noise.txt").write_bytes(noise)
    (tmp_path / "ok.txt").write_text(FACTS[0])
    report = make_kb().add([tmp_path / "noise.txt", tmp_path / "ok.txt"])
    assert len(report.added) == 1 and [s for s, _ in report.failed] == [str(tmp_path / "noise.txt")]
    assert "looks binary" in report.failed[0][1] and "control bytes" in report.failed[0][1]


def test_interrupted_jobs_are_superseded_resumed_or_cancelled(make_kb, embedder, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, fact in enumerate(FACTS):
        (src / f"f{i}.txt").write_text(fact)
    kb = make_kb(ingest_batch_chunks=1)
    with pytest.raises(_Stop):
        kb.add(src, on_progress=_stop_after(1))  # one file committed, two pending
    kb.close()

    kb = KnowledgeBase.open(kb.path, embedder=embedder)
    kb.add(src)  # the user re-runs the same add: it takes over the old job's files
    assert [(j["status"], j["items"]) for j in kb.jobs()] == [
        ("done", {"added": 1, "superseded": 2}),
        ("done", {"added": 2, "skipped": 1}),
    ]
    extra = tmp_path / "extra"
    extra.mkdir()
    for i in range(3):
        (extra / f"e{i}.txt").write_text(
            f"Extra note {i}: the harbour crane number {i} lifts {i + 2} tonnes."
        )
    with pytest.raises(_Stop):
        kb.add(extra, on_progress=_stop_after(1))
    kb.close()
    kb = KnowledgeBase.open(kb.path, embedder=embedder)
    kb.resume()  # a dangling job is finished...
    assert [j["status"] for j in kb.jobs()] == ["done", "done", "done"] and len(kb.documents()) == 6
    (extra / "e3.txt").write_text("Extra note 3: the pier is 120 metres long.")
    (extra / "e4.txt").write_text("Extra note 4: the pier was rebuilt in 1950.")
    with pytest.raises(_Stop):
        kb.add([extra / "e3.txt", extra / "e4.txt"], on_progress=_stop_after(1))
    kb.close()
    kb = KnowledgeBase.open(kb.path, embedder=embedder)
    assert kb.cancel_jobs() == [4]  # ...or closed on purpose
    assert kb.jobs()[-1]["status"] == "cancelled" and kb.jobs()[-1]["items"] == {"added": 1, "cancelled": 1}
    kb.close()


def test_a_large_file_commits_and_reports_per_batch_and_resumes_mid_file(make_kb, embedder, tmp_path) -> None:
    paragraphs = [
        f"On day {i} of the survey the Kerrow tide gauge recorded {100 + i} centimetres." for i in range(40)
    ]
    big = tmp_path / "survey.txt"
    big.write_text("\n\n".join(paragraphs))
    kb = make_kb(chunk_tokens=24, overlap_tokens=0, ingest_batch_chunks=8)
    db = kb.path / "kb.sqlite"
    seen: list[tuple[int, int, int]] = []

    def watch(p) -> None:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)  # another connection sees only committed rows
        stored = conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        conn.close()
        seen.append((p.chunks_done, p.chunks_total, stored))
        if p.chunks_done == 16:
            raise _Stop

    with pytest.raises(_Stop):
        kb.add(big, on_progress=watch)
    total = seen[0][1]
    assert total >= 40 and seen == [(8, total, 8), (16, total, 16)]  # committed and reported batch by batch
    assert kb.jobs()[0]["items"] == {"pending": 1}
    kb.close()

    kb = KnowledgeBase.open(kb.path, embedder=embedder)
    [report] = kb.resume()
    assert report.chunks == total - 16 and report.added == [
        kb.documents()[0].doc_id
    ]  # only the rest embedded
    state = kb.check()
    assert state["chunks"] == state["vectors"] == state["fts_rows"] == total == kb.documents()[0].n_chunks
    conn = sqlite3.connect(db)
    ordinals = [r[0] for r in conn.execute("SELECT ordinal FROM chunks ORDER BY chunk_id")]
    conn.close()
    assert ordinals == list(range(total))
    assert "137 centimetres" in kb.search("What did the gauge record on day 37?", top_k=1)[0].text
    assert kb.add(big).skipped  # complete now: unchanged
    kb.close()
