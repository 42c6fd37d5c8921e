"""FP8 formats (e4m3fn, e5m2) with an fp32 absmax scale per row or group; codes are the raw fp8 bytes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xpullm.formats.base import PER_CHANNEL, QuantFormat, register_format


@dataclass(frozen=True)
class Float8(QuantFormat):
    """w = float(fp8 code) * scale, scale = absmax / the fp8 type's largest finite value."""

    fp8_dtype: torch.dtype = torch.float8_e4m3fn
    mantissa_bits: int = 3

    def _encode(self, w):
        top = torch.finfo(self.fp8_dtype).max
        scale = (w.abs().amax(dim=-1, keepdim=True) / top).to(self.scale_dtype).float()
        x = (w * torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)).clamp(-top, top)
        return x.to(self.fp8_dtype).view(torch.uint8), scale.squeeze(-1).to(self.scale_dtype), None

    def _decode(self, codes, scales, zeros):
        return codes.view(self.fp8_dtype).float() * scales.float()[..., None]

    def _error_bound(self, w, scale):
        # Relative half-ulp of the mantissa, plus the absolute step of the subnormal range.
        tiny = torch.finfo(self.fp8_dtype).smallest_normal * 2.0**-self.mantissa_bits
        return w.abs() * 2.0 ** -(self.mantissa_bits + 1) * 1.01 + scale * tiny + 1e-7


_GROUPS = (PER_CHANNEL, 32, 64, 128, 256)
# fp32 scales: absmax / 57344 (e5m2) or / 448 (e4m3) of typical weights falls into fp16's subnormal range.
register_format(
    Float8(
        "fp8_e4m3",
        8,
        _GROUPS,
        PER_CHANNEL,
        "fp8 e4m3fn, fp32 scale per row or group",
        scale_dtype=torch.float32,
    )
)
register_format(Float8("fp8_e5m2", 8, _GROUPS, PER_CHANNEL, "fp8 e5m2, fp32 scale per row or group",
                       scale_dtype=torch.float32, fp8_dtype=torch.float8_e5m2, mantissa_bits=2))  # fmt: skip
