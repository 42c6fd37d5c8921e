"""The executor seam: where the pipelines' parallel work runs, picked by name from a registry.

A pipeline hands an executor a pure function and a list of items; the executor runs `fn(model, item)` for each and
gives back `(index, result)` pairs. The pipeline (the driver) stays the only writer of its store, LLM cache and
stats: executors compute, they never write. "local" runs in this process (threads); "ray" runs on a Ray cluster's
model-holding actors (`xpullm.scaleout.ray_cluster`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from xpullm.errors import XPULLMError
from xpullm.protocols import EmbeddingModel

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "in_order",
    "make_executor",
    "register_executor",
]

T = TypeVar("T")
R = TypeVar("R")


class ExecutorError(XPULLMError, ValueError):
    """An executor could not be chosen, started or reached (the message names the fix)."""


@runtime_checkable
class Executor(Protocol):
    """Runs independent pieces of a job; results come back to the caller, which alone writes them."""

    name: str

    @property
    def workers(self) -> int:
        """How many pieces run at once (worker processes for Ray, 1 for the local executor)."""
        ...

    def map(
        self,
        fn: Callable[[Any, T], R],
        items: Sequence[T],
        *,
        model: Any = None,
        concurrency: int = 1,
    ) -> Iterator[tuple[int, R]]:
        """`fn(model, item)` for every item, as `(index, result)` pairs in the order they finish, each index once.

        fn must be a module-level function (a Ray worker imports it by name). model: the engine or embedder `fn`
        needs; an executor that runs elsewhere builds its own copy once per worker (`xpullm.scaleout.recipes`).
        concurrency: pieces in flight at once in the local executor (a remote one has its workers). Stopping the
        iteration early (an error, Ctrl-C) cancels the pieces not yet started.
        """
        ...

    def embedder(self, embedder: EmbeddingModel) -> EmbeddingModel:
        """`embedder` itself (local), or an embedder whose `embed_matrix` runs on the workers."""
        ...

    def close(self) -> None:
        """Release the workers (a Ray executor that connected to a cluster disconnects)."""
        ...


ExecutorFactory = Callable[..., Executor]

EXECUTORS: dict[str, ExecutorFactory] = {}
"""Executor factories by name; `make_executor("NAME:ADDRESS")` calls `EXECUTORS[NAME](ADDRESS)`."""

_BUILTIN_MODULES = {"local": "xpullm.scaleout.local", "ray": "xpullm.scaleout.ray_cluster"}


def register_executor(name: str) -> Callable[[ExecutorFactory], ExecutorFactory]:
    """Decorator: register a factory `factory(address: str | None, **options) -> Executor` under `name`."""

    def wrap(factory: ExecutorFactory) -> ExecutorFactory:
        EXECUTORS[name] = factory
        return factory

    return wrap


def make_executor(spec: Executor | str | None = None, **options: Any) -> Executor:
    """An executor from an instance (returned as is), None ("local") or a spec string `NAME` / `NAME:ADDRESS`.

    `"ray"` connects to the cluster Ray finds (`RAY_ADDRESS`, or a `ray start` on this machine); `"ray:HOST:PORT"`
    or `"ray:ray://HOST:10001"` to a given one; `"ray:local"` starts a private one-machine Ray. `options` go to the
    factory (for Ray: workers, num_cpus, num_gpus, ...).
    """
    if spec is not None and not isinstance(spec, str):
        if not isinstance(spec, Executor):
            raise ExecutorError(
                f"executor must be an Executor, a name like 'ray' or 'ray:HOST:PORT', or None; got {spec!r}"
            )
        return spec
    name, _, address = (spec or "local").partition(":")
    if name in _BUILTIN_MODULES and name not in EXECUTORS:
        import importlib

        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(sorted(_BUILTIN_MODULES))}")
    return EXECUTORS[name](address or None, **options)


def in_order(pairs: Iterator[tuple[int, R]]) -> Iterator[R]:
    """Results of `Executor.map` in item order (results that finish early wait in a buffer)."""
    waiting: dict[int, R] = {}
    nxt = 0
    for index, result in pairs:
        waiting[index] = result
        while nxt in waiting:
            yield waiting.pop(nxt)
            nxt += 1
