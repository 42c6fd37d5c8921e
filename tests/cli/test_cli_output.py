"""What the CLI prints for people (durations), and commands that need no model load none."""

from __future__ import annotations

import subprocess
import sys

import pytest

from xpullm.cli.common import human_duration


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4236, "0.42 s"),
        (12.34, "12.3 s"),
        (201.7358, "3 min 22 s"),
        (3599.6, "1 h 00 min"),
        (5000, "1 h 23 min"),
    ],
)
def test_human_duration(seconds, text) -> None:
    assert human_duration(seconds) == text


def test_kb_ls_and_rm_load_no_model(tmp_path) -> None:
    from xpullm.embeddings import as_embedding_model
    from xpullm.rag import KnowledgeBase

    doc = tmp_path / "mill.txt"
    doc.write_text("The Kestrel Mill grinds oats in Dunmore.\n")
    with KnowledgeBase.create(tmp_path / "kb", embedder=as_embedding_model(None)) as kb:
        report = kb.add(doc, show_progress=False)
        doc_id = kb.documents()[0].doc_id
    assert report.added
    probe = (
        "import sys; from xpullm.cli.main import main; code = main(sys.argv[1:]); "
        "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules)); sys.exit(code)"
    )
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-P", "-c", probe, *a], capture_output=True, text=True, timeout=120
    )
    ls = run("kb", "ls", str(tmp_path / "kb"))
    assert ls.returncode == 0, ls.stderr
    assert f"{doc_id}      1 chunks  naive    mill" in ls.stdout and "1 documents, 1 chunks" in ls.stdout
    assert "loaded: []" in ls.stdout  # listing reads the store: no torch, no embedder
    rm = run("kb", "rm", str(tmp_path / "kb"), doc_id)
    assert rm.returncode == 0, rm.stderr
    assert f"removed {doc_id} (1 chunks)" in rm.stdout and "loaded: []" in rm.stdout
    with KnowledgeBase.open(tmp_path / "kb", embedder=as_embedding_model(None), read_only=True) as kb:
        assert kb.documents() == [] and kb.check()["chunks"] == 0
