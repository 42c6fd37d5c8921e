"""`LowBitLinear`: an `nn.Linear` whose weight lives in a low-bit format and runs through a registered kernel."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from xpullm.formats import QuantizedWeight, get_format, pack_nibbles
from xpullm.kernels import Kernel, select_kernel

__all__ = ["LowBitEmbedding", "LowBitLinear", "fuse_linears", "state_nbytes"]


def state_nbytes(state: Any) -> int:
    """Bytes of every tensor inside a kernel state (a tensor, a dataclass of tensors or a QuantizedWeight)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, QuantizedWeight):
        return state.nbytes
    if dataclasses.is_dataclass(state):
        return sum(state_nbytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    return 0


def _has_export(kernel: Kernel) -> bool:
    return type(kernel).export is not Kernel.export


class LowBitLinear(nn.Module):
    """y = x @ W^T + b with W stored as a `QuantizedWeight` and multiplied by the best kernel for the device.

    The kernel repacks the portable weight into its runtime layout once, here; the portable copy is dropped
    when the kernel can export it back (so memory stays at one low-bit copy) and kept otherwise.
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.format_name = qweight.format
        self.group_size = qweight.group_size
        self.device = torch.device(device)
        self.kernel = select_kernel(qweight, self.device)
        self.state = self.kernel.prepare(qweight, self.device)
        # Kernels that cannot export their runtime layout keep the portable copy for save_low_bit, in host
        # memory: accelerator memory holds one low-bit copy only.
        self._portable = None if _has_export(self.kernel) else qweight.to("cpu")
        # Registered even when absent, so a checkpoint's bias can be assigned after the weight arrives.
        self.register_parameter(
            "bias", None if bias is None else nn.Parameter(bias.detach().to(self.device), requires_grad=False)
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, low_bit: str, group_size: int | None = None,
                    device: torch.device | str | None = None) -> LowBitLinear:  # fmt: skip
        """Quantize an `nn.Linear` (its weight is read once and can be freed afterwards)."""
        device = torch.device(linear.weight.device if device is None else device)
        weight = linear.weight.detach()
        # Quantize where the weight already is when that is the target (GPU quantization is fast), else on CPU.
        qweight = get_format(low_bit).quantize(
            weight if weight.device == device else weight.cpu(), group_size
        )
        return cls(qweight.to(device), linear.bias, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.kernel.matmul(x, self.state)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def export(self) -> QuantizedWeight:
        """The weight in the portable layout, as `save_low_bit` writes it."""
        if self._portable is not None:
            return self._portable
        out = self.kernel.export(self.state)
        if isinstance(out, QuantizedWeight):
            return out
        fmt = get_format(self.format_name)
        codes = out["codes"].cpu()
        data = pack_nibbles(codes) if fmt.bits == 4 else codes
        return QuantizedWeight(self.format_name, (self.out_features, self.in_features), self.group_size,
                               data.contiguous(), out["scales"], out["zeros"])  # fmt: skip

    @property
    def nbytes(self) -> int:
        """Bytes this layer holds for its weight (runtime state, any host-side portable copy) and bias."""
        extra = self._portable.nbytes if self._portable is not None else 0
        bias = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return state_nbytes(self.state) + extra + bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"format={self.format_name}, group_size={self.group_size}, kernel={self.kernel.name}")  # fmt: skip


def fuse_linears(layers: list[LowBitLinear]) -> LowBitLinear:
    """One LowBitLinear computing `cat([layer(x) for layer in layers], -1)` (fused q/k/v or gate/up).

    Rows are independent in every format, so the portable weights concatenate along N without re-rounding.
    All layers must share format, group size, input width and device.
    """
    first = layers[0]
    keys = {(m.format_name, m.group_size, m.in_features, m.device) for m in layers}
    if len(keys) != 1:
        raise ValueError(
            f"cannot fuse layers with different (format, group, in_features, device): {sorted(map(str, keys))}"
        )
    parts = [m.export() for m in layers]
    cat = lambda ts: None if ts[0] is None else torch.cat(ts, 0)  # noqa: E731
    fused = QuantizedWeight(first.format_name, (sum(p.shape[0] for p in parts), first.in_features), first.group_size,
                            cat([p.data for p in parts]), cat([p.scales for p in parts]), cat([p.zeros for p in parts]))  # fmt: skip
    biases = [m.bias for m in layers]
    if any(b is not None for b in biases):
        biases = [
            torch.zeros(m.out_features, device=m.device) if b is None else b.detach()
            for m, b in zip(layers, biases, strict=True)
        ]
        bias = torch.cat([b.float() for b in biases]).to(next(b for b in biases if b is not None).dtype)
    else:
        bias = None
    return LowBitLinear(fused, bias, first.device)


class LowBitEmbedding(nn.Module):
    """An embedding table that shares its low-bit weight with a tied `LowBitLinear` head (one copy in memory).

    Lookups decode only the requested rows.
    """

    def __init__(self, head: LowBitLinear, padding_idx: int | None = None) -> None:
        super().__init__()
        self.head = [head]  # a list, so the head is not registered twice as a submodule
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.padding_idx = padding_idx
        self.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        flat = ids.reshape(-1)
        if hasattr(head.state, "dequantize_rows"):
            rows = head.state.dequantize_rows(flat.cpu(), self.dtype).to(ids.device)
        else:
            rows = head.export().to(ids.device)
            rows = _decode_rows(rows, flat, self.dtype)
        return rows.reshape(*ids.shape, self.embedding_dim)

    @property
    def weight(self) -> torch.Tensor:
        """The full decoded table (what code that reads `embedding.weight` expects); costs a full decode."""
        return self.head[0].export().dequantize(self.dtype)


def _decode_rows(qw: QuantizedWeight, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Decode only `rows` of a portable weight."""
    part = QuantizedWeight(qw.format, (rows.numel(), qw.shape[1]), qw.group_size, qw.data[rows],
                           None if qw.scales is None else qw.scales[rows],
                           None if qw.zeros is None else qw.zeros[rows])  # fmt: skip
    return part.dequantize(dtype)
