"""The on-disk LLM call cache: one SQLite row per (model, prompt, params), committed as soon as it is answered.

Because every answer is committed before the next batch starts, a job killed at any point resumes by re-running the
pipeline: every call it already made is a cache hit, so no LLM call is ever repeated. The same store replays recorded
transcripts (JSONL) exactly: in "replay" mode a miss raises `CacheMiss` naming the prompt hash.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xpullm.graphrag.errors import CacheMiss, ConfigError

__all__ = ["CacheEntry", "LLMCache", "cache_key", "read_transcript", "write_transcript"]


def cache_key(model: str, prompt: str, params: dict[str, Any]) -> str:
    """Stable hash of one call; params hold everything that changes the answer (budget, sampling, stop, schema)."""
    blob = json.dumps(
        {"model": model, "prompt": prompt, "params": params}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One answered call, as stored and as written to a transcript line."""

    key: str
    stage: str
    model: str
    params: dict[str, Any]
    prompt: str
    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY, stage TEXT, model TEXT, params TEXT, prompt TEXT, text TEXT,
    finish_reason TEXT, prompt_tokens INTEGER, completion_tokens INTEGER
)
"""


class LLMCache:
    """Cache of answered LLM calls.

    mode "read_write": look up, store misses (the default). "replay": answers come only from the store and the
    transcript; a miss raises `CacheMiss`. "off": nothing is stored or looked up.
    """

    def __init__(
        self, path: str | Path | None, mode: str = "read_write", transcript: str | Path | None = None
    ):
        if mode not in ("read_write", "replay", "off"):
            raise ConfigError(f"cache mode {mode!r} is not valid; choose 'read_write', 'replay' or 'off'")
        self.mode = mode
        self.path = Path(path) if path is not None else None
        self._memory: dict[str, CacheEntry] = {}
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if mode != "off" and self.path is not None and (mode == "read_write" or self.path.exists()):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False)
            # WAL + synchronous=NORMAL: a committed row survives SIGKILL of this process (not a power cut, which a
            # cache can afford to lose).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        if transcript is not None:
            for entry in read_transcript(transcript):
                self._memory[entry.key] = entry

    def get(self, key: str) -> CacheEntry | None:
        """The stored answer for `key`, or None (never raises on a miss; `require` does)."""
        if self.mode == "off":
            return None
        if key in self._memory:
            return self._memory[key]
        if self._db is None:
            return None
        with self._lock:
            row = self._db.execute(
                "SELECT key, stage, model, params, prompt, text, finish_reason, prompt_tokens, completion_tokens "
                "FROM calls WHERE key = ?",
                (key,),
            ).fetchone()
        return _row_to_entry(row) if row else None

    def require(self, key: str, stage: str, prompt: str) -> CacheEntry:
        """Replay lookup: the stored answer, or `CacheMiss` naming the prompt hash."""
        entry = self.get(key)
        if entry is None:
            raise CacheMiss(key, stage, prompt)
        return entry

    def put_many(self, entries: Iterable[CacheEntry]) -> None:
        """Store answers and commit at once (the resume guarantee rests on this commit)."""
        entries = list(entries)
        if self.mode != "read_write" or not entries:
            return
        if self._db is None:
            self._memory.update({e.key: e for e in entries})
            return
        rows = [
            (
                e.key,
                e.stage,
                e.model,
                json.dumps(e.params, sort_keys=True),
                e.prompt,
                e.text,
                e.finish_reason,
                e.prompt_tokens,
                e.completion_tokens,
            )
            for e in entries
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.commit()

    def __len__(self) -> int:
        n = len(self._memory)
        if self._db is not None:
            with self._lock:
                n += self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        return n

    def entries(self) -> Iterator[CacheEntry]:
        """Every stored entry (transcript entries first), in insertion order."""
        yield from self._memory.values()
        if self._db is not None:
            with self._lock:
                rows = self._db.execute(
                    "SELECT key, stage, model, params, prompt, text, finish_reason, prompt_tokens, "
                    "completion_tokens FROM calls ORDER BY rowid"
                ).fetchall()
            for row in rows:
                yield _row_to_entry(row)

    def export_transcript(self, path: str | Path) -> int:
        """Write every entry as a JSONL transcript (what tests replay); returns the number of lines."""
        return write_transcript(path, self.entries())

    def close(self) -> None:
        """Close the SQLite file (entries stay on disk)."""
        if self._db is not None:
            self._db.close()
            self._db = None


def _row_to_entry(row: tuple[Any, ...]) -> CacheEntry:
    key, stage, model, params, prompt, text, finish, p_tok, c_tok = row
    return CacheEntry(key, stage, model, json.loads(params), prompt, text, finish, int(p_tok), int(c_tok))


def read_transcript(path: str | Path) -> list[CacheEntry]:
    """Load a JSONL transcript; keys are recomputed from (model, prompt, params) so an edited line stays exact."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"transcript {str(path)!r} does not exist")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{path}:{lineno} is not valid JSON ({exc.msg}); fix or re-record the transcript"
            ) from exc
        data["key"] = cache_key(data["model"], data["prompt"], data["params"])
        out.append(CacheEntry(**data))
    return out


def write_transcript(path: str | Path, entries: Iterable[CacheEntry]) -> int:
    """Write entries as JSONL, one call per line."""
    lines = [json.dumps(asdict(e), ensure_ascii=False, sort_keys=True) for e in entries]
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")
    return len(lines)
