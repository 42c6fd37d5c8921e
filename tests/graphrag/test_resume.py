"""A real indexing subprocess is SIGKILLed mid-extraction; the resumed job repeats no LLM call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from xpullm.graphrag import GraphRAG, GraphRAGConfig, TranscriptLLM

# The engine here answers from the recorded transcript, slowly, and logs the hash of every prompt it answers
# (one line per prompt, written when its batch returns), so calls can be counted across both processes.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from xpullm.graphrag import GraphRAG, GraphRAGConfig, TranscriptLLM
    data, root, log = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    llm = TranscriptLLM(data / "transcript.jsonl", delay_s=0.2, log_path=log)
    # One batch at a time: the kill below lands between two batches (with llm.concurrency > 1, answered batches
    # waiting behind an unfinished one are not yet written and would be asked again).
    config = GraphRAGConfig.from_yaml(data / "settings.yaml").replace(llm={"concurrency": 1})
    rag = GraphRAG(root, llm=llm, config=config)
    rag.index(data / "corpus")
    """
)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _persisted_calls(root: Path) -> int:
    """The LLM calls the child's stats.json records (rewritten atomically), -1 before it exists."""
    path = root / "output" / "stats.json"
    return json.loads(path.read_text())["totals"]["llm_calls"] if path.exists() else -1


def test_sigkill_then_resume_repeats_no_call(tmp_path, data_dir, embedder):
    root, log = tmp_path / "project", tmp_path / "engine.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), str(root), str(log)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 240
    # Kill between two batches: the first extraction round answered (logged when its batch returns) and recorded
    # (stats.json, written with the cache after the batch). Waiting for the log alone could land the kill in
    # between on a loaded machine, losing that batch's answers, which the resumed job then rightly asks again.
    while not (len(_lines(log)) >= 6 and _persisted_calls(root) == len(_lines(log))):
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, "the child never reached the extraction stage"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    killed = json.loads((root / "output" / "stats.json").read_text())
    assert killed["status"] == "running"  # a SIGKILL runs no handler; the reader sees the process is gone:
    from xpullm.graphrag.stats import read_stats

    assert read_stats(root / "output" / "stats.json")["status"] == "interrupted"
    done_before = killed["totals"]["llm_calls"]
    assert done_before >= 6
    assert not (root / "output" / "entities.parquet").exists()  # it really died mid-index

    config = GraphRAGConfig.from_yaml(data_dir / "settings.yaml")
    llm = TranscriptLLM(data_dir / "transcript.jsonl", log_path=log)
    rag = GraphRAG(root, llm=llm, embedder=embedder, config=config)
    result = rag.index(data_dir / "corpus")
    stats = result.stats
    assert stats["status"] == "done"
    calls = _lines(log)
    assert len(calls) == len(set(calls)), "a prompt reached the engine twice"
    assert stats["totals"]["llm_calls"] + done_before == len(calls)
    assert stats["totals"]["cache_hits"] >= done_before
    assert (result.entities, result.relationships) == (14, 19)
    rag.close()
