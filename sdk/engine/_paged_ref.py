"""TEMPORARY PyTorch reference of `xpullm.kernels.paged.paged_attention` (the `paged` branch owns the real one).

Same signature and semantics as the agreed kernel seam (docs/engine.md): phase 1 rotates every token's k (RoPE at
its position) and writes k and v into its slot of the paged pools; phase 2 computes, for every token, softmax(q . k_j
* scale) v_j over j = 0..positions[n] of its own sequence. Each token is attended on its own, over tensors whose
shapes depend only on its position (keys padded to whole blocks, the tail masked), so its result is bitwise the same
whatever the other tokens of the step or the chunking of its prompt. Only `step_kernels.py` imports this module:
when `xpullm.kernels.paged` exists it is registered above this fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reference_paged_attention"]


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x * cos + rotate_half(x) * sin, with rotate_half as a roll against sin's negated first half. Separate mul and
    # add (no fused multiply-add) round the same way in vector and scalar loops, so no element depends on the shape.
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


@torch.inference_mode()
def reference_paged_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    seq_index: torch.Tensor,
    block_tables: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    n_heads: int,
    scale: float,
    q_norm: torch.Tensor | None = None,
    k_norm: torch.Tensor | None = None,
    eps: float = 0.0,
) -> torch.Tensor:
    """qkv [N, (H + 2 KV) D] -> attention output [N, H D]; writes each token's k and v into the pools."""
    n = qkv.shape[0]
    _, kv, block, d = k_pool.shape
    h = n_heads
    group = h // kv
    heads = qkv.view(n, h + 2 * kv, d)
    q, k, v = heads[:, :h], heads[:, h : h + kv], heads[:, h + kv :]
    if q_norm is not None and k_norm is not None:
        q = F.rms_norm(q, (d,), q_norm, eps)
        k = F.rms_norm(k, (d,), k_norm, eps)
    c, s = cos[positions][:, None], sin[positions][:, None]
    q, k = _rope(q, c, s), _rope(k, c, s)
    # Phase 1: every token's k and v into its slot (block table row of its sequence, block pos // B, offset pos % B).
    blocks = block_tables[seq_index, positions // block].long()
    offsets = positions % block
    k_pool[blocks, :, offsets] = k.to(k_pool.dtype)
    v_pool[blocks, :, offsets] = v.to(v_pool.dtype)
    # Phase 2: one token at a time over its own sequence's keys.
    out = torch.empty((n, kv, group, d), dtype=qkv.dtype, device=qkv.device)
    qg = q.reshape(n, kv, group, d)
    table_rows = block_tables[seq_index].long()
    for i, p in enumerate(positions.tolist()):
        nb = p // block + 1
        ids = table_rows[i, :nb]
        keys = k_pool[ids].permute(1, 0, 2, 3).reshape(kv, nb * block, d)  # [KV, nb*B, D]
        values = v_pool[ids].permute(1, 0, 2, 3).reshape(kv, nb * block, d)
        scores = torch.bmm(qg[i], keys.transpose(1, 2)) * scale  # [KV, G, nb*B]
        if p + 1 < nb * block:
            scores[:, :, p + 1 :] = float("-inf")
        out[i] = torch.bmm(scores.softmax(-1), values)
    return out.view(n, h * d)
