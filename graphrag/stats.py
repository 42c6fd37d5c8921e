"""`IndexStats`: per-stage wall time, LLM calls, cache hits, tokens and counted problems, saved as `stats.json`.

The file is rewritten after every LLM batch, so a killed job leaves an accurate record of what it had done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STAGES", "IndexStats", "StageStats"]

# The indexing stages in the order they run (`stats.json` lists them so; the demo's progress bar follows them).
STAGES = (
    "chunk", "extract_graph", "summarize_descriptions", "cluster_graph", "community_reports", "finalize",
    "embeddings", "write",
)  # fmt: skip


@dataclass
class StageStats:
    """Counters of one stage."""

    seconds: float = 0.0
    llm_calls: int = 0  # calls answered by the engine in this run
    cache_hits: int = 0  # calls answered by the cache (made by an earlier run or a duplicate prompt)
    prompt_tokens: int = 0  # of engine calls only
    completion_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 4),
            "llm_calls": self.llm_calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass
class IndexStats:
    """Everything a run counts. `issues` holds problems that were handled (malformed output, cut context)."""

    path: Path | None = None
    stages: dict[str, StageStats] = field(default_factory=dict)
    issues: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    status: str = "running"
    info: dict[str, Any] = field(
        default_factory=dict
    )  # facts about the run (e.g. the extraction method chosen)

    def stage(self, name: str) -> StageStats:
        """The counters of `name`, created on first use."""
        if name not in self.stages:
            self.stages[name] = StageStats()
        return self.stages[name]

    @contextmanager
    def timed(self, name: str) -> Iterator[StageStats]:
        """Add the wall time of the block to stage `name`."""
        stage = self.stage(name)
        t0 = time.perf_counter()
        try:
            yield stage
        finally:
            stage.seconds += time.perf_counter() - t0
            self.save()

    def count(self, issue: str, n: int = 1) -> None:
        """Count a handled problem (e.g. 'extraction.malformed_records')."""
        if n:
            self.issues[issue] = self.issues.get(issue, 0) + n

    def totals(self) -> dict[str, Any]:
        keys = ("llm_calls", "cache_hits", "prompt_tokens", "completion_tokens")
        out: dict[str, Any] = {k: sum(getattr(s, k) for s in self.stages.values()) for k in keys}
        out["seconds"] = round(sum(s.seconds for s in self.stages.values()), 4)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "started": self.started,
            "stages": {k: v.to_dict() for k, v in self.stages.items()},
            "totals": self.totals(),
            "info": dict(self.info),
            "issues": dict(sorted(self.issues.items())),
        }

    def save(self) -> None:
        """Atomically rewrite stats.json (rename, so a kill never leaves half a file)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, self.path)
