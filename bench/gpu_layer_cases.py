"""The layer cases the GPU kernel benchmarks time (`gpu_narrow.py`, `gpu_cuda_builds.py`): per format (NAME for
its default group, or NAME:GROUP) and NxK shape one seeded random weight packed in the Triton layout on the device,
and per row count fresh bf16 activations prepared for it, with an output buffer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import torch


class LayerCase(NamedTuple):
    item: str  # the format as given, e.g. "sym_int4:128"
    n: int
    k: int
    m: int
    tw: Any  # TritonWeight
    dense: torch.Tensor  # the weight in bf16 on the device (for cuBLAS)
    x: torch.Tensor  # [m, K padded] bf16, as the kernels take it
    out: torch.Tensor  # [m, n] bf16


def layer_cases(formats: str, shapes: str, rows: str, dev: torch.device) -> Iterator[LayerCase]:
    """Every (format, shape, rows) of the comma-separated lists, formats outermost; one weight per shape."""
    from xpullm.formats import get_format
    from xpullm.kernels.triton import pack_weight
    from xpullm.kernels.triton.launch import _prepare_x

    for item in formats.split(","):
        name, _, gs = item.partition(":")
        for n, k in (tuple(int(v) for v in s.split("x")) for s in shapes.split(",")):
            weight = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02
            tw = pack_weight(
                get_format(name).quantize(weight, int(gs) if gs else None), dev
            )  # NAME: its default
            dense = weight.to(dev, torch.bfloat16)
            for m in (int(r) for r in rows.split(",")):
                x = _prepare_x(torch.randn(m, k, device=dev, dtype=torch.bfloat16), tw)
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                yield LayerCase(item, n, k, m, tw, dense, x, out)
