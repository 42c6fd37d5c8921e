"""Forward passes for generation: our own static-KV-cache decoder for llama-style families, and a fallback.

Both decoders expose the same three calls, so the generation loop in `llm.py` does not care which one runs:
`start(input_ids, pad, max_len) -> logits` (prefill, one pass over the left-padded prompt batch) and
`step(token_ids) -> logits` (one new token per row), plus `capacity` (the longest sequence the cache holds).

The static decoder treats every projection as an opaque module (after loading they are `LowBitLinear` running
low-bit kernels); it only fuses plain `nn.Linear` siblings (q/k/v, gate/up) into one GEMM because at batch 1
each extra op costs more in dispatch than it saves. Families register themselves in `FAMILIES`; a model whose
`config.model_type` is not registered decodes through `HFDecoder` (transformers' own forward + DynamicCache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from xpullm.engine.fusion import fused as _fused
from xpullm.engine.fusion import register_fuser
from xpullm.engine.hf_decoder import HFDecoder
from xpullm.engine.step_kernels import OpContext, gpu_decode_ops, select_op, swiglu
from xpullm.engine.step_ops import FusedStepOps, StepOps, decoder_layers, rotate_qk, static_step

__all__ = [
    "FAMILIES",
    "Decoder",
    "Family",
    "HFDecoder",
    "StaticCacheDecoder",
    "build_decoder",
    "register_family",
    "register_fuser",
    "swiglu",
    "windowed",
]


class Decoder(Protocol):
    """What the generation loop needs from a forward-pass implementation."""

    capacity: int

    def start(self, input_ids: torch.Tensor, pad: torch.Tensor, max_len: int) -> torch.Tensor:
        """Prefill left-padded `input_ids` [B, T] (`pad[b]` pad tokens on the left); return last logits [B, V]."""
        ...

    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Append one token per row [B]; return next-token logits [B, V]."""
        ...


@dataclass(frozen=True)
class Family:
    """Where a llama-style family keeps its pieces; everything else (RMSNorm, RoPE, SwiGLU, GQA) is shared."""

    name: str
    qkv: tuple[str, ...] = ("q_proj", "k_proj", "v_proj")
    """Attention input projections, in q, k, v output order (one name when the checkpoint already fuses them)."""
    gate_up: tuple[str, ...] = ("gate_proj", "up_proj")
    """MLP input projections, gate first (one name when already fused, as in Phi-3)."""
    qk_norm: bool = False
    """Qwen3 normalises each head of q and k (RMSNorm over head_dim) before RoPE."""


FAMILIES: dict[str, Family] = {}


def register_family(*model_types: str) -> Callable[[Family], Family]:
    """Register a `Family` for the given `config.model_type` values."""

    def add(family: Family) -> Family:
        for mt in model_types:
            FAMILIES[mt] = family
        return family

    return add


register_family("llama", "mistral", "qwen2")(Family("llama"))
register_family("qwen3")(Family("qwen3", qk_norm=True))
register_family("phi3")(Family("phi3", qkv=("qkv_proj",), gate_up=("gate_up_proj",)))


class _EmbedRows:
    """Embedding lookup with a row cache for decode steps.

    A low-bit (tied) embedding decodes rows from the packed head on every lookup, which costs more than a whole
    layer at batch 1; generated text reuses few distinct tokens, so caching decoded rows removes that cost.
    """

    _MAX_ROWS = 8192

    def __init__(self, embed: nn.Module, dtype: torch.dtype) -> None:
        self.embed = embed
        self.dtype = dtype
        self.rows: dict[int, torch.Tensor] = {}

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if isinstance(self.embed, nn.Embedding) or ids.numel() > 16:
            return self.on_device(ids)
        flat = ids.reshape(-1).tolist()
        missing = [i for i in dict.fromkeys(flat) if i not in self.rows]
        if missing:
            if len(self.rows) + len(missing) > self._MAX_ROWS:
                self.rows.clear()
            fresh = self.embed(torch.tensor(missing, device=ids.device)).to(self.dtype)
            for i, row in zip(missing, fresh, strict=True):
                self.rows[i] = row
        return torch.stack([self.rows[i] for i in flat]).view(*ids.shape, -1)

    def on_device(self, ids: torch.Tensor) -> torch.Tensor:
        """The lookup without the row cache, whose keys would need `ids` on the host (a wait for the device)."""
        return self.embed(ids).to(self.dtype)


