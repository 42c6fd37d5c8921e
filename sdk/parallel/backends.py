"""Which `torch.distributed` backend each device kind talks through: a small registry, not an if-chain.

gloo runs on CPU tensors, NCCL on CUDA, XCCL on Intel GPUs (`xpu`) where the installed PyTorch was built with it
(upstream PyTorch >= 2.8 ships it as `xccl`; the old oneCCL bindings are not used).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from xpullm.parallel.errors import TensorParallelError

__all__ = ["BACKENDS", "CollectiveBackend", "backend_for", "register_backend"]


@dataclass(frozen=True)
class CollectiveBackend:
    """A `torch.distributed` backend for one device kind."""

    device_type: str  # `torch.device.type` whose tensors this backend reduces
    name: str  # the `backend=` name torch.distributed takes
    available: Callable[[], bool]  # whether this PyTorch build has it
    gather_into_tensor: bool  # `all_gather_into_tensor` works (one output buffer: CUDA-graph friendly)
    device_count: Callable[[], int]  # how many devices of this kind one host has (ranks get one each)


BACKENDS: dict[str, CollectiveBackend] = {}


def register_backend(backend: CollectiveBackend) -> CollectiveBackend:
    """Register the backend for `backend.device_type` (one per device kind; a later one replaces it)."""
    BACKENDS[backend.device_type] = backend
    return backend


def _xccl_available() -> bool:
    import torch.distributed as dist

    probe = getattr(dist, "is_xccl_available", None)
    return bool(probe is not None and probe())


def _xpu_count() -> int:
    xpu = getattr(torch, "xpu", None)
    return int(xpu.device_count()) if xpu is not None and xpu.is_available() else 0


register_backend(
    CollectiveBackend("cpu", "gloo", lambda: _dist().is_gloo_available(), False, lambda: 1 << 16)
)
register_backend(
    CollectiveBackend("cuda", "nccl", lambda: _dist().is_nccl_available(), True, torch.cuda.device_count)
)
register_backend(CollectiveBackend("xpu", "xccl", _xccl_available, True, _xpu_count))


def _dist():
    import torch.distributed as dist

    return dist


def backend_for(device: torch.device) -> CollectiveBackend:
    """The registered backend for `device`, or a `TensorParallelError` that says what is missing."""
    backend = BACKENDS.get(device.type)
    if backend is None:
        raise TensorParallelError(
            f"no collective backend is registered for device {device.type!r}; "
            f"tensor parallelism runs on: {', '.join(sorted(BACKENDS))}"
        )
    if not _dist().is_available() or not backend.available():
        raise TensorParallelError(
            f"this PyTorch build has no {backend.name!r} backend for {device.type} tensors; "
            f"install a PyTorch with {backend.name} or use tensor_parallel=1"
        )
    return backend
