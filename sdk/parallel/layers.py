"""The sharded layers' collectives, as modules wrapped around a rank's local projection.

Column-split projections (q/k/v, gate/up) need no wrapper: each rank computes its own heads / MLP columns. The
row-split output projections sum their partial products over the ranks (`RowParallelLinear`, one all-reduce), the
LM head concatenates each rank's vocabulary slice (`VocabParallelHead`, one all-gather) and the embedding looks up
the ids its rank holds and sums the (exact, zero-padded) rows (`VocabParallelEmbedding`). With these in place the
engine's decoder, paged runner and CUDA-graph step run unchanged on every rank: the collectives are module calls,
so a captured step captures them too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xpullm.parallel.group import RankGroup
from xpullm.parallel.plan import TPPlan

__all__ = ["RowParallelLinear", "VocabParallelEmbedding", "VocabParallelHead", "parallelize"]


class RowParallelLinear(nn.Module):
    """y = all_reduce(local(x)): `local` holds this rank's input columns (o_proj, down_proj)."""

    def __init__(self, local: nn.Module, group: RankGroup) -> None:
        super().__init__()
        self.local = local
        self.group = group
        self.in_features = getattr(local, "in_features", None)
        self.out_features = getattr(local, "out_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(self.local(x).contiguous())


class VocabParallelHead(nn.Module):
    """Logits over the whole vocabulary: each rank's rows [start, stop), padded to `rows`, all-gathered."""

    def __init__(self, local: nn.Module, group: RankGroup, plan: TPPlan) -> None:
        super().__init__()
        self.local = local
        self.group = group
        self.rows = plan.vocab_rows
        self.in_features = getattr(local, "in_features", None)
        self.out_features = plan.shape.vocab
        sizes = [s.vocab[1] - s.vocab[0] for s in plan.shards]
        self._pad = self.rows - sizes[group.rank]
        self.even = len(set(sizes)) == 1
        # Columns of the gathered [.., world * rows] tensor that hold real vocabulary entries, in order.
        keep = torch.cat([torch.arange(r * self.rows, r * self.rows + n) for r, n in enumerate(sizes)])
        self.register_buffer("keep", keep.to(group.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        if self._pad:
            y = F.pad(y, (0, self._pad))
        y = self.group.all_gather_last(y)
        return y if self.even else y.index_select(-1, self.keep)


class VocabParallelEmbedding(nn.Module):
    """Embedding rows for ids in [start, stop) from the local table, zeros elsewhere, summed over the ranks."""

    def __init__(self, local: nn.Module, group: RankGroup, start: int, stop: int, dim: int) -> None:
        super().__init__()
        self.local = local
        self.group = group
        self.start, self.stop = start, stop
        self.embedding_dim = dim
        self.num_embeddings = stop - start
        self.padding_idx = getattr(local, "padding_idx", None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mine = (ids >= self.start) & (ids < self.stop)
        local = torch.where(mine, ids - self.start, torch.zeros_like(ids))
        rows = self.local(local)
        rows = rows * mine.unsqueeze(-1).to(rows.dtype)  # exact: x * 1 and x * 0; the sum adds zeros only
        return self.group.all_reduce(rows.contiguous())


def parallelize(model: nn.Module, plan: TPPlan, group: RankGroup) -> nn.Module:
    """Wrap a loaded shard's row-split projections, LM head and embedding in their collectives (in place)."""
    shard = plan.shards[group.rank]
    inner = model.model
    for layer in inner.layers:
        layer.self_attn.o_proj = RowParallelLinear(layer.self_attn.o_proj, group)
        layer.mlp.down_proj = RowParallelLinear(layer.mlp.down_proj, group)
    model.lm_head = VocabParallelHead(model.lm_head, group, plan)
    dim = int(model.config.hidden_size)
    inner.embed_tokens = VocabParallelEmbedding(inner.embed_tokens, group, *shard.vocab, dim)
    model.xpullm_tensor_parallel = (group.rank, plan)  # type: ignore[assignment]
    return model
