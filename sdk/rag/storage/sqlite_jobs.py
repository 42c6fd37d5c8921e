"""The ingestion-job tables of the SQLite store (`jobs`, `job_items`): a mixin of `SQLiteStore`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from xpullm.rag.storage.base import JobItem

__all__ = ["JOB_SCHEMA", "JobTables"]

JOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL, created REAL NOT NULL, finished REAL);
CREATE TABLE IF NOT EXISTS job_items (
    job_id INTEGER NOT NULL, ordinal INTEGER NOT NULL, source TEXT NOT NULL, kind TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL, template TEXT NOT NULL, metadata TEXT NOT NULL,
    title TEXT NOT NULL, PRIMARY KEY (job_id, ordinal));
"""


class JobTables:
    """Job records on the store's connection (`_conn`) under its lock (`_lock`)."""

    _conn: sqlite3.Connection
    _lock: threading.RLock
    _transaction: Callable[[], AbstractContextManager[sqlite3.Cursor]]  # SQLiteStore's write transaction

    def create_job(self, items: Sequence[JobItem]) -> int:
        """Record a new job with its pending items; returns the job id."""
        with self._transaction() as cur:
            cur.execute("INSERT INTO jobs(status, created) VALUES ('running', ?)", (time.time(),))
            job_id = int(cur.lastrowid)
            rows = [(job_id, i, it.source, it.kind, "pending", "", it.template, json.dumps(it.metadata), it.title)
                    for i, it in enumerate(items)]  # fmt: skip
            cur.executemany("INSERT INTO job_items VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return job_id

    def _record_items(self, cur: sqlite3.Cursor, items: Sequence[JobItem]) -> None:
        for item in items:
            cur.execute(
                "UPDATE job_items SET status=?, reason=? WHERE job_id=? AND ordinal=?",
                (item.status, item.reason, item.job_id, item.ordinal),
            )

    def record_items(self, items: Sequence[JobItem]) -> None:
        """Store outcomes of job items that wrote no chunks (skipped, failed)."""
        with self._transaction() as cur:
            self._record_items(cur, items)

    def job_items(self, job_id: int) -> list[JobItem]:
        """Items of `job_id` in order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT job_id, ordinal, source, kind, status, reason, template, metadata, title FROM job_items "
                "WHERE job_id=? ORDER BY ordinal",
                (job_id,),
            ).fetchall()
        return [JobItem(j, o, s, k, st, r, t, json.loads(m), ti) for j, o, s, k, st, r, t, m, ti in rows]

    def set_job_status(self, job_id: int, status: str) -> None:
        """Mark a job running / done / interrupted / cancelled (see `xpullm.rag.jobs`)."""
        with self._lock:
            finished = time.time() if status != "running" else None
            self._conn.execute(
                "UPDATE jobs SET status=?, finished=? WHERE job_id=?", (status, finished, job_id)
            )

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with counts per item status."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT job_id, status, created, finished FROM jobs ORDER BY job_id"
            ).fetchall()
            counts = self._conn.execute(
                "SELECT job_id, status, COUNT(*) FROM job_items GROUP BY job_id, status"
            ).fetchall()
        per: dict[int, dict[str, int]] = {}
        for job_id, status, n in counts:
            per.setdefault(job_id, {})[status] = n
        return [
            {"job_id": j, "status": s, "created": c, "finished": f, "items": per.get(j, {})}
            for j, s, c, f in rows
        ]
