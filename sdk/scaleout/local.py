"""`LocalExecutor`: the pieces of a job run in this process, in turn or on a bounded thread pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from xpullm.protocols import EmbeddingModel
from xpullm.scaleout.base import register_executor

__all__ = ["LocalExecutor"]

T = TypeVar("T")
R = TypeVar("R")


class LocalExecutor:
    """Runs `fn(model, item)` here, with the caller's own model objects; results come back in item order."""

    name = "local"

    @property
    def workers(self) -> int:
        """One process: this one."""
        return 1

    def map(
        self,
        fn: Callable[[Any, T], R],
        items: Sequence[T],
        *,
        model: Any = None,
        concurrency: int = 1,
    ) -> Iterator[tuple[int, R]]:
        """`(index, fn(model, item))` in item order; with concurrency > 1 up to that many run at once on threads
        (an engine that batches concurrent requests sees them together; one with a lock runs them in turn)."""
        if concurrency <= 1 or len(items) <= 1:
            for i, item in enumerate(items):
                yield i, fn(model, item)
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="xpullm-local")
        try:
            futures = [pool.submit(fn, model, item) for item in items]
            for i, future in enumerate(futures):
                yield i, future.result()
        finally:
            pool.shutdown(
                wait=True, cancel_futures=True
            )  # an error or interrupt stops the pieces not yet started

    def embedder(self, embedder: EmbeddingModel) -> EmbeddingModel:
        """The embedder itself: it already runs here."""
        return embedder

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return "LocalExecutor()"


@register_executor("local")
def _local(address: str | None = None, **options: Any) -> LocalExecutor:
    if address or options:
        from xpullm.scaleout.base import ExecutorError

        raise ExecutorError(f"the local executor takes no address or options, got {address!r} {options}")
    return LocalExecutor()
