"""CPU fast paths on PyTorch's own low-bit ops (no extension to build).

- int4 (`sym_int4`, `asym_int4`): `_weight_int4pack_mm_for_cpu`. It is fast only with bf16 activations, and its
  packed layout depends on the CPU's ISA, so weights are stored portable and repacked here at load.
  Its dequantisation is w = (q - 8) * scale + zero, so asym_int4's q * s + m becomes zero = m + 8 s.
- int8 (`sym_int8`, per-channel scales): `_weight_int8pack_mm`.
Other formats (nf4, fp4, fp8, grouped int8) have no CPU op in PyTorch and use the reference kernel.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels.packing import unpack_nibbles
from xpullm.kernels.registry import Kernel, register_kernel

_INT4_GROUPS = (32, 64, 128, 256)


def _probe_layout(n: int, k: int) -> torch.Tensor:
    """src[p] = flat source index (row * k + col) of nibble p of `_convert_weight_to_int4pack_for_cpu`'s output.

    The packed layout is ISA-specific and undocumented, so it is measured: pack each base-16 digit of the
    element indices as if it were the weight, and read the digits back from where they landed.
    """
    total = n * k
    index = torch.arange(total, dtype=torch.int64)
    src = torch.zeros(total, dtype=torch.int64)
    for digit in range(max(1, (total - 1).bit_length() + 3) // 4):
        plane = ((index >> (4 * digit)) & 15).reshape(n, k).to(torch.int32)
        nibbles = unpack_nibbles(torch.ops.aten._convert_weight_to_int4pack_for_cpu(plane, 1))
        src |= nibbles.reshape(-1).to(torch.int64) << (4 * digit)
    return src


@functools.lru_cache(maxsize=16)
def _block_layout(k: int) -> tuple[int, torch.Tensor]:
    """(rows per block B, src for one [B, k] block). Blocks are packed independently and identically."""
    probe_rows = 256
    src = _probe_layout(probe_rows, k).reshape(probe_rows, k)
    for rows in (16, 32, 64, 128, 256):
        blocks = src.reshape(probe_rows // rows, rows * k)
        offsets = torch.arange(probe_rows // rows)[:, None] * rows * k
        if torch.equal(blocks - offsets, blocks[:1].expand_as(blocks)):
            return rows, blocks[0].clone()
    raise RuntimeError("unrecognised int4 CPU packing layout")  # pragma: no cover - would need a new ISA path


@dataclass
class Int4State:
    packed: torch.Tensor  # ISA-specific layout from _convert_weight_to_int4pack_for_cpu
    scales_and_zeros: torch.Tensor  # bf16 [K/gs, N, 2]
    group_size: int
    in_features: int
    padded_in: int
    out_features: int
    has_zeros: bool

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned int4 codes [len(rows) or N, padded K] read back out of the packed layout."""
        block, src = _block_layout(self.padded_in)
        k = self.padded_in
        flat = self.packed.reshape(-1)
        if rows is None:
            rows = torch.arange(self.out_features)
        # Position of (row, col) inside its block's nibble stream, then the byte and the half of it.
        inverse = torch.empty_like(src)
        inverse[src] = torch.arange(src.numel())
        local = inverse.reshape(block, k)[rows % block]  # [R, k]
        pos = (rows // block)[:, None] * (block * k) + local
        byte = flat[pos // 2]
        return torch.where(pos % 2 == 1, byte >> 4, byte & 0x0F)

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the float weight (an embedding lookup on a tied, packed lm_head)."""
        codes = self.codes(rows).float().reshape(rows.numel(), -1, self.group_size)
        sz = self.scales_and_zeros[:, rows].float()  # [G, R, 2]
        scale, zero = sz[..., 0].T[..., None], sz[..., 1].T[..., None]
        w = (codes - 8.0) * scale + zero
        return w.reshape(rows.numel(), -1)[:, : self.in_features].to(dtype)


@register_kernel(formats=("sym_int4", "asym_int4"), device="cpu", priority=10)
class CpuInt4Kernel(Kernel):
    """int4 weights x bf16 activations through `_weight_int4pack_mm_for_cpu`."""

    name = "cpu_int4pack"

    def supports(self, qw: Any) -> bool:
        # The op packs rows in blocks of up to 64; whole blocks keep the layout readable back (save, lookups).
        return (
            qw.shape[0] % 64 == 0
            and qw.group_size in _INT4_GROUPS
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        )

    def prepare(self, qw: Any, device: torch.device) -> Int4State:
        codes = unpack_nibbles(qw.data).to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
        scale = qw.scales.float()
        zero = torch.zeros_like(scale) if qw.zeros is None else qw.zeros.float() + 8.0 * scale
        sz = torch.stack((scale, zero), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        n, k = qw.shape
        return Int4State(packed, sz, qw.group_size, k, codes.shape[1], n, qw.zeros is not None)

    def twin_activations(self, x: torch.Tensor, qw: Any) -> torch.Tensor:
        return x.to(torch.bfloat16).float()

    def export(self, state: Int4State) -> dict[str, Any]:
        """Portable codes, scales and zeros back out of the runtime state (for `save_low_bit`)."""
        # fp32 keeps the bf16 runtime scales exact, so export -> prepare reproduces this state bit for bit.
        scale = state.scales_and_zeros[..., 0].T.float().contiguous()
        zero = state.scales_and_zeros[..., 1].T.float() - 8.0 * scale if state.has_zeros else None
        return {"codes": state.codes(), "scales": scale, "zeros": zero}

    def matmul(self, x: torch.Tensor, state: Int4State) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if state.padded_in != state.in_features:
            x2 = F.pad(x2, (0, state.padded_in - state.in_features))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2, state.packed, state.group_size, state.scales_and_zeros
        )
        return y.reshape(*lead, state.out_features).to(x.dtype)


# `_weight_int8pack_mm` reads K in whole SIMD vectors without a tail loop: on AVX2 builds a width that is not a
# multiple of 8, on AVX-512 builds one not a multiple of 16, reads past the row and returns garbage (or inf) with no
# error. Rows are padded with zero columns to this multiple at load, so every K is safe on every ISA.
_INT8_K_MULTIPLE = 64


@dataclass
class Int8State:
    weight: torch.Tensor  # int8 [N, stored K padded to _INT8_K_MULTIPLE with zero columns]
    scales: torch.Tensor  # bf16 [N]
    in_features: int  # K of the layer
    stored_k: int  # K of the portable codes (already padded to the group size)


@register_kernel(formats=("sym_int8",), device="cpu", priority=10)
class CpuInt8Kernel(Kernel):
    """Per-channel int8 weights through `_weight_int8pack_mm` (grouped int8 falls back to the reference)."""

    name = "cpu_int8pack"

    def supports(self, qw: Any) -> bool:
        return qw.scales is not None and qw.scales.shape[1] == 1

    def prepare(self, qw: Any, device: torch.device) -> Int8State:
        stored = qw.data.shape[1]
        weight = F.pad(qw.data, (0, -stored % _INT8_K_MULTIPLE)).contiguous()
        return Int8State(weight, qw.scales[:, 0].to(torch.bfloat16).contiguous(), qw.shape[1], stored)

    def twin_activations(self, x: torch.Tensor, qw: Any) -> torch.Tensor:
        return x.to(torch.bfloat16).float()

    def export(self, state: Int8State) -> dict[str, Any]:
        codes = state.weight[:, : state.stored_k].contiguous()
        return {"codes": codes, "scales": state.scales.float()[:, None], "zeros": None}

    def matmul(self, x: torch.Tensor, state: Int8State) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if state.weight.shape[1] != state.in_features:
            x2 = F.pad(x2, (0, state.weight.shape[1] - state.in_features))
        y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), state.weight, state.scales)
        return y.reshape(*lead, state.weight.shape[0]).to(x.dtype)
