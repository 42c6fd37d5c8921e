"""Integer formats: symmetric int4 (GGUF Q4_0), asymmetric int4 (GGUF Q4_1) and symmetric int8 (GGUF Q8_0).

The encodings match llama.cpp's block formats bit for bit in meaning, so GGUF tensors map onto them without a
second rounding. Scales are rounded to fp16 *before* the codes are chosen, so decoding with the stored scale
gives the error the codes were picked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xpullm.formats.base import PER_CHANNEL, QuantFormat, register_format

_GROUPS = (32, 64, 128, 256)
# Half of fp16's smallest subnormal step: the absolute rounding of a tiny scale, multiplied by the code range.
_FP16_TINY = 2.0**-25 + 1e-9


def _safe_inverse(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)


@dataclass(frozen=True)
class SymInt4(QuantFormat):
    """w = (q - 8) * scale; the largest-magnitude value of a group lands exactly on code 0 (-8 * scale)."""

    def _encode(self, w):
        idx = w.abs().argmax(dim=-1, keepdim=True)
        extreme = torch.gather(w, -1, idx)
        scale = (extreme / -8.0).to(self.scale_dtype).float()
        q = (w * _safe_inverse(scale)).round().add_(8).clamp_(0, 15)
        return q.to(torch.uint8), scale.squeeze(-1).to(self.scale_dtype), None

    def _decode(self, codes, scales, zeros):
        return (codes.float() - 8.0) * scales.float()[..., None]

    def _error_bound(self, w, scale):
        # The extreme maps exactly to -8; its opposite sign may reach +8 and clamp to +7: one step at worst.
        # Plus the fp16 rounding of the scale, amplified by up to 8 steps.
        return scale.abs() * (1 + 8 * 2.0**-10) + 8 * _FP16_TINY


@dataclass(frozen=True)
class AsymInt4(QuantFormat):
    """w = q * scale + zero with q in 0..15, zero = the group minimum."""

    def _encode(self, w):
        lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
        scale = ((hi - lo) / 15.0).to(self.scale_dtype).float()
        zero = lo.to(self.scale_dtype).float()
        q = ((w - zero) * _safe_inverse(scale)).round().clamp_(0, 15)
        return (
            q.to(torch.uint8),
            scale.squeeze(-1).to(self.scale_dtype),
            zero.squeeze(-1).to(self.scale_dtype),
        )

    def _decode(self, codes, scales, zeros):
        return codes.float() * scales.float()[..., None] + zeros.float()[..., None]

    def _error_bound(self, w, scale):
        # Half a step, plus the fp16 rounding of scale and zero (relative 2^-11 each, times up to 15 steps).
        return scale * (0.5 + 16 * 2.0**-10) + w.abs().amax(-1, keepdim=True) * 2.0**-10 + 16 * _FP16_TINY


@dataclass(frozen=True)
class SymInt8(QuantFormat):
    """w = q * scale with q in -127..127 stored as int8."""

    def _encode(self, w):
        scale = (w.abs().amax(dim=-1, keepdim=True) / 127.0).to(self.scale_dtype).float()
        q = (w * _safe_inverse(scale)).round().clamp_(-127, 127)
        return q.to(torch.int8), scale.squeeze(-1).to(self.scale_dtype), None

    def _decode(self, codes, scales, zeros):
        return codes.float() * scales.float()[..., None]

    def _error_bound(self, w, scale):
        return scale * (0.5 + 128 * 2.0**-11) + 128 * _FP16_TINY


register_format(SymInt4("sym_int4", 4, _GROUPS, 32, "int4, one fp16 scale per group (GGUF Q4_0)"))
register_format(AsymInt4("asym_int4", 4, _GROUPS, 32, "int4, fp16 scale + min per group (GGUF Q4_1)"))
register_format(
    SymInt8("sym_int8", 8, (PER_CHANNEL, *_GROUPS), PER_CHANNEL, "int8, fp16 scale per row or group (Q8_0)")
)
