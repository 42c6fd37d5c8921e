"""TEMPORARY PyTorch reference of `xpullm.kernels.paged.paged_attention` (the `paged` branch owns the real one).

Same signature (`fn(qkv, PagedBatch, PagedLayer)`) and semantics as the kernel seam (docs/engine.md), for float
pools without a window: phase 1 rotates every token's k (RoPE at its position) and writes k and v into its slot of
the paged pools; phase 2 computes, for every token, softmax(q . k_j * scale) v_j over j = 0..positions[n] of its own
sequence. Each token is attended on its own, over tensors whose
shapes depend only on its position (keys padded to a bucket of blocks, the tail masked), so its result is bitwise the
same whatever the other tokens of the step or the chunking of its prompt. Only `step_kernels.py` imports this module:
when `xpullm.kernels.paged` exists it is registered above this fallback.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from xpullm.kernels.paged import PagedBatch, PagedLayer

__all__ = ["reference_paged_attention"]

_BUCKET = 8  # keys are padded to a multiple of this many blocks: fewer distinct shapes, so fewer, larger ops
_SHARED_MIN = 4  # a sequence with this many tokens in one bucket (a prompt chunk) gathers its keys once
_MAX_GATHER = 1 << 22  # gathered key elements per batched matmul (16 MiB of fp32): long prompts go in slices


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x * cos + rotate_half(x) * sin, with rotate_half as a roll against sin's negated first half. Separate mul and
    # add (no fused multiply-add) round the same way in vector and scalar loops, so no element depends on the shape.
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


class _Slice(NamedTuple):
    idx: torch.Tensor | None  # token rows (None: all tokens, in order)
    ids: (
        torch.Tensor
    )  # int64 [T, nb] block ids of each token's sequence, or [nb] when all T share one sequence
    masked: torch.Tensor  # bool [T, 1, 1, nb * block]: key columns past the token's position


class _Plan(NamedTuple):
    cos: torch.Tensor
    sin: torch.Tensor
    blocks: torch.Tensor
    offsets: torch.Tensor
    slices: list[_Slice]
    block: int  # the block size it was planned for


# The step's index work is the same for every layer: computed once per step (every layer gets the step's one
# `PagedBatch`) and kept here, keyed by that batch object.
_LAST: tuple[PagedBatch, _Plan] | None = None


def _plan(batch: PagedBatch, block: int, kv: int, d: int) -> _Plan:
    global _LAST
    last = _LAST
    if last is not None and last[0] is batch and last[1].block == block:
        return last[1]
    cos, sin, positions, seq_index, block_tables = (
        batch.cos, batch.sin, batch.positions, batch.seq_index, batch.block_tables,
    )  # fmt: skip
    n, width, dev = positions.shape[0], block_tables.shape[1], positions.device
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(positions.tolist()):
        groups.setdefault(min(width, (p // block // _BUCKET + 1) * _BUCKET), []).append(i)
    seqs = seq_index.tolist()
    slices = []
    for nb, members in groups.items():
        cols = torch.arange(nb * block, device=dev)
        rows = lambda part: torch.tensor(part, device=dev)  # noqa: E731
        # A prompt chunk's tokens share their sequence's keys (gathered once); the rest gather their own.
        by_seq: dict[int, list[int]] = {}
        for i in members:
            by_seq.setdefault(seqs[i], []).append(i)
        singles = []
        for s, part in by_seq.items():
            if len(part) < _SHARED_MIN:
                singles.extend(part)
                continue
            pos = positions[rows(part)]
            masked = (cols[None] > pos[:, None])[:, None, None]
            slices.append(_Slice(rows(part), block_tables[s, :nb].long(), masked))
        step = max(1, _MAX_GATHER // (kv * nb * block * d))
        for start in range(0, len(singles), step):
            part = singles[start : start + step]
            idx = None if len(part) == n else rows(part)
            pos = positions if idx is None else positions[idx]
            seq = seq_index if idx is None else seq_index[idx]
            masked = (cols[None] > pos[:, None])[:, None, None]
            slices.append(_Slice(idx, block_tables[seq, :nb].long(), masked))
    plan = _Plan(
        cos[positions][:, None], sin[positions][:, None],
        block_tables[seq_index, positions // block].long(), positions % block, slices, block,
    )  # fmt: skip
    _LAST = (batch, plan)
    return plan


def _shared_keys(
    q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor, masked: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of T tokens of one sequence over its keys, gathered once: per kv head one batched matmul whose
    batch is the tokens and whose keys are one tensor seen T times (stride 0), so nothing is copied per token.
    Each token's matrices have the shapes and values they have in the per-token path above: same result."""
    t, kv, _, d = q.shape
    nb, _, block, _ = k_blocks.shape
    keys = k_blocks.transpose(0, 1).reshape(kv, nb * block, d)
    values = v_blocks.transpose(0, 1).reshape(kv, nb * block, d)
    out = torch.empty_like(q)
    for h in range(kv):
        scores = torch.bmm(q[:, h], keys[h].t().expand(t, d, nb * block)) * scale  # [T, G, L]
        probs = scores.masked_fill(masked[:, 0], float("-inf")).softmax(-1)
        out[:, h] = torch.bmm(probs, values[h].expand(t, nb * block, d))
    return out


