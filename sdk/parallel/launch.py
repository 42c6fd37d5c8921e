"""Start and stop a tensor-parallel world: the driver process is rank 0, workers 1..N-1 are spawned processes.

Like `torchrun`, every rank runs the same program on its own shard, and workers are fresh interpreters
(`python -P -m xpullm.parallel.worker`: nothing of the caller's script is re-imported, so no `__main__` guard is
needed); unlike it, the caller's own process is rank 0 and the only one the caller talks to. Rank 0 mirrors each
forward call to the workers over one authenticated local socket per worker (`RankSet.call`: the method name and its
small arguments - token ids, positions, block ids), then every rank runs it and the sharded layers meet in the
collectives. Commands travel on these sockets, not through torch.distributed, so an idle model has no collective
waiting on a timeout, and a worker sees its driver vanish as end-of-file and exits (Linux also kills it with its
parent).

A monitor thread watches the workers: when one exits (a crash, an out-of-memory kill, `kill -9`) the next call
raises `RankFailed` with one line naming the rank, its exit code and its last error (gloo collectives of a dead
peer fail at once; NCCL's watchdog ends a stuck one after the timeout).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import pickle
import secrets
import subprocess
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch

from xpullm.parallel.errors import RankFailed, TensorParallelError
from xpullm.parallel.group import RankGroup, destroy_group, init_group, open_store

__all__ = ["RankContext", "RankSet", "load_builder", "rank_device", "run_worker"]

_READY_TIMEOUT_S = 1800.0  # loading a 70B shard from a slow disk takes minutes
_AUTH_ENV = "XPULLM_TP_AUTHKEY"


@dataclass(frozen=True)
class RankContext:
    """What a rank's program builder gets: its place in the world and the driver's payload."""

    rank: int
    world: int
    device: torch.device
    group: RankGroup
    payload: Any = None


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


def load_builder(ref: str) -> Any:
    """The builder named by `module:function` or `/path/to/file.py:function` (`build(ctx) -> program`)."""
    where, _, name = ref.rpartition(":")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_xpullm_tp_{Path(where).stem}", where)
        if spec is None or spec.loader is None:
            raise TensorParallelError(f"cannot load the rank builder file {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when its driver dies (even by SIGKILL)."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def run_worker(address: tuple[str, int], authkey: bytes, rank: int) -> None:
    """Worker `rank`: join the world, build the program, then run the driver's calls until told to stop."""
    conn = Client(address, authkey=authkey)
    _send(conn, rank)
    try:
        world, device, port, timeout_s, threads, builder, payload, parent = _read(conn)
        _die_with_parent(parent)
        if threads:
            torch.set_num_threads(threads)
        group = init_group(rank, world, device, port, timeout_s)
        program = load_builder(builder)(RankContext(rank, world, device, group, payload))
        _send(conn, ("ready", None))
        while True:
            try:
                msg = _read(conn)
            except EOFError:  # the driver is gone
                return
            if msg is None:
                return
            method, args, kwargs = msg
            _resolve(program, method)(*_unpack(args, device), **_unpack(kwargs, device))
    except BaseException as exc:
        text = str(exc).strip()
        line = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
        with contextlib.suppress(OSError):
            _send(conn, ("error", line))
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    finally:
        destroy_group()


@dataclass(frozen=True)
class _TensorArg:
    """A tensor argument in transit: its values (host memory) and the kind of device it came from."""

    value: torch.Tensor
    device_type: str


def _pack(obj: Any) -> Any:
    """Call arguments with tensors copied to host memory: commands are plain pickles (no shared-memory handles,
    which would tie a worker to the driver's allocations), and a rank's tensors belong on its own device."""
    if isinstance(obj, torch.Tensor):
        return _TensorArg(obj.detach().cpu(), obj.device.type)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pack(x) for x in obj)
    if isinstance(obj, dict):
        return {k: _pack(v) for k, v in obj.items()}
    return obj


def _unpack(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, _TensorArg):
        return obj.value if obj.device_type == "cpu" else obj.value.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unpack(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: _unpack(v, device) for k, v in obj.items()}
    return obj


