"""Cut one rank's shard out of each checkpoint tensor as it streams past, at the packed-weight level.

Column-split layers (q/k/v, gate/up, the LM head and the embedding) keep a subset of rows: rows are independent in
every format, so codes, scales and zeros are sliced as stored. Row-split layers (o_proj, down_proj) keep a run of
input columns K: for a format with several groups per row the run must start and end on a group boundary (the
plan guarantees it; a checkpoint whose layer has larger groups than planned is refused here, by name); for one
group per row (per-channel int8, pass-through floats) every column keeps its row's scale, so any cut is exact.
No value is re-rounded: a shard's weights are bit for bit the stored ones.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from xpullm.formats import QuantizedWeight, get_format
from xpullm.parallel.errors import TensorParallelError
from xpullm.parallel.plan import RankShard, TPPlan

__all__ = ["shard_config", "shard_tensors", "slice_columns", "slice_rows"]

Value = torch.Tensor | QuantizedWeight


def slice_rows(value: Value, rows: torch.Tensor | slice) -> Value:
    """The given output rows (a slice or an index tensor) of a weight or bias."""
    if isinstance(value, torch.Tensor):
        return value[rows].contiguous()
    pick = lambda t: None if t is None else t[rows].contiguous()  # noqa: E731
    data = pick(value.data)
    return QuantizedWeight(value.format, (data.shape[0], value.shape[1]), value.group_size, data,
                           pick(value.scales), pick(value.zeros))  # fmt: skip


def slice_columns(value: Value, start: int, stop: int, name: str = "weight") -> Value:
    """Input columns [start, stop) of a weight [N, K], cut on quantization-group boundaries."""
    if isinstance(value, torch.Tensor):
        return value[:, start:stop].contiguous()
    fmt = get_format(value.format)
    k = value.shape[1]
    whole_row = fmt.is_passthrough or value.scales is None or value.scales.shape[1] == 1
    if whole_row:
        width = stop - start
        if fmt.bits == 4 and (start % 2 or (stop != k and stop % 2)):
            raise TensorParallelError(f"{name}: a 4-bit row cannot be cut at column {start}..{stop} (odd)")
        if fmt.is_passthrough:
            data = value.data[:, start:stop].contiguous()
            return QuantizedWeight(value.format, (value.shape[0], width), width, data)
        unit = 2 if fmt.bits == 4 else 1
        end = value.data.shape[1] if stop == k else stop // unit
        data = value.data[:, start // unit : end].contiguous()
        return QuantizedWeight(value.format, (value.shape[0], width), data.shape[1] * unit, data,
                               value.scales, value.zeros)  # fmt: skip
    gs = value.group_size
    if start % gs or (stop != k and stop % gs):
        raise TensorParallelError(
            f"{name} is stored in groups of {gs} along its input, and this split cuts it at columns "
            f"{start}..{stop}: plan the split with k_align={gs} (the loader does when it can read the group size "
            "first), or use fewer ranks"
        )
    unit = 2 if fmt.bits == 4 else 1
    g0, g1 = start // gs, -(-stop // gs)
    data = value.data[:, g0 * gs // unit : g1 * gs // unit].contiguous()
    pick = lambda t: None if t is None else t[:, g0:g1].contiguous()  # noqa: E731
    return QuantizedWeight(value.format, (value.shape[0], stop - start), gs, data, pick(value.scales),
                           pick(value.zeros))  # fmt: skip


_LAYER = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.(\w+)\.(weight|bias)$")
_FUSED = ("qkv_proj", "gate_up_proj")


def _head_rows(heads: Iterable[int], d: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * d, (h + 1) * d) for h in heads])


def _shard_one(name: str, value: Value, shard: RankShard, plan: TPPlan) -> Value | None:
    """This rank's part of `name` (None: the rank holds nothing of it, e.g. a row-split layer's bias off rank 0)."""
    d = plan.shape.head_dim
    m = _LAYER.match(name)
    if m:
        _, proj, kind = m.groups()
        if proj in _FUSED:
            raise TensorParallelError(
                f"{name}: checkpoints with fused {proj} are not split yet; tensor parallelism takes the llama "
                "layout with separate q/k/v and gate/up projections"
            )
        if proj == "q_proj":
            return slice_rows(value, slice(shard.q_heads[0] * d, shard.q_heads[1] * d))
        if proj in ("k_proj", "v_proj"):
            return slice_rows(value, _head_rows(shard.kv_heads, d))
        if proj in ("gate_proj", "up_proj"):
            return slice_rows(value, slice(*shard.ffn))
        if proj in ("o_proj", "down_proj"):
            if kind == "bias":
                return value if shard.rank == 0 else None  # added once, before the all-reduce sums the parts
            cols = (shard.q_heads[0] * d, shard.q_heads[1] * d) if proj == "o_proj" else shard.ffn
            return slice_columns(value, *cols, name=name)
        return value  # q_norm / k_norm: one weight shared by every head
    if name in ("lm_head.weight", "model.embed_tokens.weight"):
        return slice_rows(value, slice(*shard.vocab))
    if name == "lm_head.bias":
        return slice_rows(value, slice(*shard.vocab))
    return value


def shard_tensors(
    tensors: Iterable[tuple[str, Value]], plan: TPPlan, rank: int
) -> Iterator[tuple[str, Value]]:
    """Rank `rank`'s shard of a checkpoint stream: each tensor is cut as it arrives, and the full one dropped."""
    shard = plan.shards[rank]
    for name, value in tensors:
        part = _shard_one(name, value, shard, plan)
        if part is not None:
            yield name, part


def shard_config(config: Any, plan: TPPlan, rank: int) -> Any:
    """A copy of `config` sized for rank `rank`: its heads, KV heads and MLP columns (vocabulary kept whole: the
    vocabulary-parallel head reports the full width)."""
    shard = plan.shards[rank]
    cfg = copy.deepcopy(config)
    cfg.num_attention_heads = shard.n_heads
    cfg.num_key_value_heads = len(shard.kv_heads)
    cfg.head_dim = plan.shape.head_dim
    cfg.intermediate_size = shard.ffn[1] - shard.ffn[0]
    return cfg
