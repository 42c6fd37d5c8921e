"""The kernel registry: (format, device kind) -> the matmul implementation to run.

Kernels register themselves with a priority; `select_kernel` picks the highest-priority one whose `supports`
accepts the weight (shape limits differ per kernel). The reference kernel sits under every format at the
lowest priority, so a weight always has a path, and `kernel_table` tells which one it got.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

__all__ = [
    "Kernel",
    "candidates",
    "describe",
    "kernel_table",
    "register_kernel",
    "registered",
    "select_kernel",
]


class Kernel:
    """One matmul implementation. `prepare` runs once per weight at load; `matmul` on every forward."""

    name: ClassVar[str] = "kernel"

    def available(self) -> bool:
        """Whether this kernel can run on this machine at all (e.g. a native build succeeded)."""
        return True

    def supports(self, qw: Any) -> bool:
        """Whether this kernel can run the weight `qw` (a `QuantizedWeight`)."""
        return True

    def prepare(self, qw: Any, device: torch.device) -> Any:
        """Repack the portable weight into this kernel's runtime state on `device`."""
        raise NotImplementedError

    def matmul(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        """y[..., N] = x[..., K] @ W^T for the weight held in `state`."""
        raise NotImplementedError

    def takes_q8(self, state: Any) -> bool:
        """Whether `matmul_q8` runs this weight: int8 activations quantized by the kernel that produced them (the
        decode step's fused norm / SwiGLU), which saves a quantizer launch per projection. Default: no."""
        return False

    def matmul_q8(self, act: Any, state: Any) -> torch.Tensor:
        """y [M, N] for activation rows already quantized to int8 (only called when `takes_q8(state)`)."""
        raise NotImplementedError(f"kernel {self.name!r} takes no int8 activations; check takes_q8() first")

    def twin_activations(self, x: torch.Tensor, qw: Any) -> torch.Tensor:
        """x [M, K] as this kernel reads it, in fp32 (rounded to bf16, or to int8 blocks, ...). Times the format's
        exact dequantisation of `qw`, this is the reference twin the property tests hold the kernel to."""
        return x.float()

    def twin_weight(self, qw: Any) -> torch.Tensor:
        """The weight [N, K] this kernel multiplies by, in fp32: the format's exact dequantisation, unless the kernel
        holds the codes another way (e.g. nf4 levels in an int8 table); the twin's other half."""
        return qw.dequantize(torch.float32)

    def export(self, state: Any) -> Any:
        """The portable weight back out of `state`: a `QuantizedWeight`, or a dict with `codes` (unpacked),
        `scales` and `zeros` tensors that the caller packs into one. Used by `save_low_bit`."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Entry:
    kernel: Kernel
    formats: frozenset[str]
    device: str
    priority: int


_ENTRIES: list[_Entry] = []
# GPU backends pull in Triton; they load on the first selection for their device, never at import time.
_LAZY_BACKENDS: dict[str, tuple[str, ...]] = {
    "cuda": ("xpullm.kernels.triton",),
    "xpu": ("xpullm.kernels.triton",),
}
_loaded_backends: set[str] = set()


def register_kernel(formats: Iterable[str], device: str, priority: int = 0) -> Callable[[type], type]:
    """Class decorator: instantiate the kernel and register it for `formats` on `device` (`cpu`/`cuda`/`xpu`/`*`)."""

    def wrap(cls: type) -> type:
        _ENTRIES.append(_Entry(cls(), frozenset(formats), device, priority))
        _ENTRIES.sort(key=lambda e: -e.priority)
        return cls

    return wrap


def _load_backends(device_type: str) -> None:
    if device_type in _loaded_backends:
        return
    _loaded_backends.add(device_type)
    for module in _LAZY_BACKENDS.get(device_type, ()):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # Only a missing optional backend (e.g. no Triton installed) is tolerated; it then falls back.
            if exc.name not in (module, "triton") and not module.startswith(str(exc.name)):
                raise


def registered(device_type: str) -> list[tuple[str, frozenset[str], int]]:
    """(kernel name, formats, priority) for every kernel usable on `device_type`, best first."""
    _load_backends(device_type)
    return [(e.kernel.name, e.formats, e.priority) for e in _ENTRIES if e.device in (device_type, "*")]


def candidates(fmt: str, device: torch.device | str) -> list[Kernel]:
    """Every kernel registered for `fmt` that can run on `device` here, best first (each may still decline a shape)."""
    device_type = torch.device(device).type
    _load_backends(device_type)
    return [
        e.kernel
        for e in _ENTRIES
        if e.device in (device_type, "*") and fmt in e.formats and e.kernel.available()
    ]


def select_kernel(qw: Any, device: torch.device | str) -> Kernel:
    """The best registered kernel for weight `qw` on `device`."""
    device_type = torch.device(device).type
    _load_backends(device_type)
    for entry in _ENTRIES:
        if entry.device in (device_type, "*") and qw.format in entry.formats and entry.kernel.supports(qw):
            return entry.kernel
    raise LookupError(f"no kernel registered for format {qw.format!r} on {device_type!r}")


def kernel_table(device: torch.device | str = "cpu") -> dict[str, str]:
    """format -> name of the best kernel registered for it on `device` (shape limits may still fall back)."""
    device_type = torch.device(device).type
    _load_backends(device_type)
    table = {}
    for fmt in sorted({f for e in _ENTRIES for f in e.formats}):
        for entry in _ENTRIES:
            if entry.device in (device_type, "*") and fmt in entry.formats and entry.kernel.available():
                table[fmt] = entry.kernel.name
                break
    return table


def describe(module: torch.nn.Module) -> list[tuple[str, str, str]]:
    """(layer name, format, kernel name) for every `LowBitLinear` inside `module`."""
    rows = []
    for name, sub in module.named_modules():
        kernel = getattr(sub, "kernel", None)
        fmt = getattr(sub, "format_name", None)
        if isinstance(kernel, Kernel) and fmt is not None:
            rows.append((name, fmt, kernel.name))
    return rows