def _send(conn: Connection, msg: Any) -> None:
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _read(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _resolve(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class _Worker:
    rank: int
    process: subprocess.Popen
    conn: Connection | None = None


@dataclass
class RankSet:
    """The driver side of a world of `world` ranks on `device` (rank 0 runs here, in the caller's process).

    `start()` spawns the workers, joins the world as rank 0 and builds every rank's program with the builder named
    by `builder` (`module:function`, so a fresh worker interpreter can import it); `call()` mirrors one method call
    to every worker; `close()` stops them.
    """

    world: int
    device: torch.device
    builder: str
    payload: Any = None
    timeout_s: float = (
        600.0  # a collective waiting this long for a peer fails (first CUDA-graph captures are slow)
    )
    threads_per_rank: int | None = None  # CPU threads of each worker; None: the host's cores / world
    group: RankGroup | None = None
    program: Any = None
    _workers: list[_Worker] = field(default_factory=list)
    _failures: dict[int, tuple[str | None, str]] = field(default_factory=dict)  # rank -> (its error, message)
    _closed: bool = False
    _threads_before: int | None = None

    def start(self) -> Any:
        """Spawn the workers, join as rank 0, build every rank's program; rank 0's program is returned."""
        build = load_builder(self.builder)  # fail here, not in N workers, on a bad name
        authkey = secrets.token_bytes(16)
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        store = open_store(self.world, self.timeout_s)
        threads = self.threads_per_rank or max(1, (os.cpu_count() or 1) // self.world)
        if self.device.type == "cpu":
            # Rank 0 computes on the same cores as the workers: with more threads than its share, OpenMP teams
            # spin on cores another rank needs and a step slows down many times over. Restored by close().
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        env = {**os.environ, _AUTH_ENV: authkey.hex(), "PYTHONSAFEPATH": "1"}
        try:
            for r in range(1, self.world):
                host, port = listener.address
                cmd = [sys.executable, "-P", "-m", "xpullm.parallel.worker", f"{host}:{port}", str(r)]
                self._workers.append(_Worker(r, subprocess.Popen(cmd, env=env)))
            for _ in range(1, self.world):
                conn = _accept(listener, self._workers)
                # Workers connect in any order and say their rank.
                worker = self._workers[int(_read(conn)) - 1]
                worker.conn = conn
                dev = rank_device(self.device, worker.rank, self.world)
                _send(conn, (self.world, dev, store.port, self.timeout_s, threads, self.builder,
                           self.payload, os.getpid()))  # fmt: skip
            dev0 = rank_device(self.device, 0, self.world)
            self.group = init_group(0, self.world, dev0, store.port, self.timeout_s, store=store)
            self.program = build(RankContext(0, self.world, dev0, self.group, self.payload))
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        finally:
            listener.close()
        threading.Thread(target=self._monitor, name="xpullm-tp-monitor", daemon=True).start()
        weakref.finalize(self.program, _close_quietly, weakref.ref(self))
        return self.program

    def _wait_ready(self) -> None:
        from multiprocessing.connection import wait

        pending = {w.conn: w for w in self._workers}
        while pending:
            ready = wait(list(pending), _READY_TIMEOUT_S)
            if not ready:
                raise RankFailed(f"tensor-parallel workers {sorted(w.rank for w in pending.values())} did not "
                                 f"start within {_READY_TIMEOUT_S:.0f} s")  # fmt: skip
            for conn in ready:
                worker = pending.pop(conn)
                msg = _recv(conn)
                if msg is None or msg[0] != "ready":
                    worker.process.wait(10)
                    raise RankFailed(
                        self._describe(worker, msg[1] if msg else None, "while loading its shard")
                    )

    def _describe(self, worker: _Worker, detail: str | None, when: str) -> str:
        code = worker.process.poll()
        return (f"tensor-parallel rank {worker.rank} (pid {worker.process.pid}) failed {when}: "
                f"{detail or f'exit code {code}'}; the model is unusable, create it again")  # fmt: skip

    def _monitor(self) -> None:
        from multiprocessing.connection import wait

        live = {w.conn: w for w in self._workers if w.conn is not None}
        while live and not self._closed:
            for conn in wait(list(live), timeout=1.0):
                # A worker writes only when it fails; end-of-file means it exited.
                worker = live.pop(conn)
                msg = _recv(conn)
                if self._closed:
                    return
                worker.process.wait(10)
                detail = msg[1] if msg else None
                self._failures[worker.rank] = (detail, self._describe(worker, detail, "and exited"))

    @property
    def _failed(self) -> str | None:
        """The message of the root failure: a rank that died without a word (killed) before one that raised -
        when one rank dies, its peers' collectives fail too and they exit with a connection error."""
        if not self._failures:
            return None
        rank = min(self._failures, key=lambda r: (self._failures[r][0] is not None, r))
        return self._failures[rank][1]

    def check(self) -> None:
        """Raise `RankFailed` if a worker has died (or the set was closed)."""
        if self._failed:
            raise RankFailed(self._failed)
        if self._closed:
            raise RankFailed("the tensor-parallel ranks were closed; create the model again")

    def call(self, method: str, *args: Any, **kwargs: Any) -> None:
        """Send one call (a dotted method path on each worker's program) to every worker; they run it at once."""
        self.check()
        msg = pickle.dumps((method, _pack(args), _pack(kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
        for w in self._workers:
            try:
                w.conn.send_bytes(msg)
            except OSError as exc:
                raise RankFailed(self._describe(w, f"its connection broke ({exc})", "and exited")) from exc

    def failure(self, exc: BaseException) -> BaseException:
        """The exception to raise for `exc` from rank 0's own part of a call: `RankFailed` when a worker died."""
        for _ in range(40):  # a peer's death reaches rank 0's collective before the monitor sees it
            if self._failed:
                threading.Event().wait(0.5)  # the other ranks' exits follow: let the monitor see the root one
                break
            threading.Event().wait(0.05)
        return RankFailed(self._failed) if self._failed else exc

    def close(self) -> None:
        """Stop the workers (a polite message, then kill stragglers) and leave the world. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            if w.conn is not None:
                with contextlib.suppress(OSError):
                    _send(w.conn, None)
        for w in self._workers:
            try:
                w.process.wait(15)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait(5)
            if w.conn is not None:
                w.conn.close()
        destroy_group()
        if self._threads_before is not None:
            torch.set_num_threads(self._threads_before)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (ranks 1..N-1)."""
        return [w.process.pid for w in self._workers]


def _accept(listener: Listener, workers: list[_Worker]) -> Connection:
    """The next worker's connection, or `RankFailed` if a worker exits before connecting."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(_try(listener.accept)), daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        dead = next((w for w in workers if w.conn is None and w.process.poll() is not None), None)
        if dead is not None and thread.is_alive():
            raise RankFailed(f"tensor-parallel rank {dead.rank} exited with code {dead.process.returncode} "
                             "before it connected; see its error above")  # fmt: skip
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def _try(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


def _recv(conn: Connection) -> tuple[str, Any] | None:
    try:
        return _read(conn)
    except (EOFError, OSError, pickle.UnpicklingError):
        return None


def _close_quietly(ref: weakref.ref) -> None:
    ranks = ref()
    if ranks is not None:
        ranks.close()