@torch.inference_mode()
def reference_paged_attention(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """qkv [N, (H + 2 KV) D] -> attention output [N, H D]; writes each token's k and v into the layer's pools."""
    if layer.codes is not None or layer.window or layer.kv_cache_dtype == "bf16":
        raise ValueError(
            f"the engine's temporary reference runs float pools of the activation dtype without a window; got "
            f"kv_cache_dtype={layer.kv_cache_dtype!r}, window={layer.window} (use xpullm.kernels.paged)"
        )
    n = qkv.shape[0]
    k_pool, v_pool, scale = layer.k_pool, layer.v_pool, layer.scale
    kv, block, d, h = layer.kv, layer.block_size, layer.d, layer.n_heads
    group = h // kv
    heads = qkv.view(n, h + 2 * kv, d)
    q, k, v = heads[:, :h], heads[:, h : h + kv], heads[:, h + kv :]
    if layer.q_norm is not None and layer.k_norm is not None:
        q = F.rms_norm(q, (d,), layer.q_norm, layer.eps)
        k = F.rms_norm(k, (d,), layer.k_norm, layer.eps)
    plan = _plan(batch, block, kv, d)
    q, k = _rope(q, plan.cos, plan.sin), _rope(k, plan.cos, plan.sin)
    # Phase 1: every token's k and v into its slot (block table row of its sequence, block pos // B, offset pos % B).
    k_pool[plan.blocks, :, plan.offsets] = k.to(k_pool.dtype)
    v_pool[plan.blocks, :, plan.offsets] = v.to(v_pool.dtype)
    # Phase 2: tokens grouped by key-length bucket; each token's keys are padded to its bucket (a function of its
    # own position only, the tail masked), so a token sees the same shapes in any batch: its row of each batched
    # matmul and softmax is computed the same way whatever else is in the group.
    qg = q.reshape(n, kv, group, d)
    out = torch.empty((n, kv, group, d), dtype=qkv.dtype, device=qkv.device)
    for sl in plan.slices:
        nb = sl.ids.shape[-1]
        if sl.ids.dim() == 1:
            result = _shared_keys(qg[sl.idx], k_pool[sl.ids], v_pool[sl.ids], sl.masked, scale)
        else:
            t = sl.ids.shape[0]
            keys = k_pool[sl.ids].transpose(1, 2).reshape(t, kv, nb * block, d)
            values = v_pool[sl.ids].transpose(1, 2).reshape(t, kv, nb * block, d)
            qs = qg if sl.idx is None else qg[sl.idx]
            scores = torch.matmul(qs, keys.transpose(2, 3)) * scale  # [T, KV, G, L]
            result = torch.matmul(scores.masked_fill(sl.masked, float("-inf")).softmax(-1), values)
        if sl.idx is None:
            out = result
        else:
            out[sl.idx] = result
    return out.reshape(n, h * d)
