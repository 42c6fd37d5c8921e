"""`LowBitLinear`: an `nn.Linear` whose weight lives in a low-bit format and runs through a registered kernel."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
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


# Buffer-name prefixes. `q_` buffers hold the kernel's runtime layout (persistent: `state_dict()` carries them);
# `portable_` buffers hold the host-side portable copy a kernel without `export` needs (not persistent: the
# runtime layout already says everything a same-machine `load_state_dict` needs).
_STATE_PREFIX, _PORTABLE_PREFIX = "q_", "portable_"


def _state_tensors(state: Any) -> dict[str, torch.Tensor | None]:
    """The tensor fields of a kernel state (a tensor, or a dataclass such as `QuantizedWeight`), by field name."""
    if isinstance(state, torch.Tensor):
        return {"weight": state}
    if dataclasses.is_dataclass(state):
        return {
            f.name: getattr(state, f.name)
            for f in dataclasses.fields(state)
            if f.init and (isinstance(getattr(state, f.name), torch.Tensor) or getattr(state, f.name) is None)
        }
    raise TypeError(
        f"kernel state of type {type(state).__name__} is neither a tensor nor a dataclass of tensors"
    )


def _fields(buffers: dict[str, torch.Tensor | None], prefix: str) -> dict[str, torch.Tensor | None]:
    return {n[len(prefix) :]: t for n, t in buffers.items() if n.startswith(prefix)}


def _rebuild(layout: Any, tensors: dict[str, torch.Tensor | None]) -> Any:
    """`layout` with its tensor fields replaced (dataclasses recompute derived fields in `__post_init__`)."""
    if isinstance(layout, torch.Tensor):
        return tensors["weight"]
    return dataclasses.replace(layout, **tensors)


# Elements of W decoded at a time in the training path: ~8 MB of fp32 on CPU, so the dense copy of a big layer
# (a 50k-row vocabulary head) never exists at once and training memory stays near the low-bit size. GPUs take
# blocks 16x larger (64 MB of bf16): fewer, larger launches; still a fraction of an 8B layer's dense copy.
_CHUNK_ELEMENTS = 1 << 21
_ACCELERATOR_CHUNK_ELEMENTS = 1 << 25


def _row_chunks(layer: LowBitLinear) -> list[tuple[int, int]]:
    budget = _CHUNK_ELEMENTS if layer.device.type == "cpu" else _ACCELERATOR_CHUNK_ELEMENTS
    step = max(1, budget // max(1, layer.in_features))
    return [(i, min(i + step, layer.out_features)) for i in range(0, layer.out_features, step)]


class _LowBitMatmul(torch.autograd.Function):
    """y = x @ W^T and dx = dy @ W with W dequantized on the fly, a block of rows at a time. W is frozen.

    Both directions multiply dequantized blocks with the float GEMM (cuBLAS, oneDNN): at training batch sizes
    that beats the GEMV-shaped low-bit kernels on every device, and it matches the dense twin exactly.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: LowBitLinear) -> torch.Tensor:
        ctx.layer = layer
        ctx.x_dtype = x.dtype
        return _training_matmul(x, layer)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer = ctx.layer
        dtype = _compute_dtype(grad.dtype)
        g = grad.to(dtype)
        dx = None
        for a, b in _row_chunks(layer):
            part = g[..., a:b] @ layer.dequantize_rows(a, b, dtype, grad.device)
            dx = part if dx is None else dx.add_(part)
        return dx.to(ctx.x_dtype), None


