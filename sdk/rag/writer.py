"""One writer process per knowledge base: an exclusive `flock` on a file in the base's folder."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from xpullm.rag.errors import KnowledgeBaseError, KnowledgeBaseLocked
from xpullm.rag.jobs import settle_jobs
from xpullm.rag.storage.base import DocumentStore, VectorIndex

__all__ = ["LOCK_FILE", "WriterLock"]

LOCK_FILE = "write.lock"


class WriterLock:
    """Taken on the first write and held until `release` (the base's `close`); readers never take it."""

    def __init__(self, folder: Path, store: DocumentStore, read_only: bool) -> None:
        self.folder = folder
        self.store = store
        self.read_only = read_only
        self._handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._handle is not None

    def acquire(self) -> None:
        """Become the writer (no-op when already), or raise `KnowledgeBaseLocked` when another process is."""
        if self.read_only:
            raise KnowledgeBaseError(
                f"{self.folder} was opened read_only=True; open it without read_only to change it"
            )
        if self._handle is not None:
            return
        handle = open(self.folder / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the life of the writer
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): single-writer is then the caller's responsibility
            pass
        except OSError as exc:
            handle.close()
            raise KnowledgeBaseLocked(
                f"another process is writing to {self.folder}; wait for it, or open with read_only=True to search"
            ) from exc
        self._handle = handle
        # Holding the lock proves no other writer is alive, so any job still "running" was interrupted.
        settle_jobs(self.store)

    def persist_repair(self, vectors: VectorIndex) -> None:
        """Save an index rebuilt from the store, if no other process is writing (that writer saves its own)."""
        held = self.held
        try:
            self.acquire()
        except KnowledgeBaseLocked:
            return
        vectors.save()
        if not held:
            self.release()

    def release(self) -> None:
        """Stop being the writer (closing the descriptor drops the flock)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
