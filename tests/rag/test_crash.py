"""A real ingesting subprocess killed with SIGKILL leaves a consistent base, and re-running `add` finishes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from xpullm.rag import KBConfig, KnowledgeBase

N_FILES = 60

CHILD = textwrap.dedent(
    """
    import sys
    from xpullm.rag import KnowledgeBase
    kb = KnowledgeBase.open(sys.argv[1])
    kb.add(sys.argv[2], show_progress=False)
    print("finished", flush=True)
    """
)


def _done_items(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM job_items WHERE status != 'pending'").fetchone()[0]
    except sqlite3.OperationalError:  # tables not visible yet
        return 0
    finally:
        conn.close()


def test_sigkill_mid_ingest_then_reopen_and_finish(tmp_path: Path, embedder) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(N_FILES):
        (src / f"doc{i:02d}.txt").write_text(
            f"Document {i} describes station {i}. It is located at kilometre {i * 7} of the line.\n\n"
            f"Station {i} opened in year {1900 + i} and serves {i * 100} passengers a day."
        )
    base = tmp_path / "kb"
    # Two chunks per committed batch: many commits, so the kill lands in the middle of the job.
    KnowledgeBase.create(base, embedder=embedder, config=KBConfig(ingest_batch_chunks=2)).close()

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(base), str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    deadline = time.monotonic() + 600
    try:
        while _done_items(base / "kb.sqlite") < 6:
            assert child.poll() is None, child.stdout.read().decode()[-2000:]
            assert time.monotonic() < deadline, "child made no progress"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    kb = KnowledgeBase.open(base, embedder=embedder)
    state = kb.check()
    committed = len(kb.documents())
    assert 6 <= committed < N_FILES
    assert state["chunks_without_vector"] == 0 and state["vectors_without_chunk"] == 0
    assert state["chunks"] == state["vectors"] == state["fts_rows"] == sum(d.n_chunks for d in kb.documents())

    report = kb.add(src, show_progress=False)
    assert len(report.skipped) == committed and len(report.added) == N_FILES - committed and not report.failed
    final = kb.check()
    assert len(kb.documents()) == N_FILES
    assert final["chunks"] == final["vectors"] == final["fts_rows"] == sum(d.n_chunks for d in kb.documents())
    assert final["chunks_without_vector"] == 0 == final["vectors_without_chunk"]
    # The re-run took over the killed job's unfinished files, so that job is closed, not left "interrupted".
    assert [(j["status"], j["items"]) for j in kb.jobs()] == [
        ("done", {"added": committed, "superseded": N_FILES - committed}),
        ("done", {"added": N_FILES - committed, "skipped": committed}),
    ]
    assert "kilometre 301" in kb.search("Where is station 43 located?", top_k=3)[0].text
    kb.close()
