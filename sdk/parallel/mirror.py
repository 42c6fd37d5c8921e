"""`Mirrored`: an object on rank 0 whose listed methods also run on every worker, in the same order.

Rank 0's engine calls its decoder / runner as usual; the proxy first sends the call to the workers (who run the
same method on their own shard's object), then runs it locally. The collectives inside the sharded layers line the
ranks up; only rank 0's return value is used (the logits are all-gathered, so every rank has the same ones).
"""

from __future__ import annotations

import threading
from typing import Any

from xpullm.parallel.launch import RankSet

__all__ = ["Mirrored"]


class Mirrored:
    """Proxy of `local` (rank 0's object at path `path` of the program) mirroring `methods` to the workers.

    Calls are serialized by one lock per rank set: the ranks must meet in the same collectives in the same order,
    so two threads may not interleave steps. Other attributes read through to `local`.
    """

    def __init__(self, local: Any, path: str, methods: tuple[str, ...], ranks: RankSet,
                 lock: threading.Lock | None = None) -> None:  # fmt: skip
        self._local = local
        self._path = path
        self._methods = frozenset(methods)
        self._ranks = ranks
        self._lock = lock or threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._local, name)
        if name not in self._methods:
            return attr
        return lambda *args, **kwargs: self._call(name, attr, args, kwargs)

    def _call(self, name: str, fn: Any, args: tuple, kwargs: dict) -> Any:
        with self._lock:
            self._ranks.call(f"{self._path}.{name}" if self._path else name, *args, **kwargs)
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                failure = self._ranks.failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
