"""One rank's place in a tensor-parallel world, and the two collectives the sharded layers need.

The world is torch.distributed's default process group, rendezvoused through a `TCPStore` that the driver (rank 0)
hosts on 127.0.0.1: the driver opens the store on a free port first and hands the port to its workers, so no port
is guessed. One tensor-parallel world per process.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch

from xpullm.parallel.backends import CollectiveBackend, backend_for
from xpullm.parallel.errors import TensorParallelError

__all__ = ["RankGroup", "destroy_group", "init_group", "open_store"]


@dataclass
class RankGroup:
    """This process's rank in the world, its device and the collectives over the default process group."""

    rank: int
    world: int
    device: torch.device
    backend: CollectiveBackend

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum `t` over the ranks, in place (every rank gets the sum); `t` is returned."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def all_gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `t` [..., n] along the last dim -> [..., world * n] (same n on every rank)."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        flat = t.reshape(-1, t.shape[-1]).contiguous()
        if self.backend.gather_into_tensor:
            out = flat.new_empty((self.world, *flat.shape))
            dist.all_gather_into_tensor(out, flat)
            parts = out.unbind(0)
        else:
            parts = [torch.empty_like(flat) for _ in range(self.world)]
            dist.all_gather(parts, flat)
        return torch.cat(parts, dim=-1).view(*t.shape[:-1], self.world * t.shape[-1])


def open_store(world: int, timeout_s: float):
    """The rendezvous store, hosted by this process (rank 0) on a free port of 127.0.0.1; read `.port`."""
    import torch.distributed as dist

    return dist.TCPStore(
        "127.0.0.1",
        0,
        world,
        is_master=True,
        timeout=datetime.timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def init_group(rank: int, world: int, device: torch.device, port: int, timeout_s: float,
               store: object | None = None) -> RankGroup:  # fmt: skip
    """Join the world as `rank` (rank 0 passes the store it opened; workers connect to `port`)."""
    import torch.distributed as dist

    backend = backend_for(device)
    if dist.is_initialized():
        raise TensorParallelError(
            "this process already belongs to a torch.distributed world (one tensor-parallel model per process); "
            "close() the other tensor-parallel LLM first"
        )
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timeout)
    if device.type != "cpu":
        getattr(torch, device.type).set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend.name, store=store, rank=rank, world_size=world, timeout=timeout, **kwargs)
    return RankGroup(rank, world, device, backend)


def destroy_group() -> None:
    """Leave the world (idempotent)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
