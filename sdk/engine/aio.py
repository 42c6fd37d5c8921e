"""Run a blocking generator in a worker thread and consume it from asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

__all__ = ["iterate_in_thread"]

T = TypeVar("T")


async def iterate_in_thread(
    make: Callable[[threading.Event], Iterator[T]], cancel: threading.Event | None = None
) -> AsyncIterator[T]:
    """Yield the items of `make(cancel)` produced in a worker thread.

    `make` receives a `threading.Event` that is set when the consumer stops early (break, exception, task
    cancellation); pass it to the engine as `cancel=` so generation stops after the current token. Pass
    `cancel` to use an event the caller already wired into its iterator.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    cancel = cancel or threading.Event()

    def work() -> None:
        try:
            for item in make(cancel):
                if cancel.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
        except BaseException as exc:
            loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

    worker = threading.Thread(target=work, name="xpullm-integration-stream", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == "item":
                yield value  # type: ignore[misc]
            elif kind == "error":
                raise value  # type: ignore[misc]
            else:
                break
    finally:
        cancel.set()
        await asyncio.to_thread(worker.join)