def _training_matmul(x: torch.Tensor, layer: LowBitLinear) -> torch.Tensor:
    """x @ W^T as training computes it: from dequantized blocks of W, in x's precision (fp32 for other dtypes)."""
    dtype = _compute_dtype(x.dtype)
    xc = x.to(dtype)
    parts = [F.linear(xc, layer.dequantize_rows(a, b, dtype, x.device)) for a, b in _row_chunks(layer)]
    return torch.cat(parts, dim=-1).to(x.dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision activations multiply in their own dtype; everything else in fp32."""
    return dtype if dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16) else torch.float32


class LowBitLinear(nn.Module):
    """y = x @ W^T + b with W stored as a `QuantizedWeight` and multiplied by the best kernel for the device.

    The kernel repacks the portable weight into its runtime layout once, here; the portable copy is dropped
    when the kernel can export it back (so memory stays at one low-bit copy) and kept otherwise.

    The runtime layout's tensors are registered buffers (`q_<field>`), so `state_dict()`, `.to(device)`,
    `named_buffers()` and memory accounting see the weight; `self.state` is the kernel's view of the same
    tensors. Moving to another device kind re-selects the kernel; dtype casts (`model.half()`) leave the codes
    and scales in the dtypes their kernel reads. The layer is differentiable with respect to its input
    (`_LowBitMatmul`); the weight itself never takes a gradient.

    Train/eval mode picks the function, as it does for dropout: a new layer starts in eval mode (the fast
    inference kernels, which may round activations, e.g. to int8 blocks on CPU); in training mode
    (`model.train()`) every call computes the training path's result, with or without autograd, so a reentrant
    activation checkpoint's no-grad first pass and its recomputation agree. An eval-mode call whose input needs
    a gradient also takes the training path (the kernels have no backward).
    """

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None,
                 device: torch.device | str = "cpu") -> None:  # fmt: skip
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.format_name = qweight.format
        self.group_size = qweight.group_size
        # Registered even when absent, so a checkpoint's bias can be assigned after the weight arrives.
        self.register_parameter(
            "bias", None if bias is None else nn.Parameter(bias.detach().to(device), requires_grad=False)
        )
        self._place(qweight, torch.device(device))
        self.train(False)  # an inference layer until a model's .train() asks for the training path

    def _place(self, qweight: QuantizedWeight, device: torch.device) -> None:
        """Select the kernel for `device`, repack `qweight` for it and register the result as buffers."""
        self.device = device
        self.kernel = select_kernel(qweight, device)
        state = self.kernel.prepare(qweight.to(device), device)
        # Kernels that cannot export their runtime layout keep the portable copy for save_low_bit, in host
        # memory: accelerator memory holds one low-bit copy only.
        portable = None if _has_export(self.kernel) else qweight.to("cpu")
        for name in [n for n in self._buffers if n.startswith((_STATE_PREFIX, _PORTABLE_PREFIX))]:
            del self._buffers[name]
        for name, tensor in _state_tensors(state).items():
            self.register_buffer(_STATE_PREFIX + name, tensor)
        self._portable_layout = portable
        if portable is not None:
            for name, tensor in _state_tensors(portable).items():
                self.register_buffer(_PORTABLE_PREFIX + name, tensor, persistent=False)
        self._layout = state
        self._sync_state()

    def _sync_state(self) -> None:
        """Point `self.state` (what kernels read) at the current buffers."""
        self.state = _rebuild(self._layout, _fields(self._buffers, _STATE_PREFIX))
        self._portable = (
            None
            if self._portable_layout is None
            else _rebuild(self._portable_layout, _fields(self._buffers, _PORTABLE_PREFIX))
        )

    def _apply(self, fn: Any, recurse: bool = True) -> LowBitLinear:
        # Only the bias follows `fn` as usual. The low-bit buffers follow device moves (re-selecting the kernel
        # when the device changes) and ignore dtype casts, which would corrupt codes and scales.
        target = fn(torch.empty(0, device=self.device)).device
        held = {
            n: self._buffers.pop(n)
            for n in list(self._buffers)
            if n.startswith((_STATE_PREFIX, _PORTABLE_PREFIX))
        }
        try:
            super()._apply(fn, recurse)
        finally:
            self._buffers.update(held)
        if target != self.device:
            self._place(self.export(), target)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._sync_state()  # `assign=True` replaces the buffer tensors

    @classmethod
    def from_linear(cls, linear: nn.Linear, low_bit: str, group_size: int | None = None,
                    device: torch.device | str | None = None) -> LowBitLinear:  # fmt: skip
        """Quantize an `nn.Linear` (its weight is read once and can be freed afterwards)."""
        device = torch.device(linear.weight.device if device is None else device)
        weight = linear.weight.detach()
        # Quantize where the weight already is when that is the target (GPU quantization is fast), else on CPU.
        # ("cuda" names the current GPU: a weight on cuda:0 is already there.)
        there = weight.device.type == device.type and device.index in (None, weight.device.index)
        qweight = get_format(low_bit).quantize(weight if there else weight.cpu(), group_size)
        return cls(qweight.to(device), linear.bias, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            y = _LowBitMatmul.apply(x, self)
        elif self.training:
            y = _training_matmul(x, self)
        else:
            y = self.kernel.matmul(x, self.state)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def dequantize_rows(self, start: int, stop: int, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> torch.Tensor:  # fmt: skip
        """Rows `start:stop` of the float weight, decoded from the runtime layout where the kernel can read rows
        back, else from the portable layout."""
        state = self.state
        if isinstance(state, torch.Tensor):
            w = state[start:stop].to(dtype)
        elif hasattr(state, "dequantize_rows"):
            w = state.dequantize_rows(torch.arange(start, stop, device=_index_device(state)), dtype)
        else:
            # The stored rows' low-bit bytes go to `device` and decode there: a GPU layer whose kernel keeps its
            # portable copy in host memory decodes on the GPU, and moves 0.5-1 byte per weight, not 2-4.
            qw = state if isinstance(state, QuantizedWeight) else self.export()
            rows = _row_range(qw, start, stop)
            return rows.to(qw.data.device if device is None else device).dequantize(dtype)
        return w if device is None else w.to(device)

    def dequantize(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The whole float weight [N, K] (what merging an adapter starts from)."""
        return self.dequantize_rows(0, self.out_features, dtype, device)

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
    def qweight(self) -> torch.Tensor:
        """The largest tensor of the runtime layout (the codes). Quantized-layer tooling reads a layer's
        `qweight` to learn where it lives (PEFT places adapters on its device); it is not a float weight."""
        tensors = [t for n, t in self._buffers.items() if n.startswith(_STATE_PREFIX) and t is not None]
        return max(tensors, key=lambda t: t.numel() * t.element_size())

    @property
    def nbytes(self) -> int:
        """Bytes this layer holds for its weight (runtime state, any host-side portable copy) and bias."""
        return sum(
            t.numel() * t.element_size() for t in (*self._buffers.values(), self.bias) if t is not None
        )

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


def _index_device(state: Any) -> torch.device:
    tensors = [t for t in _state_tensors(state).values() if t is not None]
    return tensors[0].device if tensors else torch.device("cpu")


def _row_range(qw: QuantizedWeight, start: int, stop: int) -> QuantizedWeight:
    """Rows start:stop of a portable weight (views: rows are independent in every format)."""
    pick = lambda t: None if t is None else t[start:stop]  # noqa: E731
    return QuantizedWeight(qw.format, (stop - start, qw.shape[1]), qw.group_size, qw.data[start:stop],
                           pick(qw.scales), pick(qw.zeros))  # fmt: skip


def _decode_rows(qw: QuantizedWeight, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Decode only `rows` of a portable weight."""
    part = QuantizedWeight(qw.format, (rows.numel(), qw.shape[1]), qw.group_size, qw.data[rows],
                           None if qw.scales is None else qw.scales[rows],
                           None if qw.zeros is None else qw.zeros[rows])  # fmt: skip
    return part.dequantize(dtype)
