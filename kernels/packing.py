"""Pure tensor helpers for the portable layout shared by formats and kernels."""

from __future__ import annotations

import torch

__all__ = ["pack_nibbles", "unpack_nibbles"]


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 (K even) -> uint8 [N, K/2]; even k in the low nibble, odd k in the high one."""
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_nibbles`: uint8 [N, K/2] -> uint8 [N, K]."""
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)
