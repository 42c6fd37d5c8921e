"""`ConversationStore`: the chat tab's conversations in one SQLite file under the demo's data dir.

A conversation is an id, a title and its messages (role + content, as the chat window shows them). Every call opens
its own connection, so Gradio's worker threads can share one store; WAL mode lets a reader see the last committed
turn while an answer is being saved.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ConversationStore", "ConversationSummary", "title_from"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (conversation, position)
);
"""
TITLE_CHARS = 48  # a title longer than this is cut: the sidebar is narrow


@dataclass(frozen=True)
class ConversationSummary:
    """One row of the sidebar."""

    id: str
    title: str
    updated: float  # seconds since the epoch of the last saved message


def title_from(text: str) -> str:
    """A sidebar title from a conversation's first message (one line, at most TITLE_CHARS characters)."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


class ConversationStore:
    """Conversations in the SQLite file `path` (created with its folder on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10.0)
        try:
            db.execute("PRAGMA foreign_keys=ON")
            with db:  # one transaction: committed on success, rolled back on error
                yield db
        finally:
            db.close()

    def create(self, title: str = "New chat") -> str:
        """A new empty conversation; returns its id."""
        cid = uuid.uuid4().hex[:12]
        now = time.time()
        with self._connect() as db:
            db.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (cid, title_from(title), now, now))
        return cid

    def exists(self, cid: str | None) -> bool:
        """Whether `cid` names a stored conversation."""
        if not cid:
            return False
        with self._connect() as db:
            return db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone() is not None

    def list(self) -> list[ConversationSummary]:
        """Every conversation, most recently updated first."""
        with self._connect() as db:
            rows = db.execute("SELECT id, title, updated FROM conversations ORDER BY updated DESC").fetchall()
        return [ConversationSummary(*r) for r in rows]

    def title(self, cid: str) -> str:
        """The title of conversation `cid`."""
        with self._connect() as db:
            row = db.execute("SELECT title FROM conversations WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise KeyError(f"conversation {cid!r} does not exist (deleted in another tab?); start a new chat")
        return row[0]

    def messages(self, cid: str) -> list[dict[str, str]]:
        """The messages of conversation `cid`, in order (empty for an unknown id)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE conversation = ? ORDER BY position", (cid,)
            ).fetchall()
        return [{"role": role, "content": content} for role, content in rows]

    def save(self, cid: str, messages: list[dict[str, str]]) -> None:
        """Replace the messages of `cid` (created if missing); an untitled conversation is named after its first
        user message."""
        now = time.time()
        first = next((m["content"] for m in messages if m["role"] == "user"), None)
        with self._connect() as db:
            row = db.execute("SELECT title FROM conversations WHERE id = ?", (cid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO conversations VALUES (?, ?, ?, ?)",
                    (cid, title_from(first or "New chat"), now, now),
                )
            elif row[0] == "New chat" and first:
                db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title_from(first), cid))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, cid))
            db.execute("DELETE FROM messages WHERE conversation = ?", (cid,))
            db.executemany(
                "INSERT INTO messages VALUES (?, ?, ?, ?)",
                [(cid, i, m["role"], m["content"]) for i, m in enumerate(messages)],
            )

    def rename(self, cid: str, title: str) -> None:
        """Set the title of `cid`."""
        title = title_from(title)
        if not title:
            raise ValueError("the new title is empty; type a name for the conversation")
        with self._connect() as db:
            if db.execute("UPDATE conversations SET title = ? WHERE id = ?", (title, cid)).rowcount == 0:
                raise KeyError(f"conversation {cid!r} does not exist (deleted in another tab?)")

    def delete(self, cid: str) -> None:
        """Remove `cid` and its messages (an unknown id is a no-op)."""
        with self._connect() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (cid,))
