"""`torch.ops.xpullm.triton_lowbit_mm`: the Triton matmul as an opaque custom op, for `torch.compile`.

Dynamo cannot trace the tuner (device queries, timing, dict caches), so under compilation the kernel goes
through this op: the compiled graph sees one node with a known output shape, and CUDA graphs (e.g.
`mode="reduce-overhead"`) capture the Triton launches inside it. Eager calls skip the op's dispatch cost and
call `launch.matmul` directly (see `TritonLowBitKernel.matmul`).
"""

from __future__ import annotations

import torch

from xpullm.kernels.triton.launch import matmul
from xpullm.kernels.triton.layout import TritonWeight

__all__ = ["matmul_op"]


@torch.library.custom_op("xpullm::triton_lowbit_mm", mutates_args=())
def _lowbit_mm(
    x: torch.Tensor,
    words: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    lut: torch.Tensor,
    fmt: str,
    meta: list[int],
) -> torch.Tensor:
    tw = TritonWeight(fmt, *meta, words=words, scales=scales, zeros=zeros, lut=lut)
    return matmul(x, tw)


@_lowbit_mm.register_fake
def _lowbit_mm_fake(x, words, scales, zeros, lut, fmt, meta):
    return x.new_empty((*x.shape[:-1], meta[1]))


def matmul_op(x: torch.Tensor, tw: TritonWeight) -> torch.Tensor:
    """`launch.matmul` through the registered custom op (what `torch.compile` should see).

    Reads the weight's integers through the single `launch` tuple, so a compiled step guards one attribute per
    layer for them (see `TritonWeight.launch`).
    """
    fmt, meta = tw.launch
    return torch.ops.xpullm.triton_lowbit_mm(x, tw.words, tw.scales, tw.zeros, tw.lut, fmt, list(meta))
