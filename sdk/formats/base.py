"""The format protocol, the portable `QuantizedWeight` container, nibble packing and the format registry.

A format turns a float weight [N, K] into codes + per-group scales (and zeros) and back. Groups run along K
(the input dimension), so one group's scale multiplies a contiguous run of a row - the shape every matmul
kernel wants. The portable layout written here is what goes into safetensors files; kernels repack it into
whatever their device likes at load time (see `xpullm.kernels`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from xpullm.errors import InvalidGroupSize, UnsupportedFormat
from xpullm.kernels.packing import pack_nibbles, unpack_nibbles

__all__ = [
    "FORMATS",
    "QuantFormat",
    "QuantizedWeight",
    "get_format",
    "list_formats",
    "pack_nibbles",
    "register_format",
    "unpack_nibbles",
]

PER_CHANNEL = 0  # group_size value meaning "one group spanning the whole row"


@dataclass
class QuantizedWeight:
    """One linear weight in the portable layout (see docs/formats.md for the byte-level description)."""

    format: str
    shape: tuple[int, int]  # (N = out_features, K = in_features) before padding
    group_size: int  # resolved: per-channel formats store the padded row length here
    data: torch.Tensor
    scales: torch.Tensor | None = None
    zeros: torch.Tensor | None = None

    @property
    def padded_k(self) -> int:
        """K rounded up to a multiple of the group size."""
        return self.data.shape[1] * 2 if get_format(self.format).bits == 4 else self.data.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by codes, scales and zeros."""
        return sum(
            t.numel() * t.element_size() for t in (self.data, self.scales, self.zeros) if t is not None
        )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight [N, K] this container encodes."""
        return get_format(self.format).dequantize(self, dtype)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        """A copy with every tensor on `device`."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(self.format, self.shape, self.group_size, move(self.data),
                               move(self.scales), move(self.zeros))  # fmt: skip

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors to store, by role (`qdata`, `scales`, `zeros`)."""
        out = {"qdata": self.data}
        if self.scales is not None:
            out["scales"] = self.scales
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def meta(self) -> dict[str, object]:
        """JSON-able description that, with `tensors()`, rebuilds the container."""
        return {"format": self.format, "shape": list(self.shape), "group_size": self.group_size}

    @classmethod
    def from_parts(cls, meta: dict, tensors: dict[str, torch.Tensor]) -> QuantizedWeight:
        """Rebuild from `meta()` + `tensors()` as read back from disk."""
        return cls(str(meta["format"]), (int(meta["shape"][0]), int(meta["shape"][1])), int(meta["group_size"]),
                   tensors["qdata"], tensors.get("scales"), tensors.get("zeros"))  # fmt: skip


@dataclass(frozen=True)
class QuantFormat:
    """A weight format: how floats become codes and back. Subclasses fill in `_encode` / `_decode`."""

    name: str
    bits: int  # bits per stored code (16/32 for pass-through)
    group_sizes: tuple[int, ...]  # accepted group sizes; PER_CHANNEL (0) = one group per row
    default_group_size: int
    description: str
    scale_dtype: torch.dtype = field(default=torch.float16)
    is_passthrough: ClassVar[bool] = False

    # -- public API -------------------------------------------------------------------------------------
    def resolve_group_size(self, group_size: int | None, k: int) -> int:
        """Validate `group_size` (None = the default) and return the stored group length for rows of K."""
        gs = self.default_group_size if group_size is None else group_size
        if isinstance(gs, bool) or not isinstance(gs, int) or gs not in self.group_sizes:
            raise InvalidGroupSize(self.name, group_size, self.group_sizes)
        if gs == PER_CHANNEL:
            return k + (k % 2 if self.bits == 4 else 0)
        return gs

    def quantize(self, weight: torch.Tensor, group_size: int | None = None) -> QuantizedWeight:
        """Encode a float weight [N, K] into the portable layout."""
        if weight.dim() != 2:
            raise ValueError(
                f"{self.name}: expected a 2-D weight [out_features, in_features], got {tuple(weight.shape)}"
            )
        n, k = weight.shape
        gs = self.resolve_group_size(group_size, k)
        kp = math.ceil(k / gs) * gs
        w = weight.detach().to(torch.float32)
        if kp != k:
            w = torch.nn.functional.pad(w, (0, kp - k))
        codes, scales, zeros = self._encode(w.reshape(n, kp // gs, gs))
        codes = codes.reshape(n, kp)
        data = pack_nibbles(codes) if self.bits == 4 else codes
        return QuantizedWeight(self.name, (n, k), gs, data.contiguous(), scales, zeros)

    def dequantize(self, qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Decode to a float tensor [N, K] of `dtype` (the reference every kernel is tested against)."""
        n, k = qw.shape
        codes = unpack_nibbles(qw.data) if self.bits == 4 else qw.data
        groups = codes.reshape(n, -1, qw.group_size)
        w = self._decode(groups, qw.scales, qw.zeros).reshape(n, -1)[:, :k]
        return w.to(dtype)

    def error_bound(self, weight: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
        """Per-element bound on |w - dequantize(quantize(w))| that this format guarantees (see docs/formats.md)."""
        n, k = weight.shape
        w = torch.nn.functional.pad(weight.float(), (0, qw.group_size * qw.scales.shape[1] - k))
        g = w.reshape(n, -1, qw.group_size)
        return self._error_bound(g, qw.scales.float()[..., None]).expand_as(g).reshape(n, -1)[:, :k]

    # -- subclass hooks ---------------------------------------------------------------------------------
    def _encode(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """w [N, G, gs] float32 -> (codes [N, G, gs], scales [N, G], zeros [N, G] or None)."""
        raise NotImplementedError

    def _decode(
        self, codes: torch.Tensor, scales: torch.Tensor | None, zeros: torch.Tensor | None
    ) -> torch.Tensor:
        """codes [N, G, gs] -> float32 [N, G, gs]."""
        raise NotImplementedError

    def _error_bound(self, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


FORMATS: dict[str, QuantFormat] = {}


def register_format(fmt: QuantFormat) -> QuantFormat:
    """Add a format instance to the registry (names are unique)."""
    if fmt.name in FORMATS:
        raise ValueError(f"format {fmt.name!r} is already registered")
    FORMATS[fmt.name] = fmt
    return fmt


def list_formats() -> list[str]:
    """Registered format names, low-bit ones first."""
    return sorted(FORMATS, key=lambda n: (FORMATS[n].is_passthrough, FORMATS[n].bits, n))


def get_format(name: str | QuantFormat) -> QuantFormat:
    """Look a format up by name, raising `UnsupportedFormat` with the valid choices."""
    if isinstance(name, QuantFormat):
        return name
    if isinstance(name, str) and name.lower() in FORMATS:
        return FORMATS[name.lower()]
    raise UnsupportedFormat(name, list_formats())
