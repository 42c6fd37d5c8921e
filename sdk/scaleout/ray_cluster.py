"""`RayExecutor`: the pieces of a job run on a Ray cluster, on one model-holding actor per worker process.

Each worker is an actor placed by resources (`num_cpus`, `num_gpus`); it builds the driver's engine / embedder from
its recipe (`xpullm.scaleout.recipes`) on first use and keeps it for every later piece. The driver sends pieces to
the least-busy worker (a few in flight each, so a worker never waits for the next one) and takes results as they
finish; it alone writes them. A worker killed mid-job (SIGKILL, OOM, a lost node) is restarted by Ray and its
unfinished pieces are retried there (`max_retries`); pieces are pure, so a retry gives the same answer.

`ray` is imported only when an executor is created: `import xpullm` never imports it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from xpullm.protocols import EmbeddingModel
from xpullm.scaleout.base import ExecutorError, register_executor
from xpullm.scaleout.recipes import ModelRecipe, recipe_for

__all__ = ["ModelWorker", "RayExecutor"]

T = TypeVar("T")
R = TypeVar("R")


class ModelWorker:
    """The actor body: holds the models it was asked for (one copy per worker process) and runs pieces on them."""

    def __init__(self) -> None:
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()  # pieces run on threads: a model is built once

    def run(self, fn: Callable[[Any, Any], Any], key: str | None, recipe: list[Any], item: Any) -> Any:
        """`fn(model, item)`; `recipe` is `[ObjectRef]` (not resolved unless this worker lacks the model)."""
        model = None
        if key is not None:
            with self._lock:
                if key not in self._models:
                    import ray

                    built: ModelRecipe = ray.get(recipe[0])
                    self._models[key] = built.build()
                model = self._models[key]
        return fn(model, item)

    def pid(self) -> int:
        """This worker's process id (tests kill it; `ray list actors` shows the same)."""
        return os.getpid()


