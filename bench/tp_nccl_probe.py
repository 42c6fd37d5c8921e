"""Probe: do torch.distributed NCCL collectives capture into a CUDA graph here? (NCCL world of 1, one GPU.)

    python -P bench/tp_nccl_probe.py      # prints the replayed mean: 6.0 when capture and replay work

The tensor-parallel decoder captures its all-reduces and all-gather inside the CUDA-graph decode step; this checks
the mechanism on any single-GPU machine before a multi-GPU one is available.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from xpullm.parallel.group import init_group, open_store

store = open_store(1, 60)
g = init_group(0, 1, torch.device("cuda", 0), store.port, 60, store=store)
x = torch.ones(4, 8, device="cuda")
dist.all_reduce(x)  # warm-up creates the communicator
out = x.new_empty(1, 4, 8)
dist.all_gather_into_tensor(out, x)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    y = x * 2
    dist.all_reduce(y)
    dist.all_gather_into_tensor(out, y)
x.fill_(3.0)
graph.replay()
torch.cuda.synchronize()
print("captured all_reduce + all_gather_into_tensor replayed:", float(out.mean()), "(expect 6.0)")
dist.destroy_process_group()
