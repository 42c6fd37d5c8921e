"""Small int64 copies between the host and a device that do not wait for the device's queue.

A CUDA copy from or to pageable host memory synchronizes the stream: the host waits until every kernel queued
before it has run. The engine's step inputs (token ids, positions, block-table rows) and its sampled tokens are
such copies, so each one would stall the host for a whole step when the next step is already queued
(`EngineCore`'s launch-ahead). Through pinned memory and `non_blocking`, a copy is just another queued operation:
`to_device` returns at once, `to_host` returns a function that waits for that copy only. PyTorch's caching host
allocator keeps a pinned buffer alive until the copies queued on it have run, so nothing here is reused early.
On other devices (CPU, XPU) both are plain copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["to_device", "to_host"]


def to_device(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """`values` as an int64 tensor on `device`; on CUDA queued behind the device's work instead of waiting for it."""
    host = torch.tensor(values, dtype=torch.long)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> Callable[[], list[int]]:
    """Start copying the 1-D `tensor` to the host; the returned function waits for that copy and gives its values
    (on CUDA it does not wait for work queued after this call)."""
    if tensor.device.type != "cuda":
        values = tensor.tolist()
        return lambda: values
    out = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    out.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def take() -> list[int]:
        done.synchronize()
        return out.tolist()

    return take
