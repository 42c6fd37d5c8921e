"""`ModelRunner`: one flattened forward over the tokens of many sequences, with K/V in paged block pools.

A step's N tokens are the concatenation of each scheduled sequence's tokens (a prefill chunk, or one decode
token). The layer stack is `step_ops.decoder_layers` (the one llama-style layer definition every decode path
shares) over x [1, N, hidden]: projections, norms and the MLP are row-independent, and attention goes through
`paged_attention` (selected in the op registry, `step_kernels.py`), whose per-token arithmetic does not depend on
the rest of the batch. So every sequence's tokens are bitwise the same whatever else runs in the step. The final
norm and the LM head run only on the rows whose next-token logits are needed.

The weights, fused projections and small ops are borrowed from a `StaticCacheDecoder` of the same model (nothing
is copied); the pools and the block-table tensor are allocated once, here. On GPUs, steps of few tokens replay a
captured graph of `forward_hidden` (`step_graphs.py`, attached as `graphs`); the rest run eagerly.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from xpullm.engine.decode import StaticCacheDecoder
from xpullm.engine.step_kernels import OpContext, select_op
from xpullm.engine.step_ops import decoder_layers

if TYPE_CHECKING:
    from xpullm.engine.step_graphs import StepGraphs

__all__ = ["ModelRunner", "kv_bytes_per_token"]


def kv_bytes_per_token(dec: StaticCacheDecoder) -> int:
    """Bytes of K plus V one token takes over all layers."""
    elem = torch.empty((), dtype=dec.dtype).element_size()
    return 2 * len(dec.layers) * dec.n_kv * dec.head_dim * elem


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed pool. On CPU through calloc (numpy), whose pages the OS maps only when first written: the budget
    costs RAM as blocks come into use, not at start (`torch.zeros` writes every page at once)."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    import numpy as np

    item = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros((*shape[:-1], shape[-1] * item), dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype)


class ModelRunner:
    """Runs flattened steps of a llama-style model over paged KV pools.

    Args:
        dec: the model's `StaticCacheDecoder` (weights, fused projections, norm/act ops, RoPE module).
        num_blocks: blocks per layer pool; block_size: token slots per block.
        max_seqs: rows of the block-table tensor; max_positions: longest sequence (RoPE table length).
    """

    def __init__(
        self, dec: StaticCacheDecoder, num_blocks: int, block_size: int, max_seqs: int, max_positions: int
    ) -> None:
        self.dec = dec
        self.block_size = block_size
        self.device = dec.device
        ctx = OpContext(dec.device.type, dec.dtype, dec.head_dim, dec.family.qk_norm)
        impl = select_op("paged_attention", ctx)
        self.attention_name = impl.name
        self._paged = impl.load(ctx)
        # The decoder's fixed-shape step ops: on GPUs the fused Triton norms (and int8 activations for <= 8 rows),
        # as in its graph-captured step; on CPU its eager ops.
        self._ops = dec.step_ops
        shape = (len(dec.layers), num_blocks, dec.n_kv, block_size, dec.head_dim)
        self.k_pool = _zeros(shape, dec.dtype, self.device)
        self.v_pool = _zeros(shape, dec.dtype, self.device)
        max_blocks = -(-max_positions // block_size)
        self.block_tables = torch.zeros((max_seqs, max_blocks), dtype=torch.int32, device=self.device)
        self.cos, self.sin = self._rope_tables(max_positions)
        self.vocab_size = int(dec.lm_head.out_features)
        self.graphs: StepGraphs | None = None  # graph-replayed small steps (GPUs); None: every step eager

    def _rope_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [n, head_dim] from the model's own rotary module; sin's first half negated (`rotate_qk`)."""
        dec = self.dec
        pos = torch.arange(n, device=self.device)[None]
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = dec._rotary(probe, pos)
        sin = sin[0].clone()
        sin[:, : dec.head_dim // 2] = -sin[:, : dec.head_dim // 2]
        return cos[0].to(dec.dtype).contiguous(), sin.to(dec.dtype).contiguous()

    def set_table(self, slot: int, blocks: Sequence[int]) -> None:
        """Write a sequence's block ids into its row of the block-table tensor (once, at admission)."""
        self.block_tables[slot, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: Sequence[int],
        positions: Sequence[int],
        seq_index: Sequence[int],
        logit_rows: Sequence[int],
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Next-token logits [len(logit_rows), V] for one flattened step (K/V of every token written to the pools).

        `layers` runs only those layers (a self-speculative draft, eager); their K/V slots are rewritten by the
        full step that verifies the draft.
        """
        if self.graphs is not None and layers is None:
            logits = self.graphs.run(input_ids, positions, seq_index, logit_rows)
            if logits is not None:
                return logits
        dev = self.device
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        rows = torch.tensor(seq_index, dtype=torch.long, device=dev)
        last = torch.tensor(logit_rows, dtype=torch.long, device=dev)
        return self.forward_hidden(self.dec.embed(ids[None]), pos, rows, last, layers)

    def forward_hidden(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        rows: torch.Tensor,
        last: torch.Tensor | None,
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Logits for embedded tokens x [1, N, hidden] at `pos` (int64 [N]) of the sequences in block-table rows
        `rows` (int64 [N]): the layer stack over the pools, then the final norm and LM head on the rows `last`
        (all N when None). Device tensors in, no host sync: this is what a step graph records."""
        dec = self.dec
        n = x.shape[1]
        h, eps, scale = dec.n_heads, dec.eps, dec.scale
        k_pool, v_pool, tables, cos, sin, paged = (
            self.k_pool, self.v_pool, self.block_tables, self.cos, self.sin, self._paged,
        )  # fmt: skip

        stack: object = dec
        index = range(len(dec.layers)) if layers is None else layers
        if layers is not None:
            stack = SimpleNamespace(layers=[dec.layers[i] for i in layers], eps=eps)

        def attention(j: int, layer: object, qkv: torch.Tensor) -> torch.Tensor:
            i = index[j]
            out = paged(
                qkv.view(n, -1), cos, sin, pos, rows, tables, k_pool[i], v_pool[i], h, scale,
                layer.q_norm, layer.k_norm, eps,
            )  # fmt: skip
            return out.view(1, n, -1)

        x, delta = decoder_layers(stack, x, self._ops, attention)  # type: ignore[arg-type]
        if last is not None:
            if last.numel() == 0:  # a step of prompt chunks none of which ends its prompt
                return x.new_empty((0, self.vocab_size))
            x, delta = x[0].index_select(0, last)[None], delta[0].index_select(0, last)[None]
        _, y = self._ops.add_norm(x, delta, dec.final_norm, eps, dec.lm_head)
        return self._ops.project(dec.lm_head, y, 1, x.shape[1])[0]
