"""Ingestion job lifecycle: a job that stopped early is resumed, superseded or cancelled, never left dangling.

Statuses: `running` (a writer is on it), `interrupted` (its writer died), `done`, `cancelled`. Item statuses add
`superseded` (a later job took over that source) and `cancelled` to the ingest outcomes (`added`, `skipped`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from xpullm.rag.storage.base import DocumentStore

__all__ = ["OPEN_STATUSES", "cancel_jobs", "settle_jobs", "supersede_items"]

OPEN_STATUSES = ("running", "interrupted")  # jobs that still have work to do


def settle_jobs(store: DocumentStore) -> None:
    """Call as the only writer: `running` jobs lost their writer; close those with nothing left to do."""
    for job in store.jobs():
        if job["status"] not in OPEN_STATUSES:
            continue
        pending = job["items"].get("pending", 0)
        # A kill after the last commit but before the job was marked done leaves nothing pending: it is done.
        store.set_job_status(job["job_id"], "interrupted" if pending else "done")


def supersede_items(store: DocumentStore, new_job_id: int, sources: Iterable[str]) -> None:
    """Unfinished items of interrupted jobs for `sources` now belong to `new_job_id`; emptied jobs close."""
    wanted = set(sources)
    for job in store.jobs():
        if job["status"] != "interrupted" or job["job_id"] == new_job_id:
            continue
        items = store.job_items(job["job_id"])
        taken = [
            replace(it, status="superseded", reason=f"by job {new_job_id}")
            for it in items
            if it.status == "pending" and it.source in wanted
        ]
        if taken:
            store.record_items(taken)
        if len(taken) == sum(it.status == "pending" for it in items):
            store.set_job_status(job["job_id"], "done")


def cancel_jobs(store: DocumentStore, job_ids: Iterable[int] | None = None) -> list[int]:
    """Close interrupted jobs (all, or `job_ids`) without doing their unfinished items; returns the ids closed."""
    chosen = None if job_ids is None else set(job_ids)
    closed = []
    for job in store.jobs():
        if job["status"] != "interrupted" or (chosen is not None and job["job_id"] not in chosen):
            continue
        items = store.job_items(job["job_id"])
        store.record_items([replace(it, status="cancelled") for it in items if it.status == "pending"])
        store.set_job_status(job["job_id"], "cancelled")
        closed.append(job["job_id"])
    return closed