class RayExecutor:
    """Runs pieces on `workers` actors of the Ray cluster at `address`.

    address: "auto" (the cluster `ray start` runs on this machine, or `RAY_ADDRESS`), "HOST:PORT",
        "ray://HOST:10001" (Ray Client) or "local" (start a private one-machine Ray for this process).
    workers: actors to start (default: as many as the cluster's CPUs, or GPUs with num_gpus > 0, allow).
    num_cpus / num_gpus: resources each worker reserves; Ray places a worker only where they are free, and a GPU
        worker sees only its GPU(s).
    device: where workers build models ("cuda", "cpu", "auto"; default: the driver's model's own setting).
    inflight_per_worker: pieces on one worker at once, run on its threads (2: the next piece is there when one
        finishes, and a batching engine sees two requests together).
    max_retries: restarts of a dead worker, and retries of each piece it was running.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = "auto",
        *,
        workers: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        device: str | None = None,
        inflight_per_worker: int = 2,
        max_retries: int = 3,
    ) -> None:
        if workers is not None and workers < 1:
            raise ExecutorError(
                f"workers={workers} must be >= 1 (or None: as many as the cluster's CPUs allow)"
            )
        if num_cpus <= 0 and num_gpus <= 0:
            raise ExecutorError(
                f"num_cpus={num_cpus}, num_gpus={num_gpus}: a worker must reserve some resource"
            )
        self.address = address or "auto"
        self.num_cpus = float(num_cpus)
        self.num_gpus = float(num_gpus)
        self.device = device
        self.inflight_per_worker = max(1, int(inflight_per_worker))
        self.max_retries = int(max_retries)
        self._requested_workers = workers
        self._ray = self._connect()
        self._actors: list[Any] = []
        self._recipes: dict[int, tuple[Any, str, Any]] = {}  # id(model) -> (model, key, ObjectRef of recipe)

    # -- connection ----------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            import ray
        except ImportError as exc:
            raise ExecutorError(
                "the ray executor needs Ray: pip install 'xpullm[ray]' (on the driver and every worker)"
            ) from exc
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            address = None if self.address == "local" else self.address
            try:
                with _neutral_cwd():
                    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            except ConnectionError as exc:
                raise ExecutorError(
                    f"no Ray cluster at {self.address!r} ({exc}); start one with `ray start --head`, pass its "
                    "address (HOST:PORT), or use --ray local for a private one-machine Ray"
                ) from exc
        return ray

    @property
    def workers(self) -> int:
        """How many worker actors this executor runs (started on first use)."""
        return len(self._pool())

    def _pool(self) -> list[Any]:
        if self._actors:
            return self._actors
        ray = self._ray
        n = self._requested_workers or self._fitting_workers()
        actor = ray.remote(ModelWorker).options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
            # The worker's pieces run on threads, so an engine that batches concurrent requests (xpullm.LLM's
            # continuous batching) sees them together, as it does in one process with llm.concurrency.
            max_concurrency=self.inflight_per_worker,
            scheduling_strategy="SPREAD",  # one machine's failure takes as few workers as possible
        )
        self._actors = [actor.remote() for _ in range(n)]
        return self._actors

    def _fitting_workers(self) -> int:
        total = self._ray.cluster_resources()
        fits = [int(total.get("CPU", 0) // self.num_cpus)] if self.num_cpus > 0 else []
        if self.num_gpus > 0:
            fits.append(int(total.get("GPU", 0) // self.num_gpus))
        n = min(fits) if fits else 0
        if n < 1:
            raise ExecutorError(
                f"the Ray cluster at {self.address!r} has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs, "
                f"too few for one worker of num_cpus={self.num_cpus}, num_gpus={self.num_gpus}; lower them or add nodes"
            )
        return n

    def worker_pids(self) -> list[int]:
        """Process id of each worker (where a worker was restarted, its new process)."""
        return list(self._ray.get([a.pid.remote() for a in self._pool()]))

    def _recipe(self, model: Any) -> tuple[str | None, Any]:
        if model is None:
            return None, None
        known = self._recipes.get(id(model))
        if known is None or known[0] is not model:
            recipe = recipe_for(model, self.device)
            known = (model, recipe.key, self._ray.put(recipe))
            self._recipes[id(model)] = known
        return known[1], known[2]

    # -- work ----------------------------------------------------------------------------------------------
    def map(
        self,
        fn: Callable[[Any, T], R],
        items: Sequence[T],
        *,
        model: Any = None,
        concurrency: int = 1,
    ) -> Iterator[tuple[int, R]]:
        """`(index, fn(model, item))` as pieces finish; `concurrency` is the local executor's knob (ignored)."""
        ray = self._ray
        actors = self._pool()
        key, recipe_ref = self._recipe(model)
        pending = deque(enumerate(items))
        load = [0] * len(actors)
        inflight: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (item index, worker)

        def submit() -> None:
            while pending:
                w = min(range(len(actors)), key=load.__getitem__)
                if load[w] >= self.inflight_per_worker:
                    return
                index, item = pending.popleft()
                ref = actors[w].run.remote(fn, key, [recipe_ref], item)
                inflight[ref] = (index, w)
                load[w] += 1

        submit()
        try:
            while inflight:
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    index, w = inflight.pop(ref)
                    load[w] -= 1
                    result = ray.get(ref)
                    submit()
                    yield index, result
        finally:
            for ref in inflight:  # an error or interrupt: pieces not yet finished are not wanted
                ray.cancel(ref)

    def embedder(self, embedder: EmbeddingModel) -> EmbeddingModel:
        """An embedder whose `embed_matrix` runs on the workers (identity, dim and tokenizer stay local)."""
        from xpullm.scaleout.embedding import ExecutorEmbedder

        return ExecutorEmbedder(embedder, self)

    def close(self) -> None:
        """Stop the workers; disconnect when this executor connected."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []
        self._recipes.clear()
        if self._owns_connection and self._ray.is_initialized():
            self._ray.shutdown()

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, workers={len(self._actors) or self._requested_workers}, "
            f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus})"
        )


@contextlib.contextmanager
def _neutral_cwd() -> Iterator[None]:
    """Ray puts the driver's working directory at the front of every worker's sys.path; a checkout's folders
    (this repository's top-level `kernels/` shadows the PyPI `kernels` that transformers imports) must not reach
    the workers, which import only installed packages."""
    import tempfile

    here = os.getcwd()
    os.chdir(tempfile.gettempdir())
    try:
        yield
    finally:
        os.chdir(here)


@register_executor("ray")
def _ray_executor(address: str | None = None, **options: Any) -> RayExecutor:
    return RayExecutor(address or "auto", **options)
