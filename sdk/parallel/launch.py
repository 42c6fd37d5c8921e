"""Start and stop a tensor-parallel world: the driver process is rank 0, workers 1..N-1 are spawned processes.

Like `torchrun`, every rank runs the same program on its own shard; unlike it, the caller's own process is rank 0
and the only one the caller talks to. Rank 0 mirrors each forward call to the workers over a pipe per worker
(`RankSet.call`: the method name and its small arguments - token ids, positions, block ids), then every rank runs
it and the sharded layers meet in the collectives. Pipes carry the commands, not torch.distributed, so an idle
model has no collective waiting on a timeout, and a worker sees its driver vanish as end-of-file and exits.

A monitor thread watches the workers: when one exits (a crash, an out-of-memory kill, `kill -9`) the next call
raises `RankFailed` with one line naming the rank, its exit code and its last error; the driver then tears the
world down (the collectives of a dead peer fail on gloo; NCCL's own watchdog ends a stuck one after the timeout).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from xpullm.parallel.errors import RankFailed, TensorParallelError
from xpullm.parallel.group import RankGroup, destroy_group, init_group, open_store

__all__ = ["RankContext", "RankSet", "rank_device"]

_READY_TIMEOUT_S = 1800.0  # loading a 70B shard from a slow disk takes minutes


@dataclass(frozen=True)
class RankContext:
    """What a rank's program builder gets: its place in the world and the driver's payload."""

    rank: int
    world: int
    device: torch.device
    group: RankGroup
    payload: Any = None


Builder = Callable[[RankContext], Any]
"""`build(ctx) -> program`: load this rank's shard and return the object whose methods rank 0 mirrors."""


def rank_device(device: torch.device, rank: int, world: int) -> torch.device:
    """Rank `rank`'s device: the CPU for CPU worlds, else accelerator `rank` of the host (one per rank)."""
    if device.type == "cpu":
        return device
    from xpullm.parallel.backends import backend_for

    count = backend_for(device).device_count()
    if count < world:
        raise TensorParallelError(
            f"tensor_parallel={world} needs {world} {device.type} devices, this host has {count}; "
            f"use tensor_parallel={max(1, count)} or fewer"
        )
    return torch.device(device.type, rank)