# --- the static-cache decoder -------------------------------------------------------------------------------


@dataclass
class _Layer:
    attn_norm: torch.Tensor
    qkv: nn.Module
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o_proj: nn.Module
    mlp_norm: torch.Tensor
    gate_up: nn.Module
    down: nn.Module


def _norm_weight(module: nn.Module) -> torch.Tensor:
    return module.weight.detach()


class StaticCacheDecoder:
    """Llama-style decoder with a pre-allocated KV cache, written for low per-token overhead.

    Layout: the cache is one tensor per K and V of shape [layers, batch, kv_heads, capacity, head_dim]; every row
    of a batch shares the write position because prompts are left-padded. Projections, norms and the MLP run
    batched (the low-bit kernels are row-independent: a row's output is bitwise the same for M=1 and M=B);
    attention runs per padded row over that row's real keys only (see `_attend`), so a padded batch yields
    exactly the tokens each prompt yields alone.
    """

    def __init__(self, model: nn.Module, family: Family, dtype: torch.dtype, device: torch.device) -> None:
        cfg = model.config
        self.config = cfg  # the engine reads its sliding windows
        self.family = family
        self.dtype = dtype
        self.device = device
        self.hidden = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.hidden // self.n_heads
        self.eps = float(cfg.rms_norm_eps)
        self.max_positions = int(cfg.max_position_embeddings)
        self.scale = self.head_dim**-0.5
        # The small ops between the projections come from the op registry (`step_kernels.py`): on CPU in fp32 the
        # native library turns RMSNorm (~8 ATen ops) and a decode step's RoPE + cache write + attention (~10 ops)
        # into one call each; on GPUs fused Triton kernels do the norm, SwiGLU, and RoPE + cache write.
        ctx = OpContext(device.type, dtype, self.head_dim, family.qk_norm)
        self._norm = select_op("rms_norm", ctx).load(ctx)
        self._act = select_op("silu_mul", ctx).load(ctx)
        self._rope_write = select_op("rope_kv_write", ctx).load(ctx)
        self._decode_attention = select_op("decode_attention", ctx).load(ctx)
        # Eager passes (prefill, padded rows) run the plain ops; the fixed-shape (CUDA-graph) step runs fused
        # norms, attention and int8 activations where the kernels exist.
        self._eager_ops = StepOps(self._norm, self._act)
        self.step_ops: StepOps = self._eager_ops
        if self._rope_write is not None:
            from xpullm.kernels.triton import attention

            self.step_ops = FusedStepOps(gpu_decode_ops(device), attention)
        inner = model.model
        self.embed = _EmbedRows(inner.embed_tokens, dtype)
        self.final_norm = _norm_weight(inner.norm)
        self.lm_head = model.lm_head
        self._rotary = inner.rotary_emb
        self.layers = [self._wrap(layer) for layer in inner.layers]
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self.capacity = 0
        self.pos = 0
        self._pad: list[int] | None = None
        self._pad_t: torch.Tensor | None = None

    def _wrap(self, layer: nn.Module) -> _Layer:
        attn, mlp, fam = layer.self_attn, layer.mlp, self.family
        return _Layer(
            attn_norm=_norm_weight(layer.input_layernorm),
            qkv=_fused([getattr(attn, n) for n in fam.qkv]),
            q_norm=_norm_weight(attn.q_norm) if fam.qk_norm else None,
            k_norm=_norm_weight(attn.k_norm) if fam.qk_norm else None,
            o_proj=attn.o_proj,
            mlp_norm=_norm_weight(layer.post_attention_layernorm),
            gate_up=_fused([getattr(mlp, n) for n in fam.gate_up]),
            down=mlp.down_proj,
        )

    # -- what the fixed-shape step (`step_ops.static_step`) reads

    @property
    def kv_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V caches, each [layers, batch, kv_heads, capacity, head_dim] (after the first `start`)."""
        assert self._k is not None and self._v is not None, "no cache before the first start()"
        return self._k, self._v

    @property
    def cos(self) -> torch.Tensor:
        """RoPE cosines per position [capacity, head_dim]."""
        assert self._cos is not None, "no RoPE table before the first start()"
        return self._cos

    @property
    def sin(self) -> torch.Tensor:
        """RoPE sines per position [capacity, head_dim], first half negated (`rotate_qk`)."""
        assert self._sin is not None, "no RoPE table before the first start()"
        return self._sin

    @property
    def rope_write(self) -> Callable[..., torch.Tensor] | None:
        """The fused RoPE + cache-write kernel of the fixed-shape step, or None (then RoPE is `rotate_qk`)."""
        return self._rope_write

    # -- buffers

    def _ensure(self, batch: int, max_len: int) -> None:
        """(Re)allocate cache and RoPE tables only when the request outgrows them; otherwise reuse."""
        need = min(self.max_positions, -(-max_len // 256) * 256)
        need = max(need, max_len)
        if self._cos is None or self._cos.shape[0] < need:
            pos = torch.arange(need, device=self.device)[None]
            probe = torch.zeros(1, dtype=torch.float32, device=self.device)
            cos, sin = self._rotary(probe, pos)
            half = self.head_dim // 2
            sin = sin[0].clone()
            # rotate_half(x) * sin == roll(x, half) * sin_signed: one op (roll) instead of neg + cat.
            sin[:, :half] = -sin[:, :half]
            self._cos, self._sin = cos[0].to(self.dtype), sin.to(self.dtype)
        if self._k is None or self._k.shape[1] != batch or self._k.shape[3] < need:
            shape = (len(self.layers), batch, self.n_kv, need, self.head_dim)
            self._k = self._v = None  # free the old cache before allocating the new one
            self._k = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.capacity = self._k.shape[3]

    # -- the two public passes

    @torch.inference_mode()
    def start(self, input_ids: torch.Tensor, pad: torch.Tensor, max_len: int) -> torch.Tensor:
        batch, t = input_ids.shape
        self._ensure(batch, max_len)
        self.pos = 0
        pads = [int(n) for n in pad.tolist()]
        if any(n < 0 or n >= t for n in pads) or len(pads) != batch:
            raise ValueError(f"pad must hold {batch} counts in [0, {t}) (one per row), got {pads}")
        # Left padding: each row's real tokens start at its own column but at RoPE position 0, exactly as the
        # same prompt alone. Rows without padding need no per-row work at all.
        self._pad = pads if any(pads) else None
        self._pad_t = None if self._pad is None else torch.tensor(pads, device=self.device)
        positions = None
        if self._pad_t is not None:
            positions = (torch.arange(t, device=self.device)[None] - self._pad_t[:, None]).clamp(min=0)
        x = self._forward(input_ids, positions)
        return self._logits(x[:, -1])

    @torch.inference_mode()
    def step(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.pos >= self.capacity:
            raise RuntimeError(f"KV cache full at {self.capacity} tokens")
        if self._pad_t is None and isinstance(self.step_ops, FusedStepOps):
            # The fixed-shape step the CUDA graphs record, run directly: graphs on or off, the same tokens.
            pos = torch.tensor([self.pos], device=self.device)
            logits = static_step(self, self.embed(token_ids[:, None]), pos)
            self.pos += 1
            return logits
        positions = None
        if self._pad_t is not None:
            positions = (self.pos - self._pad_t)[:, None]
        x = self._forward(token_ids[:, None], positions)
        return self._logits(x[:, -1])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self._norm(x, (self.hidden,), self.final_norm, self.eps)
        return self.lm_head(x)

    # -- the layer stack (hot path: keep ops few and avoid Python work per layer)

    def _attend(self, i: int, q: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Attention of queries q [B, H, t, D] (cache columns start..end-1) over cache columns [0, end).

        With left padding, a masked SDPA over the padded keys rounds differently from the same prompt alone
        (bf16 softmax blocks cover other key spans), so near-ties flip greedy tokens. Instead each padded row
        attends over exactly its real keys `pad_b:end` with the plain causal kernel: the arithmetic of a lone
        prompt, bit for bit. Costs B small SDPA calls per layer instead of one (only for padded batches).
        """
        k_cache, v_cache = self._k[i], self._v[i]
        h, kv, t = self.n_heads, self.n_kv, q.shape[2]
        if self._pad is None:
            return F.scaled_dot_product_attention(
                q, k_cache[:, :, :end], v_cache[:, :, :end],
                is_causal=t > 1, scale=self.scale, enable_gqa=kv != h,
            )  # fmt: skip
        rows = []
        for b, pad in enumerate(self._pad):
            # First real query of this row; pad queries get zeros (their outputs are never read).
            first = max(pad - start, 0)
            out = F.scaled_dot_product_attention(
                q[b : b + 1, :, first:], k_cache[b : b + 1, :, pad:end], v_cache[b : b + 1, :, pad:end],
                is_causal=t - first > 1, scale=self.scale, enable_gqa=kv != h,
            )  # fmt: skip
            rows.append(F.pad(out, (0, 0, first, 0)) if first else out)
        return torch.cat(rows)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        batch, t = ids.shape
        start = self.pos
        end = start + t
        x = self.embed(ids)
        if t == 1 and self._decode_attention is not None:
            return self._native_step(x, positions)
        if positions is None:  # no padding: every row sits at the same position, a slice is enough
            cos = self._cos[start:end][None, None]
            sin = self._sin[start:end][None, None]
        else:
            cos = self._cos[positions][:, None]
            sin = self._sin[positions][:, None]
        h, kv, d, eps = self.n_heads, self.n_kv, self.head_dim, self.eps
        k_cache, v_cache = self._k, self._v

        def attention(i: int, layer: _Layer, qkv: torch.Tensor) -> torch.Tensor:
            qkv = qkv.view(batch, t, h + 2 * kv, d).transpose(1, 2)
            qk = rotate_qk(layer, qkv, h, kv, eps, cos, sin)
            k_cache[i, :, :, start:end] = qk[:, h:]
            v_cache[i, :, :, start:end] = qkv[:, h + kv :]
            return self._attend(i, qk[:, :h], start, end).transpose(1, 2).reshape(batch, t, h * d)

        x, delta = decoder_layers(self, x, self._eager_ops, attention)
        self.pos = end
        return x + delta

    def _native_step(self, x: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """One decode step (CPU, fp32) with RoPE, cache write and attention as one native call per layer.

        Every row is attended on its own over its real keys (`first` skips left padding), as `_attend` does, so
        a row's tokens do not depend on the rest of the batch.
        """
        batch, slot = x.shape[0], self.pos
        if positions is None:
            rope_pos = torch.full((batch,), slot, dtype=torch.long)
            first = torch.zeros(batch, dtype=torch.long)
        else:
            rope_pos, first = positions[:, 0].contiguous(), self._pad_t

        def attention(i: int, layer: _Layer, qkv: torch.Tensor) -> torch.Tensor:
            return self._decode_attention(
                qkv.contiguous(), self._cos, self._sin, rope_pos, self._k[i], self._v[i], first, slot,
                self.n_heads, self.scale,
            )  # fmt: skip

        x, delta = decoder_layers(self, x, self._eager_ops, attention)
        self.pos = slot + 1
        return x + delta


def windowed(model: nn.Module) -> bool:
    """Whether `model` attends through a sliding window narrower than its context (transformers' config)."""
    cfg = getattr(model, "config", None)
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return bool(window) and window < getattr(cfg, "max_position_embeddings", 0)


def _static_ok(model: nn.Module, windows_ok: bool = False) -> Family | None:
    cfg = getattr(model, "config", None)
    family = FAMILIES.get(getattr(cfg, "model_type", ""))
    if family is None or getattr(cfg, "hidden_act", "silu") != "silu":
        return None
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return None
    # Sliding-window attention is left to transformers' own forward unless the paged engine runs the model (its
    # kernels attend through the window; `windows_ok`).
    if not windows_ok and windowed(model):
        return None
    return family


def build_decoder(
    model: nn.Module,
    dtype: torch.dtype,
    device: torch.device,
    prefer_static: bool = True,
    windows_ok: bool = False,
) -> Decoder:
    """The fastest decoder that supports `model`: `StaticCacheDecoder` for registered families, else `HFDecoder`.
    `windows_ok`: sliding-window models too (only the paged engine, which attends through the window, runs it)."""
    family = _static_ok(model, windows_ok) if prefer_static else None
    if family is not None:
        from xpullm.engine.graphs import GraphedDecoder, graphs_enabled

        static = StaticCacheDecoder(model, family, dtype, device)
        return GraphedDecoder(static) if graphs_enabled(device) else static  # CUDA: decode steps as graphs
    return HFDecoder(model, device)
