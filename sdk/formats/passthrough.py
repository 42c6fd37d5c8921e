"""Pass-through formats: the weight is kept as a plain float tensor of that dtype (no codes, no scales)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from xpullm.formats.base import PER_CHANNEL, QuantFormat, QuantizedWeight, register_format


@dataclass(frozen=True)
class PassThrough(QuantFormat):
    """Stores `weight.to(dtype)` as is."""

    dtype: torch.dtype = torch.bfloat16
    is_passthrough: ClassVar[bool] = True

    def quantize(self, weight: torch.Tensor, group_size: int | None = None) -> QuantizedWeight:
        if weight.dim() != 2:
            raise ValueError(f"{self.name}: expected a 2-D weight, got {tuple(weight.shape)}")
        self.resolve_group_size(group_size, weight.shape[1])
        data = weight.detach().to(self.dtype).contiguous()
        return QuantizedWeight(self.name, tuple(weight.shape), weight.shape[1], data)

    def dequantize(self, qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return qw.data.to(dtype)

    def error_bound(self, weight: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
        info = torch.finfo(self.dtype)  # half an ulp, plus the subnormal step for tiny values
        return weight.abs() * info.eps + info.smallest_normal * info.eps


for _name, _dtype, _bits in (
    ("bf16", torch.bfloat16, 16),
    ("fp16", torch.float16, 16),
    ("fp32", torch.float32, 32),
):
    register_format(
        PassThrough(
            _name, _bits, (PER_CHANNEL,), PER_CHANNEL, f"plain {_name} (no quantization)", dtype=_dtype
        )
    )
