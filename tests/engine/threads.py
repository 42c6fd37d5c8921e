"""Run a function on each argument in its own thread, at once: real concurrent callers for the engine tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def in_threads(fn: Callable[[Any], Any], args: list) -> list:
    """fn(arg) for every arg, each in its own thread started together; results in order, any error re-raised."""
    results: list = [None] * len(args)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = fn(args[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results
