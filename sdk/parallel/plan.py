"""How a llama-style model splits over N ranks: attention heads, MLP columns and vocabulary rows per rank.

Attention: with N <= KV heads, each rank takes whole KV groups (a KV head with its query heads), as evenly as the
counts allow. With more ranks than KV heads, each rank takes a contiguous run of query heads and the KV heads they
read; a rank whose query heads do not map evenly onto its KV heads gets one copy of the KV head per query head
(replicated KV heads: more K/V work, the same arithmetic). SmolLM2-135M (9 query / 3 KV heads): N=2 gives 6 + 3
query heads (2 + 1 KV heads); N=4 gives 3 + 2 + 2 + 2 query heads over KV heads (0), (1), (1, 2), (2).

The row-split layers (o_proj over the heads, down_proj over the MLP columns) are cut along their input dimension K,
so a cut must fall on a quantization-group boundary of the stored weight (`k_align`): a group's scale belongs to
one rank. Uneven splits are allowed (the slowest rank sets the pace); an impossible one is a `TensorParallelError`
that names the largest N that works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from xpullm.parallel.errors import TensorParallelError

__all__ = ["ModelShape", "RankShard", "TPPlan", "plan_split"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes a split is planned over (read from a transformers config)."""

    n_heads: int
    n_kv: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the llama-style sizes from a transformers config."""
        heads = int(config.num_attention_heads)
        kv = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(heads, kv, head_dim, int(config.intermediate_size), int(config.vocab_size))


@dataclass(frozen=True)
class RankShard:
    """What one rank holds."""

    rank: int
    q_heads: tuple[int, int]  # global query heads [start, stop)
    kv_heads: tuple[int, ...]  # the global KV head behind each local KV head (a repeat = a replicated head)
    ffn: tuple[int, int]  # MLP intermediate columns [start, stop)
    vocab: tuple[int, int]  # vocabulary rows [start, stop) of the embedding and the LM head

    @property
    def n_heads(self) -> int:
        """Local query heads."""
        return self.q_heads[1] - self.q_heads[0]


@dataclass(frozen=True)
class TPPlan:
    """The split of one model over `world` ranks."""

    shape: ModelShape
    world: int
    k_align: int
    shards: tuple[RankShard, ...]

    @property
    def vocab_rows(self) -> int:
        """Rows of the largest vocabulary shard (every rank pads its logits to this before the all-gather)."""
        return max(s.vocab[1] - s.vocab[0] for s in self.shards)

    @property
    def even(self) -> bool:
        """Whether every rank holds the same number of heads and MLP columns (no rank waits on a bigger one)."""
        return len({(s.n_heads, len(s.kv_heads), s.ffn[1] - s.ffn[0]) for s in self.shards}) == 1


def _cuts(units: int, parts: int) -> list[int]:
    """Boundaries of `units` split into `parts` contiguous runs, sizes differing by at most one (larger first)."""
    base, extra = divmod(units, parts)
    cuts = [0]
    for i in range(parts):
        cuts.append(cuts[-1] + base + (i < extra))
    return cuts


def _max_world(shape: ModelShape, k_align: int) -> int:
    head_unit = math.lcm(shape.head_dim, k_align) // shape.head_dim
    return min(
        max(shape.n_kv, math.ceil(shape.n_heads / head_unit)),
        math.ceil(shape.intermediate / k_align),
        shape.vocab,
    )


def plan_split(shape: ModelShape, world: int, k_align: int = 1) -> TPPlan:
    """Split `shape` over `world` ranks with row-split cuts on multiples of `k_align` (the stored group size)."""
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise TensorParallelError(f"tensor_parallel must be an int >= 1, got {world!r}")
    best = _max_world(shape, k_align)
    if world > best:
        raise TensorParallelError(
            f"cannot split {shape.n_heads} attention heads ({shape.n_kv} KV heads, head_dim {shape.head_dim}) and "
            f"{shape.intermediate} MLP columns in quantization groups of {k_align} over {world} ranks; "
            f"choose tensor_parallel between 1 and {best}"
        )
    h, kv, d = shape.n_heads, shape.n_kv, shape.head_dim
    group = h // kv
    if world <= kv:
        kv_cuts = _cuts(kv, world)
        q_cuts = [c * group for c in kv_cuts]
    else:
        unit = math.lcm(d, k_align) // d
        q_cuts = [min(c * unit, h) for c in _cuts(math.ceil(h / unit), world)]
    ffn_cuts = [
        min(c * k_align, shape.intermediate) for c in _cuts(math.ceil(shape.intermediate / k_align), world)
    ]
    vocab_cuts = _cuts(shape.vocab, world)
    shards = []
    for r in range(world):
        q0, q1 = q_cuts[r], q_cuts[r + 1]
        if (q0 * d) % k_align or (q1 != h and (q1 * d) % k_align):
            raise TensorParallelError(
                f"rank {r}'s attention heads {q0}..{q1 - 1} cut o_proj inside a quantization group of {k_align} "
                f"(head_dim {d}); choose tensor_parallel between 1 and {min(kv, best)}, or a smaller group size"
            )
        shards.append(RankShard(r, (q0, q1), _local_kv(q0, q1, group), (ffn_cuts[r], ffn_cuts[r + 1]),
                                (vocab_cuts[r], vocab_cuts[r + 1])))  # fmt: skip
    return TPPlan(shape, world, k_align, tuple(shards))


def _local_kv(q0: int, q1: int, group: int) -> tuple[int, ...]:
    """The KV heads a run of query heads reads: each once if they serve equal runs of the local query heads,
    else one (replicated) copy per query head, so local GQA is always `local q head i -> local kv i // g`."""
    per_q = [q // group for q in range(q0, q1)]
    distinct = sorted(set(per_q))
    counts = {k: per_q.count(k) for k in distinct}
    if len(set(counts.values())) == 1:
        return tuple(distinct)
    return tuple(per_q)
