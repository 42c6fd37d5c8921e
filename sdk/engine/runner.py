"""`ModelRunner`: one flattened forward over the tokens of many sequences, with K/V in paged block pools.

A step's N tokens are the concatenation of each scheduled sequence's tokens (a prefill chunk, or one decode
token). The layer stack is `step_ops.decoder_layers` (the one llama-style layer definition every decode path
shares) over x [1, N, hidden]: projections, norms and the MLP are row-independent, and attention goes through
`paged_attention` (selected in the op registry, `step_kernels.py`), whose per-token arithmetic does not depend on
the rest of the batch. Its arguments are the step's `PagedBatch` (positions, sequence rows, block tables, RoPE
tables: built and checked once per step) and the layer's `PagedLayer` (pools, heads, norms, KV dtype, window:
built and checked once, here). So every sequence's tokens are bitwise the same whatever else runs in the step. The final
norm and the LM head run only on the rows whose next-token logits are needed. On CPU, where every projection runs
a native tiled kernel, the same stack runs as two native calls per layer around attention (`cpu_layers.py`,
chosen in the op registry as `layer_stack`; bit for bit the same result).

The weights, fused projections and small ops are borrowed from a `StaticCacheDecoder` of the same model (nothing
is copied); the pools and the block-table tensor are allocated once, here. On GPUs, steps of few tokens replay a
captured graph of `forward_hidden` (`step_graphs.py`, attached as `graphs`); the rest run eagerly.

KV pools hold the activation dtype, bfloat16 (`kv_cache_dtype` "bf16"), or 8-bit codes ("int8" / "fp8_e4m3") with
one fp32 scale per (block, kv head, slot): the paged kernel quantizes each k / v head vector as it writes it and
reads the codes directly (fp8 in a fixed rotated basis, `paged.kv_rotation`: nothing per model to calibrate). Per layer a sliding window (the model's own, `layer_windows`, or streaming's) and sink tokens are
passed to the kernel; in streaming mode positions grow past the context, and the RoPE tables grow with them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from xpullm.engine.decode import StaticCacheDecoder
from xpullm.engine.host_copy import to_device
from xpullm.engine.step_kernels import OpContext, select_op
from xpullm.engine.step_ops import decoder_layers
from xpullm.kernels import paged

if TYPE_CHECKING:
    from xpullm.engine.step_graphs import StepGraphs

__all__ = ["ModelRunner", "kv_bytes_per_token", "layer_windows"]


def kv_bytes_per_token(dec: StaticCacheDecoder, kv_cache_dtype: str = "auto") -> int:
    """Bytes of K plus V one token takes over all layers (8-bit pools: D codes + a 4-byte scale per head)."""
    return paged.kv_bytes_per_token(len(dec.layers), dec.n_kv, dec.head_dim, kv_cache_dtype, dec.dtype)


def _op_context(dec: StaticCacheDecoder) -> OpContext:
    """What the op registry selects `dec`'s step kernels by."""
    return OpContext(dec.device.type, dec.dtype, dec.head_dim, dec.family.qk_norm)


def _layer_stack(dec: StaticCacheDecoder) -> Any:
    """The op registry's whole-layer stack over `dec`'s weights (CPU: two native calls per layer), or None."""
    ctx = _op_context(dec)
    build = select_op("layer_stack", ctx).load(ctx)
    return build(dec) if build is not None else None


