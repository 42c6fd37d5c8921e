"""Codebook formats: 4-bit codes index a table of 16 levels in [-1, 1] (NF4) or [-6, 6] (FP4 e2m1).

Both use absmax scaling per group. NF4's levels are the quantiles of a standard normal (QLoRA), which suits
Gaussian-looking weights; FP4 is the OCP e2m1 minifloat, the format newer GPUs compute in natively.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from xpullm.formats.base import QuantFormat, register_format
from xpullm.kernels.codebook import E2M1_LEVELS, NF4_LEVELS

__all__ = ["E2M1_LEVELS", "NF4_LEVELS", "CodebookInt4"]


@dataclass(frozen=True)
class CodebookInt4(QuantFormat):
    """w = levels[q] * scale with scale = absmax / max(levels)."""

    levels: tuple[float, ...] = NF4_LEVELS

    def _table(self, device) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=torch.float32, device=device)

    def _encode(self, w):
        table = self._table(w.device)
        top = float(table.abs().max())
        scale = (w.abs().amax(dim=-1, keepdim=True) / top).to(self.scale_dtype).float()
        x = w * torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
        # Nearest level: sort the table once and bucketize against the midpoints between neighbours.
        sorted_levels, order = torch.sort(table)
        mids = (sorted_levels[1:] + sorted_levels[:-1]) / 2
        q = order[torch.bucketize(x.clamp(-top, top), mids)]
        return q.to(torch.uint8), scale.squeeze(-1).to(self.scale_dtype), None

    def _decode(self, codes, scales, zeros):
        return self._table(codes.device)[codes.long()] * scales.float()[..., None]

    def _error_bound(self, w, scale):
        levels = sorted(set(self.levels))
        widest_gap = max(b - a for a, b in itertools.pairwise(levels))
        return scale * (widest_gap / 2 + 2.0**-9) + max(abs(v) for v in self.levels) * 2.0**-25 + 1e-9


register_format(
    CodebookInt4(
        "nf4", 4, (32, 64, 128, 256), 32, "4-bit normal-float codebook, fp16 absmax scale", levels=NF4_LEVELS
    )
)
register_format(
    CodebookInt4(
        "fp4", 4, (32, 64, 128, 256), 32, "4-bit e2m1 minifloat, fp16 absmax scale", levels=E2M1_LEVELS
    )
)