def _worker(rank: int, world: int, device: torch.device, port: int, timeout_s: float, threads: int,
            conn: Connection, build: Builder, payload: Any) -> None:  # fmt: skip
    """A worker process: join the world, build the program, then run the driver's calls until told to stop."""
    if threads:
        torch.set_num_threads(threads)
    try:
        group = init_group(rank, world, device, port, timeout_s)
        program = build(RankContext(rank, world, device, group, payload))
        conn.send(("ready", None))
        while True:
            try:
                msg = conn.recv()
            except EOFError:  # the driver is gone
                return
            if msg is None:
                return
            method, args, kwargs = msg
            _resolve(program, method)(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the driver, then the process exits non-zero
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        try:
            conn.send(("error", line))
        except OSError:
            pass
        traceback.print_exc()
        os._exit(1)
    finally:
        destroy_group()


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class _Worker:
    rank: int
    process: Any
    conn: Connection
    error: str | None = None


@dataclass
class RankSet:
    """The driver side of a world of `world` ranks on `device` (rank 0 runs here, in the caller's process).

    `start()` spawns the workers and joins the world as rank 0, `build` makes rank 0's own program (the same
    builder the workers run), `call()` mirrors one method call to every worker, `close()` stops them.
    """

    world: int
    device: torch.device
    build: Builder
    payload: Any = None
    timeout_s: float = 600.0  # a collective waiting this long for a peer fails (first CUDA-graph captures are slow)
    threads_per_rank: int | None = None  # CPU threads of each worker; None: the host's cores / world
    group: RankGroup | None = None
    program: Any = None
    _workers: list[_Worker] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _failed: str | None = None
    _closed: bool = False

    def start(self) -> Any:
        """Spawn the workers, join as rank 0, build every rank's program; rank 0's program is returned."""
        ctx = mp.get_context("spawn")  # fork would copy this process's threads and CUDA state
        store = open_store(self.world, self.timeout_s)
        threads = self.threads_per_rank or max(1, (os.cpu_count() or 1) // self.world)
        try:
            for r in range(1, self.world):
                parent, child = ctx.Pipe()
                dev = rank_device(self.device, r, self.world)
                proc = ctx.Process(
                    target=_worker, name=f"xpullm-tp-rank{r}", daemon=True,
                    args=(r, self.world, dev, store.port, self.timeout_s, threads, child, self.build, self.payload),
                )  # fmt: skip
                proc.start()
                child.close()
                self._workers.append(_Worker(r, proc, parent))
            dev0 = rank_device(self.device, 0, self.world)
            self.group = init_group(0, self.world, dev0, store.port, self.timeout_s, store=store)
            self.program = self.build(RankContext(0, self.world, dev0, self.group, self.payload))
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        threading.Thread(target=self._monitor, name="xpullm-tp-monitor", daemon=True).start()
        weakref.finalize(self.program, _close_quietly, weakref.ref(self))
        return self.program

    def _wait_ready(self) -> None:
        pending = {w.conn: w for w in self._workers}
        while pending:
            ready = wait([*pending, *(w.process.sentinel for w in pending.values())], _READY_TIMEOUT_S)
            if not ready:
                raise RankFailed(f"tensor-parallel workers {sorted(w.rank for w in pending.values())} did not "
                                 f"start within {_READY_TIMEOUT_S:.0f} s")  # fmt: skip
            for obj in ready:
                worker = pending.get(obj) or next((w for w in pending.values() if w.process.sentinel == obj), None)
                if worker is None:
                    continue
                msg = _poll(worker.conn)
                if msg is not None and msg[0] == "ready":
                    del pending[worker.conn]
                    continue
                worker.process.join(5)
                detail = msg[1] if msg else None
                raise RankFailed(self._describe(worker, detail, "while loading its shard"))

    def _describe(self, worker: _Worker, detail: str | None, when: str) -> str:
        code = worker.process.exitcode
        return (f"tensor-parallel rank {worker.rank} (pid {worker.process.pid}) failed {when}: "
                f"{detail or f'exit code {code}'}; the model is unusable, create it again")  # fmt: skip

    def _monitor(self) -> None:
        sentinels = {w.process.sentinel: w for w in self._workers}
        while sentinels and not self._closed:
            for s in wait(list(sentinels), timeout=1.0):
                worker = sentinels.pop(s)
                if self._closed:
                    return
                msg = _poll(worker.conn)
                self._failed = self._describe(worker, msg[1] if msg else None, "and exited")

    def check(self) -> None:
        """Raise `RankFailed` if a worker has died (or the set was closed)."""
        if self._failed:
            raise RankFailed(self._failed)
        if self._closed:
            raise RankFailed("the tensor-parallel ranks were closed; create the model again")

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send one call (a dotted method path on each worker's program) to every worker; they run it at once."""
        self.check()
        msg = (method, args, kwargs)
        for w in self._workers:
            try:
                w.conn.send(msg)
            except OSError as exc:
                raise RankFailed(self._describe(w, f"its pipe broke ({exc})", "and exited")) from exc

    def failure(self, exc: BaseException) -> BaseException:
        """The exception to raise for `exc` from rank 0's own part of a call: `RankFailed` when a worker died."""
        for _ in range(20):  # a peer's death reaches rank 0's collective before the monitor's next look
            if self._failed or all(w.process.is_alive() for w in self._workers):
                break
            threading.Event().wait(0.05)
        if not self._failed:
            dead = next((w for w in self._workers if not w.process.is_alive()), None)
            if dead is not None:
                self._failed = self._describe(dead, (_poll(dead.conn) or (None, None))[1], "and exited")
        return RankFailed(self._failed) if self._failed else exc

    def close(self) -> None:
        """Stop the workers (a polite message, then terminate stragglers) and leave the world. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(5)
            w.conn.close()
        destroy_group()

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (ranks 1..N-1)."""
        return [w.process.pid for w in self._workers]


def _poll(conn: Connection) -> tuple[str, Any] | None:
    try:
        return conn.recv() if conn.poll() else None
    except (EOFError, OSError):
        return None


def _close_quietly(ref: weakref.ref) -> None:
    ranks = ref()
    if ranks is not None:
        ranks.close()