def layer_windows(config: Any, n_layers: int) -> list[int]:
    """Per layer, the sliding window the model's config declares (0: full attention).

    `layer_types` (transformers' per-layer list: "sliding_attention" / "full_attention", Gemma-3 / Qwen-style
    alternation) wins; else Mistral-style `sliding_window` on every layer unless `use_sliding_window` is False."""
    window = int(getattr(config, "sliding_window", None) or 0)
    types = getattr(config, "layer_types", None)
    if types is not None and window:
        return [window if t == "sliding_attention" else 0 for t in types][:n_layers]
    if not window or getattr(config, "use_sliding_window", True) is False:
        return [0] * n_layers
    return [window] * n_layers


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
        kv_cache_dtype: "auto" (the activation dtype), "bf16", "int8" or "fp8_e4m3" pools.
        windows: per layer sliding window (0: full); sinks: tokens every windowed layer keeps attending.
        table_width: block-table columns per sequence (default: max_positions' blocks; streaming: its ring).
    """

    def __init__(
        self,
        dec: StaticCacheDecoder,
        num_blocks: int,
        block_size: int,
        max_seqs: int,
        max_positions: int,
        kv_cache_dtype: str = "auto",
        windows: Sequence[int] | None = None,
        sinks: int = 0,
        table_width: int | None = None,
    ) -> None:
        if kv_cache_dtype not in paged.KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype={kv_cache_dtype!r} is not known: choose one of {sorted(paged.KV_CACHE_DTYPES)}"
            )
        self.dec = dec
        self.block_size = block_size
        self.device = dec.device
        ctx = _op_context(dec)
        impl = select_op("paged_attention", ctx)
        self.attention_name = impl.name
        self._paged = impl.load(ctx)
        # The decoder's fixed-shape step ops: on GPUs the fused Triton norms (and int8 activations for one-row steps),
        # as in its graph-captured step; on CPU its eager ops.
        self._ops = dec.step_ops
        # On CPU (fp32, native tiled weights) the layer stack runs as two native calls per layer around attention.
        self._stack = _layer_stack(dec)
        self.kv_cache_dtype = kv_cache_dtype
        self.windows = list(windows) if windows is not None else [0] * len(dec.layers)
        self.sinks = sinks
        shape = (len(dec.layers), num_blocks, dec.n_kv, block_size, dec.head_dim)
        pool_dtype = paged.KV_CACHE_DTYPES[kv_cache_dtype] or dec.dtype
        self.k_pool = _zeros(shape, pool_dtype, self.device)
        self.v_pool = _zeros(shape, pool_dtype, self.device)
        self.k_scale = self.v_scale = None  # 8-bit pools: one fp32 scale per (block, kv head, slot)
        if kv_cache_dtype in paged.KV_CODE_DTYPES:
            self.k_scale = _zeros(shape[:-1], torch.float32, self.device)
            self.v_scale = _zeros(shape[:-1], torch.float32, self.device)
        self.kv_bytes_per_token = kv_bytes_per_token(dec, kv_cache_dtype)
        max_blocks = table_width or -(-max_positions // block_size)
        self.block_tables = torch.zeros((max_seqs, max_blocks), dtype=torch.int32, device=self.device)
        self.cos, self.sin = self._rope_tables(max_positions)
        self.vocab_size = int(dec.lm_head.out_features)
        self.graphs: StepGraphs | None = None  # graph-replayed small steps (GPUs); None: every step eager
        # Each layer's paged-attention arguments: fixed for the runner's life, so built and checked once.
        self.paged_layers = [self._paged_layer(i) for i in range(len(dec.layers))]

    def sharing_pools(self, dec: StaticCacheDecoder) -> ModelRunner:
        """A runner for `dec`, a decoder of this model's shape (its low-bit copy), over this runner's KV pools,
        block tables and RoPE tables: its steps read the K/V this runner wrote and write into the same slots. Its
        own weights, step ops and layer stack; no step graphs yet (`attach_step_graphs`)."""
        mine, theirs = self.dec, dec
        if (len(theirs.layers), theirs.n_kv, theirs.head_dim) != (len(mine.layers), mine.n_kv, mine.head_dim):
            raise ValueError(
                f"a runner sharing these pools needs {len(mine.layers)} layers of {mine.n_kv} KV heads of "
                f"{mine.head_dim}, got {len(theirs.layers)} x {theirs.n_kv} x {theirs.head_dim}"
            )
        twin = copy.copy(self)
        twin.dec = dec
        twin._ops = dec.step_ops
        twin._stack = _layer_stack(dec)
        twin.vocab_size = int(dec.lm_head.out_features)
        twin.graphs = None
        return twin

    def _paged_layer(self, i: int) -> paged.PagedLayer:
        """Layer i's pools, heads, norms, KV dtype, window and sinks as the paged kernel takes them."""
        dec, codes = self.dec, self.kv_cache_dtype in paged.KV_CODE_DTYPES
        layer = dec.layers[i]
        return paged.PagedLayer(
            self.k_pool[i], self.v_pool[i], dec.n_heads, dec.scale, layer.q_norm, layer.k_norm, dec.eps,
            self.kv_cache_dtype, self.k_scale[i] if codes else None, self.v_scale[i] if codes else None,
            self.windows[i], self.sinks if self.windows[i] else 0,
        )  # fmt: skip

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

    def _grow_rope(self, top: int) -> None:
        """Streaming runs past the context: RoPE tables to at least top + 1 positions (doubling, so rarely)."""
        n = self.cos.shape[0]
        while n <= top:
            n *= 2
        self.cos, self.sin = self._rope_tables(n)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: Sequence[int] | torch.Tensor,
        positions: Sequence[int],
        seq_index: Sequence[int],
        logit_rows: Sequence[int],
        layers: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Next-token logits [len(logit_rows), V] for one flattened step (K/V of every token written to the pools).

        `input_ids` may be a device tensor (the tokens of a step the host has not read yet: `EngineCore`'s
        launch-ahead); the step's inputs are then queued behind the device's work, never waited for.
        `layers` runs only those layers (a self-speculative draft, eager); their K/V slots are rewritten by the
        full step that verifies the draft.
        """
        if max(positions) >= self.cos.shape[0]:  # streaming past the context: longer RoPE tables
            self._grow_rope(max(positions))
            self.graphs = None  # captured steps read the old tables: run eagerly from here on
        if self.graphs is not None and layers is None:
            logits = self.graphs.run(input_ids, positions, seq_index, logit_rows)
            if logits is not None:
                return logits
        dev = self.device
        if isinstance(input_ids, torch.Tensor):
            x = self.dec.embed.on_device(input_ids[None])
        else:
            x = self.dec.embed(torch.tensor(input_ids, dtype=torch.long, device=dev)[None])
        pos, rows, last = (to_device(v, dev) for v in (positions, seq_index, logit_rows))
        return self.forward_hidden(x, pos, rows, last, layers)

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
        # The step's metadata, checked once here for every layer's call.
        batch = paged.PagedBatch(pos, rows, self.block_tables, self.cos, self.sin)
        kernel, specs = self._paged, self.paged_layers
        stack: object = dec
        index = range(len(dec.layers)) if layers is None else layers
        if layers is not None:
            stack = SimpleNamespace(layers=[dec.layers[i] for i in layers], eps=dec.eps)

        def attention(j: int, layer: object, qkv: torch.Tensor) -> torch.Tensor:
            return kernel(qkv.view(n, -1), batch, specs[index[j]]).view(1, n, -1)

        if self._stack is not None and self._stack.valid():
            x, delta = self._stack.run(x, attention, index)
        else:
            x, delta = decoder_layers(stack, x, self._ops, attention)  # type: ignore[arg-type]
        if last is not None:
            if last.numel() == 0:  # a step of prompt chunks none of which ends its prompt
                return x.new_empty((0, self.vocab_size))
            x, delta = x[0].index_select(0, last)[None], delta[0].index_select(0, last)[None]
        _, y = self._ops.add_norm(x, delta, dec.final_norm, dec.eps, dec.lm_head)
        return self._ops.project(dec.lm_head, y, 1, x.shape[1])[0]
