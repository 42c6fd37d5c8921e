"""A lower-bit copy of the served model, run as its own drafter (IPEX-LLM's self-speculative decoding).

IPEX-LLM drafts with the same model quantized to INT4 and verifies with the model in its serving precision (bf16,
fp8, int8). The copy shares everything but the projections and the LM head (embedding, norms, RoPE, fused step
ops). By default (`SHARED_KV`) it has no KV pools of its own: it attends over the model's own K/V of every
verified token (`ModelRunner.sharing_pools`), so it never catches up on a prompt or on tokens it did not draft, and
its drafts' K/V land where the verifying step writes next. Otherwise it gets pools of its own (8-bit, say: half a
bf16 pool's bytes) over the target's block tables - a sequence's positions land in the same blocks of both, so no
second block allocator exists - and feeds them its own K/V of every token.

`low_bit_copy` builds the copy's decoder, `draft_runner` its runner (graph-replayed steps where the target has them).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from xpullm.engine.fusion import fused
from xpullm.formats import get_format
from xpullm.linear import LowBitLinear

if TYPE_CHECKING:
    from xpullm.engine.runner import ModelRunner

__all__ = ["SHARED_KV", "draft_runner", "low_bit_copy", "weight_bytes"]

_PROJECTIONS = ("qkv", "o_proj", "gate_up", "down")


def _quantized(module: nn.Module, fmt: str, group_size: int | None, device: torch.device) -> nn.Module:
    """`module` (a linear, a low-bit linear or a concatenation of them) re-quantized to `fmt`."""
    if isinstance(module, LowBitLinear):
        if module.format_name == fmt and (group_size is None or module.group_size == group_size):
            return module  # already the draft's format: shared, not copied
        weight = module.dequantize(torch.float32, device)
        qw = get_format(fmt).quantize(weight, group_size)
        return LowBitLinear(qw, module.bias, device)
    if isinstance(module, nn.Linear):
        return LowBitLinear.from_linear(module, fmt, group_size, device=device)
    parts = getattr(module, "mods", None)
    if parts is not None:  # fusion's concatenation of modules it could not fuse into one
        return fused([_quantized(m, fmt, group_size, device) for m in parts])
    raise TypeError(
        f"a {fmt} draft cannot quantize a {type(module).__name__} projection: the draft model needs nn.Linear or "
        "LowBitLinear projections (use method='self_speculative' to draft with skipped layers instead)"
    )


def low_bit_copy(
    dec: Any, fmt: str = "sym_int4", group_size: int | None = None, head_format: str | None = None
) -> Any:
    """A shallow copy of the `StaticCacheDecoder` `dec` whose projections are in `fmt` and whose LM head is in
    `head_format` (None: `fmt`)."""
    get_format(fmt)  # an unknown format fails here, with the formats' own message
    draft = copy.copy(dec)
    q = lambda m: _quantized(m, fmt, group_size, dec.device)  # noqa: E731
    draft.layers = [
        dataclasses.replace(layer, **{n: q(getattr(layer, n)) for n in _PROJECTIONS}) for layer in dec.layers
    ]
    head = fmt if head_format is None else head_format
    draft.lm_head = _quantized(dec.lm_head, head, group_size if head == fmt else None, dec.device)
    return draft


def weight_bytes(dec: Any) -> int:
    """Bytes of the projections and LM head one decode step streams (what a memory-bound step costs)."""
    modules = [getattr(layer, n) for layer in dec.layers for n in _PROJECTIONS] + [dec.lm_head]
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


SHARED_KV = "shared"
"""`draft_kv_cache_dtype` of a copy that attends over the model's own pools (no pools of its own, no catch-up)."""


def draft_runner(runner: ModelRunner, dec: Any, kv_cache_dtype: str) -> ModelRunner:
    """A `ModelRunner` for the draft decoder `dec`: over `runner`'s own pools (`SHARED_KV`: it reads the K/V the
    model wrote for every verified token and writes its drafts' K/V where the verifying step writes next), or with
    pools of its own shaped like `runner`'s (in `kv_cache_dtype`) reading `runner`'s block tables; graph-replayed
    steps for the same buckets where `runner` has them."""
    from xpullm.engine.runner import ModelRunner
    from xpullm.engine.step_graphs import attach_step_graphs

    if not hasattr(runner, "k_pool"):
        raise TypeError(
            f"a low-bit draft needs the engine's own ModelRunner, got {type(runner).__name__} (tensor-parallel "
            "engines do not draft with a model copy yet: use method='prompt_lookup')"
        )
    if kv_cache_dtype == SHARED_KV:
        draft = runner.sharing_pools(dec)
    else:
        _, blocks, _, block_size, _ = runner.k_pool.shape
        rows, width = runner.block_tables.shape
        draft = ModelRunner(
            dec, blocks, block_size, rows, runner.cos.shape[0], kv_cache_dtype, runner.windows, runner.sinks,
            width,
        )  # fmt: skip
        draft.block_tables = runner.block_tables  # the same blocks per position: one allocator for both
    graphs = runner.graphs
    if graphs is not None:
        attach_step_graphs(draft, graphs.buckets, graphs.scratch_block, graphs.scratch_row, graphs.backend)
    return draft
