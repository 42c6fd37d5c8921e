"""Document lifecycle: replace a changed document, delete one, reject unknown paths, record interrupted runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from xpullm.graphrag import ConfigError
from xpullm.graphrag.chunking import load_inputs

sys.path.insert(0, str(Path(__file__).parent / "data"))
from author_transcript import CHANGED_HARBOR

sys.path.pop(0)


def test_replace_then_delete(tmp_path, replay_project, data_dir):
    folder = tmp_path / "input"
    shutil.copytree(data_dir / "corpus", folder)
    rag = replay_project(tmp_path / "project")
    first = rag.index(folder)
    old_doc = rag.table("documents").set_index("title").loc["harbor.txt", "id"]
    units = rag.table("text_units")
    old_harbor_units = {u for u, d in zip(units["id"], units["document_id"], strict=True) if d == old_doc}
    assert old_harbor_units
    assert "OMAR TALLIS" in set(rag.table("entities")["title"])

    (folder / "harbor.txt").write_text(CHANGED_HARBOR)
    result = rag.update(folder / "harbor.txt")
    assert result.stats["counters"]["update.documents_replaced"] == 1
    assert result.documents == first.documents == 3  # replaced, not added next to the old version
    docs = rag.table("documents")
    assert list(docs["title"]).count("harbor.txt") == 1
    assert "Brask Timber Guild" in docs.set_index("title").loc["harbor.txt", "text"]
    titles = set(rag.table("entities")["title"])
    assert {"HANNE BRASK", "BRASK TIMBER GUILD"} <= titles
    assert not {"OMAR TALLIS", "TALLIS GRAIN COMPANY"} & titles  # only the old text named them
    assert "INES CALDERA" in titles  # still in the new text
    units = rag.table("text_units")
    assert not old_harbor_units & set(units["id"])  # the old version's text units are gone
    assert old_doc not in set(units["document_id"])

    result = rag.delete("river.txt")
    assert result.stats["counters"]["update.documents_deleted"] == 1
    assert sorted(rag.table("documents")["title"]) == ["festival.txt", "harbor.txt"]
    titles = set(rag.table("entities")["title"])
    assert not {"SABLE RIVER", "TEODOR BRANDT", "SABLE RIVER TRUST"} & titles
    assert result.stats["totals"]["llm_calls"] == 0  # everything came from the recorded transcript
    with pytest.raises(ConfigError, match=r"no indexed document is named 'river.txt'; indexed: "):
        rag.delete("river.txt")
    rag.close()


def test_unknown_path_is_an_error_not_text(tmp_path):
    for typo in ("notes/harbour.txt", "harbour.docx", str(tmp_path / "missing.pdf"), tmp_path / "nope.txt"):
        with pytest.raises(ConfigError, match=r"input path .* does not exist; check the path"):
            load_inputs([typo])
    assert load_inputs(["The North Pier opened in 2019."])[0].title == "text_0"  # text is still text


def test_explicit_docx_is_parsed(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Harbor news", 1)
    d.add_paragraph("Ines Caldera opened the North Pier.")
    path = tmp_path / "news.docx"
    d.save(str(path))
    (doc,) = load_inputs(path)
    assert doc.text == "Harbor news\n\nInes Caldera opened the North Pier."
    (doc,) = load_inputs(str(path))
    assert doc.text.startswith("Harbor news")


CHILD = textwrap.dedent(
    """
    import signal
    import sys
    # Ctrl-C reaches a process started from a terminal. This one is a pytest worker's child, and inherits the
    # worker's signal mask and ignored signals, which libraries earlier in the same worker may have changed.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pathlib import Path
    from xpullm.graphrag import GraphRAG, GraphRAGConfig, TranscriptLLM
    data, root, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    llm = TranscriptLLM(data / "transcript.jsonl", delay_s=0.2, log_path=log)
    rag = GraphRAG(root, llm=llm, config=GraphRAGConfig.from_yaml(data / "settings.yaml"))
    rag.index(data / "corpus")
    """
)


def _signal_state() -> str:
    """This process's blocked and ignored signal masks (what a child inherits)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return "; ".join(line for line in status if line.startswith(("SigBlk", "SigIgn")))


def test_interrupted_run_is_recorded(tmp_path, data_dir):
    """Ctrl-C (SIGINT) mid-extraction leaves stats.json "interrupted", with its counters kept apart from issues."""
    from xpullm.graphrag.stats import read_stats

    root, log = tmp_path / "project", tmp_path / "engine.log"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(root), str(log)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    while not log.exists() or len(log.read_text().split()) < 2:
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, "the child never reached the extraction stage"
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    child.wait(timeout=60)
    assert child.returncode != 0, f"the child ran to the end after SIGINT: {_signal_state()}"
    stats = json.loads((root / "output" / "stats.json").read_text())
    assert stats["status"] == "interrupted"
    assert read_stats(root / "output" / "stats.json")["status"] == "interrupted"
    assert not any(k.startswith("embeddings.") for k in stats["issues"])
