"""`LLMCaller` submits a stage's missing calls concurrently and stores them exactly as a sequential run would."""

from __future__ import annotations

from collections import Counter

from xpullm.graphrag import GraphRAGConfig, LLMCache, TranscriptLLM
from xpullm.graphrag.cache import read_transcript
from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.stats import IndexStats


def _largest_call_group(data_dir):
    """Prompts of the recorded transcript that share one set of params (one stage's calls)."""
    entries = read_transcript(data_dir / "transcript.jsonl")
    groups = Counter(repr(sorted(e.params.items())) for e in entries)
    best = groups.most_common(1)[0][0]
    return [e for e in entries if repr(sorted(e.params.items())) == best]


def _run(data_dir, entries, batch_size: int, concurrency: int, log):
    llm = TranscriptLLM(data_dir / "transcript.jsonl", log_path=log)
    cache = LLMCache(None)  # in memory
    config = GraphRAGConfig().replace(llm={"batch_size": batch_size, "concurrency": concurrency}).llm
    caller = LLMCaller(llm, cache, IndexStats(), config)
    params = dict(entries[0].params)
    out = caller.generate(
        [e.prompt for e in entries],
        stage="test",
        max_new_tokens=params.pop("max_new_tokens"),
        stop=params.pop("stop", None),
        json_schema=params.pop("json_schema", None),
        grammar=params.pop("grammar", None),
    )
    return out, [e.key for e in cache.entries()], caller.stats.stage("test")


def test_concurrent_calls_match_sequential(data_dir, tmp_path):
    entries = _largest_call_group(data_dir)
    assert len(entries) >= 6
    seq, seq_keys, seq_stats = _run(data_dir, entries, 8, 1, tmp_path / "seq.log")
    par, par_keys, par_stats = _run(data_dir, entries, 1, 4, tmp_path / "par.log")
    assert [r.text for r in par] == [r.text for r in seq] == [e.text for e in entries]
    assert [r.key for r in par] == [r.key for r in seq] == [e.key for e in entries]
    assert par_keys == seq_keys  # the single writer stores rows in submission order
    assert par_stats.llm_calls == seq_stats.llm_calls == len(entries)
    # every prompt reached the engine exactly once in both runs
    assert sorted((tmp_path / "par.log").read_text().split()) == sorted(
        (tmp_path / "seq.log").read_text().split()
    )
