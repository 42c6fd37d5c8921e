"""The embedded document store: one SQLite file with documents, chunks (text + vector), jobs and an FTS5 index.

WAL mode lets readers in other threads or processes see the last committed state while one writer ingests. The
FTS5 table mirrors `chunks` through triggers, so the keyword index can never disagree with the chunk rows.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xpullm.rag.storage.base import ChunkRecord, DocumentRecord, JobItem
from xpullm.rag.storage.fts import fts_query, query_terms, quote_term
from xpullm.rag.storage.sqlite_jobs import JOB_SCHEMA, JobTables

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL UNIQUE, title TEXT NOT NULL, content_hash TEXT NOT NULL,
    template TEXT NOT NULL, metadata TEXT NOT NULL, n_chunks INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS documents_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL REFERENCES documents(doc_id),
    ordinal INTEGER NOT NULL, text TEXT NOT NULL, section TEXT NOT NULL, metadata TEXT NOT NULL,
    vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    section, text, content='chunks', content_rowid='chunk_id', tokenize='porter unicode61 remove_diacritics 2');
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, section, text) VALUES (new.chunk_id, new.section, new.text);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, section, text) VALUES ('delete', old.chunk_id, old.section, old.text);
END;
"""


class SQLiteStore(JobTables):
    """`DocumentStore` and `FullTextIndex` over one SQLite file (thread safe through one lock per store)."""

    def __init__(self, path: str | Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        # One connection shared by threads under a lock: SQLite serializes writers anyway, and a single
        # connection means a reader thread never sees half of this process's own transaction.
        self._conn = sqlite3.connect(
            str(self.path), check_same_thread=False, timeout=30.0, isolation_level=None
        )
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last commits but never corrupts; a killed process
            # loses nothing that was committed.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA + JOB_SCHEMA)
            if self.get_meta("schema_version") is None:
                self.set_meta("schema_version", SCHEMA_VERSION)
            if self.get_meta("generation") is None:
                self.set_meta("generation", "0")

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # -- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """Value stored under `key`, or None."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def generation(self) -> int:
        """Counter bumped by every committed write."""
        return int(self.get_meta("generation") or 0)

    def _bump_generation(self) -> None:
        self._conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")

    # -- documents ----------------------------------------------------------------------------------------
    def _doc(self, row: tuple | None) -> DocumentRecord | None:
        if row is None:
            return None
        doc_id, source, title, content_hash, template, metadata, n_chunks, added_at = row
        return DocumentRecord(
            doc_id, source, title, content_hash, template, json.loads(metadata), n_chunks, added_at
        )

    _DOC_COLS = "doc_id, source, title, content_hash, template, metadata, n_chunks, added_at"

    def find_document(self, source: str) -> DocumentRecord | None:
        """The document ingested from `source`, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._DOC_COLS} FROM documents WHERE source=?", (source,)
            ).fetchone()
        return self._doc(row)

    def find_by_hash(self, content_hash: str) -> DocumentRecord | None:
        """A document with exactly this content, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._DOC_COLS} FROM documents WHERE content_hash=? LIMIT 1", (content_hash,)
            ).fetchone()
        return self._doc(row)

    def get_document(self, doc_id: str) -> DocumentRecord | None:
        """The document `doc_id`, if any."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._DOC_COLS} FROM documents WHERE doc_id=?", (doc_id,)
            ).fetchone()
        return self._doc(row)

    def list_documents(self) -> list[DocumentRecord]:
        """Every document, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._DOC_COLS} FROM documents ORDER BY added_at, doc_id"
            ).fetchall()
        return [d for d in map(self._doc, rows) if d is not None]

    def write_documents(
        self,
        batch: Sequence[tuple[DocumentRecord, Sequence[ChunkRecord], Any]],
        job_updates: Sequence[JobItem],
    ) -> tuple[dict[str, list[int]], list[int]]:
        """Replace each (document, chunks, vectors) and record job outcomes, all in one transaction.

        The document row keeps `doc.n_chunks` when it is set (a large file whose first batch this is), else the
        number of chunks given.
        """
        new_ids: dict[str, list[int]] = {}
        removed: list[int] = []
        with self._transaction() as cur:
            for doc, chunks, vectors in batch:
                old = cur.execute(
                    "SELECT doc_id FROM documents WHERE source=? OR doc_id=?", (doc.source, doc.doc_id)
                ).fetchall()
                for (old_id,) in old:
                    removed += self._delete_doc(cur, old_id)
                row = (doc.doc_id, doc.source, doc.title, doc.content_hash, doc.template, json.dumps(doc.metadata),
                       doc.n_chunks or len(chunks), doc.added_at or time.time())  # fmt: skip
                cur.execute(f"INSERT INTO documents({self._DOC_COLS}) VALUES (?,?,?,?,?,?,?,?)", row)
                new_ids[doc.doc_id] = self._insert_chunks(cur, doc.doc_id, chunks, vectors)
            self._record_items(cur, job_updates)
            self._bump_generation()
        return new_ids, removed

    def append_chunks(
        self, doc_id: str, chunks: Sequence[ChunkRecord], vectors: Any, job_updates: Sequence[JobItem]
    ) -> list[int]:
        """Add a later batch of a large document's chunks (and job outcomes) in one transaction; returns new ids."""
        with self._transaction() as cur:
            if cur.execute("SELECT 1 FROM documents WHERE doc_id=?", (doc_id,)).fetchone() is None:
                raise KeyError(f"no document {doc_id!r} to append chunks to")
            ids = self._insert_chunks(cur, doc_id, chunks, vectors)
            self._record_items(cur, job_updates)
            self._bump_generation()
        return ids

    def count_doc_chunks(self, doc_id: str) -> int:
        """Chunks stored for `doc_id` (fewer than its `n_chunks` while a large file is still being ingested)."""
        with self._lock:
            return int(
                self._conn.execute("SELECT COUNT(*) FROM chunks WHERE doc_id=?", (doc_id,)).fetchone()[0]
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction under the store's lock: committed on success, rolled back on any error."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def _insert_chunks(
        self, cur: sqlite3.Cursor, doc_id: str, chunks: Sequence[ChunkRecord], vectors: Any
    ) -> list[int]:
        import numpy as np

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(chunks), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != ({len(chunks)}, {self.dim})")
        ids = []
        for chunk, vec in zip(chunks, vectors, strict=True):
            cur.execute(
                "INSERT INTO chunks(doc_id, ordinal, text, section, metadata, vector) VALUES (?,?,?,?,?,?)",
                (doc_id, chunk.ordinal, chunk.text, chunk.section, json.dumps(chunk.metadata), vec.tobytes()),
            )
            ids.append(int(cur.lastrowid))
        return ids

    def _delete_doc(self, cur: sqlite3.Cursor, doc_id: str) -> list[int]:
        ids = [r[0] for r in cur.execute("SELECT chunk_id FROM chunks WHERE doc_id=?", (doc_id,))]
        cur.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
        cur.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        return ids

    def delete_document(self, doc_id: str) -> list[int]:
        """Delete `doc_id` and its chunks; return the removed chunk ids."""
        with self._transaction() as cur:
            ids = self._delete_doc(cur, doc_id)
            self._bump_generation()
        return ids

    # -- chunks -------------------------------------------------------------------------------------------
    def get_chunks(self, chunk_ids: Sequence[int]) -> dict[int, ChunkRecord]:
        """Chunks by id; ids that no longer exist are absent from the result."""
        out: dict[int, ChunkRecord] = {}
        ids = list(chunk_ids)
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                for cid, doc_id, ordinal, text, section, meta in self._conn.execute(
                    f"SELECT chunk_id, doc_id, ordinal, text, section, metadata FROM chunks WHERE chunk_id IN ({marks})",
                    part,
                ):
                    out[cid] = ChunkRecord(cid, doc_id, ordinal, text, section, json.loads(meta))
        return out

    def get_vectors(self, chunk_ids: Sequence[int]) -> Any:
        """float32 array [len(ids), dim]; raises KeyError for an id that does not exist."""
        import numpy as np

        ids = list(chunk_ids)
        found: dict[int, bytes] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                part = ids[start : start + 500]
                marks = ",".join("?" * len(part))
                found.update(
                    self._conn.execute(
                        f"SELECT chunk_id, vector FROM chunks WHERE chunk_id IN ({marks})", part
                    )
                )
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        for row, cid in enumerate(ids):
            out[row] = np.frombuffer(found[cid], dtype=np.float32)
        return out

    def chunk_ids(self) -> set[int]:
        """Every chunk id."""
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT chunk_id FROM chunks")}

    def count_chunks(self) -> int:
        """Number of chunks."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])

    def fts_ids(self) -> set[int]:
        """Every chunk id the full-text index holds (for consistency checks)."""
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT rowid FROM chunks_fts")}

    def chunk_ids_matching(self, filters: dict[str, Any]) -> set[int]:
        """Chunk ids whose document matches every filter.

        Keys `doc_id`, `source`, `title` and `template` match document columns; any other key matches the
        document's metadata field; a list value means "any of".
        """
        where, args = [], []
        for key, value in filters.items():
            if key in ("doc_id", "source", "title", "template"):
                column = f"d.{key}"
            else:
                if not re.fullmatch(r"[A-Za-z0-9_\-]+", key):
                    raise ValueError(f"filter key {key!r} must be letters, digits, '_' or '-'")
                column = f"json_extract(d.metadata, '$.\"{key}\"')"
            values = list(value) if isinstance(value, (list, tuple, set)) else [value]
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args += values
        sql = "SELECT c.chunk_id FROM chunks c JOIN documents d ON c.doc_id = d.doc_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._lock:
            return {r[0] for r in self._conn.execute(sql, args)}

    # -- full text ----------------------------------------------------------------------------------------
    def search_text(self, query: str, k: int, allowed: set[int] | None = None) -> list[tuple[int, float]]:
        """BM25 top `k` (chunk id, score), higher is better; section headings count less than the text."""
        match = fts_query(query)
        if not match:
            return []
        # bm25() is "lower is better" and negative; weights: the section path 0.5, the text 1.0.
        sql = "SELECT rowid, -bm25(chunks_fts, 0.5, 1.0) AS s FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY s DESC"
        with self._lock:
            if allowed is None:
                rows = self._conn.execute(sql + " LIMIT ?", (match, k)).fetchall()
            else:
                rows = []
                for cid, score in self._conn.execute(sql, (match,)):
                    if cid in allowed:
                        rows.append((cid, score))
                        if len(rows) >= k:
                            break
        return [(int(c), float(s)) for c, s in rows]

    def term_coverage(self, query: str, chunk_ids: Sequence[int]) -> dict[int, float]:
        """IDF-weighted share of the query's content words that each chunk contains (0..1).

        BM25 scaled by the best candidate says "best of what matched", even when only one common word matched;
        coverage says how much of the question a chunk speaks to, which is what hybrid fusion needs.
        FTS5 does the matching, so stemming is the same as in the index.
        """
        terms = query_terms(query)
        ids = list(chunk_ids)
        if not terms or not ids:
            return {}
        marks = ",".join("?" * len(ids))
        weights: dict[str, float] = {}
        contains: dict[str, set[int]] = {}
        with self._lock:
            total = self.count_chunks()
            for t in terms:
                df = self._conn.execute(
                    "SELECT COUNT(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (quote_term(t),)
                ).fetchone()[0]
                weights[t] = math.log((total - df + 0.5) / (df + 0.5) + 1.0)  # BM25's own IDF
                contains[t] = {
                    r[0]
                    for r in self._conn.execute(
                        f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? AND rowid IN ({marks})",
                        (quote_term(t), *ids),
                    )
                }
        norm = sum(weights.values()) or 1.0
        return {c: sum(w for t, w in weights.items() if c in contains[t]) / norm for c in ids}
