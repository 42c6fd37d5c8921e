"""Paged attention for the continuous-batching engine: RoPE, KV write into block pools, varlen GQA attention.

One engine step is one flattened forward over N tokens of many sequences (prefill chunks and decode tokens mixed).
Each layer's K and V live in pools `[num_blocks, KV, block_size, D]`; a sequence owns a row of `block_tables`,
and the token at position p of sequence s sits in block `block_tables[s, p // block_size]`, slot
`p % block_size`. Every implementation is `fn(qkv, batch, layer)`: a `PagedBatch` (the step's positions, sequence
rows, block tables and RoPE tables; built and checked once per step, shared by every layer) and a `PagedLayer` (a
layer's pools, heads, norms, KV dtype, window; built and checked once). `paged_attention` does, for the layer:

1. for every token: per-head RMSNorm of k (Qwen3's `k_norm`, optional), RoPE at its position, then k and v
   written into its slot of the pools;
2. for every (token, head): q normalized (optional `q_norm`) and rotated, then softmax(q . k_j * scale) v_j over
   j = 0..position of its own sequence (GQA: head h reads kv head h // (H / KV)).

Per (token, head) the arithmetic is one fixed loop over its keys, so on the native CPU path a token's output is
bitwise the same whatever else is in the batch, however its prompt was split into chunks and on whichever thread
it runs: that is what makes a request's greedy tokens independent of the other requests (ENGINE_DESIGN.md). The
native kernel (`csrc/cpu_ops.c`, `xq_paged_attention`, which takes the batch and the layer packed as C structs)
runs one job per (token group, kv head) over OpenMP threads (from 256k multiply-adds a call) - the kv head's G
query heads together, and up to 8 consecutive tokens of one sequence (a verified draft, a prompt chunk) together,
so each key and value is loaded once for all of them - on AVX2 or AVX-512 (the CPU's best path; results are
bitwise stable per path, and the same in any grouping). `reference_paged_attention` is the PyTorch twin every fast
path is tested against.

Backends, first one that takes the call wins (`paged_backend` names it): the native C kernel (CPU, fp32, the
library from `cpu_native`), Triton (CUDA and XPU, `triton/paged_attention.py`), the reference (anything else).
A backend that cannot take a shape declines; it never computes something else.

The pools may also hold 8-bit codes (`kv_cache_dtype="int8"` or `"fp8_e4m3"`), with one fp32 scale per (block,
kv head, slot) in `k_scale` / `v_scale` [num_blocks, KV, block_size]: int8 codes round(x / s) with s = max|x| / 127
of that token's head vector, or fp8 e4m3 codes x / s with s = max|x| / 448 (`quantize_kv`). The native and
Triton kernels read both kinds directly (scaled in registers, no dequantized copy of the cache). 8-bit KV is D + 4 bytes per token and head instead of 4 D (fp32) or
2 D (bf16): `kv_bytes_per_token`.

fp8 pools with a power-of-two D hold every head vector in a rotated basis (`kv_rotation`): k (after RoPE) and v
are multiplied by the orthonormal Walsh-Hadamard matrix R before they are coded, q by R before the scores, and
the attention output by R on the way out. q . k = (q R) . (k R) and sum_j p_j v_j = (sum_j p_j v_j R) R^T (R is
symmetric, R R = I), so the result is the same attention; only what the 3-bit mantissa loses changes: a channel
that q and k both carry large (what dominates q . k) is spread over all D coded elements, and the scores' fp8
error drops (docs/benchmarks-kvcache.md measures why this and not mean-offset smoothing). int8 pools keep the
plain basis (their error is already at the fp32 noise floor there). No state: R depends on D alone.

`kv_cache_dtype="bf16"`: bfloat16 float pools whatever the activation dtype (half the bytes of fp32 pools; the
comparison row for 8-bit KV that GPUs run natively).

Sliding window and attention sinks (`window` W > 0, `sinks` S >= 0): the token at position p attends only keys
j <= p with j > p - W (its recent window) or j < S (the first S tokens, StreamingLLM's "sinks"). With a window
the block table may also be narrower than the positions: it is then a ring, absolute block b (= j // block_size)
living in column `table_column(b, ...)`: b itself for the C = ceil(S / block_size) sink columns, else
C + (b - C) % (max_blocks - C). While positions stay below max_blocks * block_size that is the plain table; past
it, the engine's streaming mode reuses the columns of blocks that fell out of the window (it must leave at least
ceil((W + the sequence's tokens in the call) / block_size) + 1 ring columns).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from xpullm.kernels import cpu_native

__all__ = [
    "KV_CACHE_DTYPES",
    "KV_CODE_DTYPES",
    "Kernel",
    "PagedBackend",
    "PagedBatch",
    "PagedLayer",
    "kv_bytes_per_token",
    "kv_rotation",
    "paged_attention",
    "paged_backend",
    "quantize_kv",
    "reference_attend",
    "reference_paged_attention",
    "reference_rotate",
    "ring_width",
    "table_column",
]

# kv_cache_dtype -> the pools' element dtype (None: the activation dtype, whatever the caller allocated).
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "bf16": torch.bfloat16,
    "int8": torch.int8,
    "fp8_e4m3": torch.float8_e4m3fn,
}
_CODE_MAX = {"int8": 127.0, "fp8_e4m3": 448.0}  # the code range the scale maps max|x| to
KV_CODE_DTYPES = frozenset(_CODE_MAX)  # the kv_cache_dtype values whose pools hold 8-bit codes + fp32 scales
_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_ROTATED = frozenset({"fp8_e4m3"})  # code kinds whose pools hold head vectors in the Walsh-Hadamard basis


def _hadamard(d: int) -> torch.Tensor:
    """The Sylvester-ordered Walsh-Hadamard matrix of order d (a power of two), scaled to be orthonormal."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / d**0.5


@functools.cache
def _hadamard_on(d: int, device: torch.device) -> torch.Tensor:
    return _hadamard(d).to(device)


def kv_rotated(d: int, kv_cache_dtype: str) -> bool:
    """Whether pools of this kind and head size hold head vectors in the Walsh-Hadamard basis (`kv_rotation`)."""
    return kv_cache_dtype in _ROTATED and d >= 2 and d & (d - 1) == 0


def kv_rotation(d: int, kv_cache_dtype: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The orthonormal R [D, D] (fp32) that pools of this kind hold head vectors rotated by (x R), or None.

    fp8 e4m3 pools with D a power of two: the Walsh-Hadamard matrix (symmetric, R R = I; entries +-1 / sqrt(D)),
    which the native and Triton kernels apply as butterflies; every other kind, or other D: None (the plain
    basis)."""
    if not kv_rotated(d, kv_cache_dtype):
        return None
    return _hadamard_on(d, torch.device(device))


@dataclass(frozen=True, eq=False)
class PagedBatch:
    """Where one step's N flattened tokens sit, and the RoPE tables: what every layer's call shares.

    The engine builds one per step (`ModelRunner.forward_hidden`) and hands it to each layer's `paged_attention`,
    so its checks (shapes, dtypes, one device: host metadata, no device sync) run once per step, not per layer.
    Index values (a position inside the RoPE tables, a block inside the pools) are not read here: the native
    kernel checks them (ValueError, nothing written); on a GPU they are the caller's duty.
    """

    positions: torch.Tensor
    """int64 [N]: each token's absolute position (its RoPE row; it attends keys 0..position)."""
    seq_index: torch.Tensor
    """int64 [N]: the row of each token's sequence in `block_tables`."""
    block_tables: torch.Tensor
    """int32 [S, max_blocks]: each sequence's physical block ids (a ring with a window: `table_column`)."""
    cos: torch.Tensor
    """[max_positions, D]: RoPE cosines."""
    sin: torch.Tensor
    """[max_positions, D]: RoPE sines with the first half negated (as `StaticCacheDecoder` keeps them)."""
    n: int = field(init=False)
    """N, the step's tokens."""
    device: torch.device = field(init=False)
    """Where every tensor of the batch lives."""

    def __post_init__(self) -> None:
        positions, seq_index, tables, cos, sin = (
            self.positions, self.seq_index, self.block_tables, self.cos, self.sin,
        )  # fmt: skip
        n = positions.shape[0] if positions.dim() == 1 else -1
        for name, t in (("positions", positions), ("seq_index", seq_index)):
            if t.dtype != torch.int64 or t.dim() != 1 or t.shape[0] != n:
                raise ValueError(
                    f"{name} must be int64 [N] (one per token, as many as positions); got {t.dtype} "
                    f"{tuple(t.shape)}"
                )
        if tables.dtype != torch.int32 or tables.dim() != 2:
            raise ValueError(
                f"block_tables must be int32 [S, max_blocks]; got {tables.dtype} {tuple(tables.shape)}"
            )
        if (cos.dim() != 2 or cos.shape[1] % 2 or sin.shape != cos.shape or cos.dtype not in _FLOATS
                or sin.dtype != cos.dtype):  # fmt: skip
            raise ValueError(
                f"cos and sin must both be float [max_positions, D] with D even; got {cos.dtype} "
                f"{tuple(cos.shape)} and {sin.dtype} {tuple(sin.shape)}"
            )
        devices = {t.device for t in (positions, seq_index, tables, cos, sin)}
        if len(devices) != 1:
            raise ValueError(
                f"a batch's tensors must be on one device; got {sorted(str(dv) for dv in devices)}"
            )
        # Per step, not per layer: what the kernels want (a no-op for the engine's own tensors).
        for name in ("positions", "seq_index", "block_tables", "cos", "sin"):
            t = getattr(self, name)
            if not t.is_contiguous():
                object.__setattr__(self, name, t.contiguous())
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "device", positions.device)

    @functools.cached_property
    def rope_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at each token's position, fp32 [N, 1, D] (the twin's RoPE; gathered once per step)."""
        return self.cos.float()[self.positions][:, None], self.sin.float()[self.positions][:, None]


@dataclass(frozen=True, eq=False)
class PagedLayer:
    """One layer's KV pools and attention constants: fixed for an engine's life, checked once when built.

    The pools [num_blocks, KV, block_size, D] (and 8-bit pools' scales) are written in place by every call."""

    k_pool: torch.Tensor
    """[num_blocks, KV, block_size, D] keys: float, or 8-bit codes for kv_cache_dtype "int8" / "fp8_e4m3"."""
    v_pool: torch.Tensor
    """Values, the same shape and dtype."""
    n_heads: int
    """H query heads (a multiple of KV: GQA head h reads kv head h // (H / KV))."""
    scale: float
    """The softmax scale (1 / sqrt(D) for most models)."""
    q_norm: torch.Tensor | None = None
    """[D]: Qwen3's per-head RMSNorm weight for q, applied before RoPE (with k_norm, or neither)."""
    k_norm: torch.Tensor | None = None
    """[D]: the same for k."""
    eps: float = 0.0
    """The norms' epsilon."""
    kv_cache_dtype: str = "auto"
    """What the pools hold (`KV_CACHE_DTYPES`): "auto" (the caller's float dtype), "bf16", "int8", "fp8_e4m3"."""
    k_scale: torch.Tensor | None = None
    """8-bit pools: fp32 [num_blocks, KV, block_size], one scale per key vector (written in place)."""
    v_scale: torch.Tensor | None = None
    """8-bit pools: the values' scales."""
    window: int = 0
    """> 0: attend only keys j > position - window (a sliding window), plus the first `sinks`."""
    sinks: int = 0
    """Attention-sink tokens a windowed layer keeps attending (needs a window)."""

    kv: int = field(init=False)
    """KV heads (from the pools)."""
    d: int = field(init=False)
    """Head dim (from the pools)."""
    block_size: int = field(init=False)
    """Token slots per block (from the pools)."""
    codes: str | None = field(init=False)
    """None: float pools; else the 8-bit code kind ("int8", "fp8_e4m3")."""
    width: int = field(init=False)
    """qkv's row width, (H + 2 KV) * D."""

    def __post_init__(self) -> None:
        k_pool, v_pool, n_heads = self.k_pool, self.v_pool, self.n_heads
        if k_pool.dim() != 4 or v_pool.shape != k_pool.shape:
            raise ValueError(
                f"k_pool and v_pool must both be [num_blocks, KV, block_size, D]; got {tuple(k_pool.shape)} and "
                f"{tuple(v_pool.shape)}"
            )
        _, kv, block_size, d = k_pool.shape
        if d % 2 or block_size == 0:
            raise ValueError(
                f"the pools' head_dim must be even (RoPE rotates its two halves) and block_size positive; got "
                f"head_dim={d}, block_size={block_size}"
            )
        if (
            isinstance(n_heads, bool)
            or not isinstance(n_heads, int)
            or kv == 0
            or n_heads % kv
            or n_heads < kv
        ):
            raise ValueError(
                f"n_heads must be a positive multiple of the pools' {kv} kv heads; got n_heads={n_heads!r}"
            )
        if (self.q_norm is None) != (self.k_norm is None):
            raise ValueError("q_norm and k_norm come together (Qwen3's per-head norms): pass both or neither")
        for name, t in (("q_norm", self.q_norm), ("k_norm", self.k_norm)):
            if t is not None and t.shape != (d,):
                raise ValueError(f"{name} must be [{d}] (one weight per head dim); got {tuple(t.shape)}")
        codes = _check_pools(self.kv_cache_dtype, k_pool, v_pool, self.k_scale, self.v_scale)
        for name, value in (("window", self.window), ("sinks", self.sinks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (0: off); got {value!r}")
        if self.sinks and not self.window:
            raise ValueError(
                f"sinks={self.sinks} needs a sliding window (window > 0): without one every key is attended"
            )
        tensors = [
            k_pool,
            v_pool,
            *(t for t in (self.q_norm, self.k_norm, self.k_scale, self.v_scale) if t is not None),
        ]
        devices = {t.device for t in tensors}
        if len(devices) != 1:
            raise ValueError(
                f"a layer's tensors must be on one device; got {sorted(str(dv) for dv in devices)}"
            )
        if self.q_norm is not None and not (self.q_norm.is_contiguous() and self.k_norm.is_contiguous()):
            object.__setattr__(self, "q_norm", self.q_norm.contiguous())
            object.__setattr__(self, "k_norm", self.k_norm.contiguous())
        for name, value in (("kv", kv), ("d", d), ("block_size", block_size), ("codes", codes),
                            ("width", (n_heads + 2 * kv) * d)):  # fmt: skip
            object.__setattr__(self, name, value)

    @property
    def device(self) -> torch.device:
        """Where the pools live."""
        return self.k_pool.device


def _check_pools(
    kv_cache_dtype: str,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> str | None:
    """The pools' dtypes (and 8-bit pools' scales) against kv_cache_dtype; returns the code kind or None."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype!r} is not known: choose one of {sorted(KV_CACHE_DTYPES)}"
        )
    codes = kv_cache_dtype if kv_cache_dtype in _CODE_MAX else None
    want = KV_CACHE_DTYPES[kv_cache_dtype]
    if want is not None and (k_pool.dtype != want or v_pool.dtype != want):
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype!r} needs {want} pools; got {k_pool.dtype} and {v_pool.dtype} "
            f"(allocate them with dtype={want})"
        )
    if codes is not None:
        scale_shape = tuple(k_pool.shape[:3])
        for name, t in (("k_scale", k_scale), ("v_scale", v_scale)):
            if t is None or t.dtype != torch.float32 or tuple(t.shape) != scale_shape:
                got = None if t is None else f"{t.dtype} {tuple(t.shape)}"
                raise ValueError(
                    f"kv_cache_dtype={codes!r} needs {name} float32 {list(scale_shape)} (one scale per block, "
                    f"kv head and slot); got {got}"
                )
        return codes
    if k_pool.dtype not in _FLOATS or v_pool.dtype != k_pool.dtype:
        raise ValueError(
            f"the pools must share one float dtype (float32, bfloat16, float16); got {k_pool.dtype} and "
            f"{v_pool.dtype} (8-bit pools need kv_cache_dtype 'int8' or 'fp8_e4m3')"
        )
    if k_scale is not None or v_scale is not None:
        raise ValueError(
            "k_scale / v_scale belong to 8-bit pools: pass kv_cache_dtype 'int8' or 'fp8_e4m3', or drop them"
        )
    return None


def _check_call(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> None:
    """What only the call itself can tell: qkv's shape and dtype, and that the batch and the layer fit (a few
    integer and device compares: everything else was checked when the batch and the layer were built)."""
    if qkv.dim() != 2 or qkv.shape[0] != batch.n or qkv.shape[1] != layer.width:
        raise ValueError(
            f"qkv must be [N, (H + 2 KV) * D] = [{batch.n}, {layer.width}] for N={batch.n} tokens, H={layer.n_heads}, "
            f"KV={layer.kv}, D={layer.d}; got {tuple(qkv.shape)}"
        )
    if qkv.dtype not in _FLOATS:
        raise ValueError(f"qkv must be float32, bfloat16 or float16; got {qkv.dtype}")
    if batch.cos.shape[1] != layer.d:
        raise ValueError(
            f"the batch's RoPE tables are {batch.cos.shape[1]} wide but the layer's head_dim is {layer.d}"
        )
    if qkv.device != batch.device or layer.device != batch.device:
        raise ValueError(
            f"qkv ({qkv.device}), the batch ({batch.device}) and the layer's pools ({layer.device}) must be on "
            f"one device"
        )


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as the decoder applies it: x * cos + roll(x, D/2) * sin, sin's first half negated."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


def table_column(block: int, window: int, sinks: int, block_size: int, width: int) -> int:
    """The block-table column of absolute block `block` (module docstring): itself without a window or inside the
    sink columns, else a ring over the remaining `width - ceil(sinks / block_size)` columns."""
    sink_cols = -(-sinks // block_size)
    if not window or block < sink_cols or width <= sink_cols:  # no ring columns left: the plain table
        return block
    return sink_cols + (block - sink_cols) % (width - sink_cols)


def ring_width(window: int, sinks: int, block_size: int, step_tokens: int) -> int:
    """Table columns a sequence needs with a window: its sink columns plus a ring that holds the blocks of the
    window and of `step_tokens` new tokens at once (the most one call writes for one sequence)."""
    return -(-sinks // block_size) + -(-(window + step_tokens) // block_size) + 1


def _columns(blocks: torch.Tensor, layer: PagedLayer, width: int) -> torch.Tensor:
    """`table_column` on a tensor of absolute block indices."""
    if not layer.window:
        return blocks
    sink_cols = -(-layer.sinks // layer.block_size)
    if width <= sink_cols:  # no ring columns left: the plain table
        return blocks
    return torch.where(blocks < sink_cols, blocks, sink_cols + (blocks - sink_cols) % (width - sink_cols))


def quantize_kv(x: torch.Tensor, kv_cache_dtype: str = "int8") -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., D] -> (8-bit codes [..., D], fp32 scales [...]), the code pools' format (the kernels do the same).

    "int8": scale = max|x| / 127, codes round(x / scale) (half to even); "fp8_e4m3": scale = max|x| / 448, codes
    x / scale rounded to the nearest e4m3 value (ties to even). An all-zero vector gets scale 0 and zero codes.
    """
    if kv_cache_dtype not in _CODE_MAX:
        raise ValueError(f"kv_cache_dtype={kv_cache_dtype!r} has no codes: choose one of {sorted(_CODE_MAX)}")
    top = _CODE_MAX[kv_cache_dtype]
    x = x.float()
    scale = x.abs().amax(-1) / top
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    y = (x * inv[..., None]).clamp(-top, top)
    codes = y.round().to(torch.int8) if kv_cache_dtype == "int8" else y.to(torch.float8_e4m3fn)
    return codes, scale


def reference_paged_attention(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """`paged_attention` in PyTorch, fp32 math (the twin the fast paths are tested against); same arguments.

    Writes the pools the same way (rounded once to the pools' dtype, or quantized with `quantize_kv` for 8-bit
    pools) and returns [N, H * D] in qkv's dtype. Runs anywhere; a host sync per step (it groups tokens by
    sequence), so it is a fallback, not a fast path.
    """
    _check_call(qkv, batch, layer)
    n, h, d, bs = batch.n, layer.n_heads, layer.d, layer.block_size
    out = torch.empty((n, h * d), dtype=qkv.dtype, device=qkv.device)
    if n == 0:
        return out
    q, k, v = reference_rotate(qkv, batch, layer)

    # Phase 1: every token's k and v into its slot (advanced indices around a slice: the result is [N, KV, D]).
    positions, k_pool, v_pool, k_scale, v_scale = (
        batch.positions, layer.k_pool, layer.v_pool, layer.k_scale, layer.v_scale,
    )  # fmt: skip
    tables = batch.block_tables.long()
    blocks = tables[batch.seq_index, _columns(positions // bs, layer, tables.shape[1])]
    slots = positions % bs
    rot = kv_rotation(d, layer.codes or "", k.device)
    if rot is not None:  # the pools' basis (module docstring); reference_attend turns q and the output by it
        k, v = k @ rot, v @ rot
    if layer.codes:
        k_codes, k_s = quantize_kv(k, layer.codes)
        v_codes, v_s = quantize_kv(v, layer.codes)
        k_pool[blocks, :, slots], k_scale[blocks, :, slots] = k_codes, k_s
        v_pool[blocks, :, slots], v_scale[blocks, :, slots] = v_codes, v_s
    else:
        k_pool[blocks, :, slots] = k.to(k_pool.dtype)
        v_pool[blocks, :, slots] = v.to(v_pool.dtype)

    out.copy_(reference_attend(q, batch, layer))
    return out


def reference_attend(q: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """Phase 2 of the twin on the layer's pools as they are: rotated q [N, H, D] (fp32) attends each token's keys
    0..pos (with a window: only j > pos - window or j < sinks; 8-bit pools: codes times their scales; fp8 pools in
    the rotated basis, `kv_rotation`: q R attends them and the output is turned back by R). Returns fp32
    [N, H * D]. The tests hold a fast kernel's outputs to this on the kernel's own pools, so a code that the two
    sides rounded differently cannot blur the check."""
    n, h, d = q.shape
    k_pool, v_pool, k_scale, v_scale = layer.k_pool, layer.v_pool, layer.k_scale, layer.v_scale
    window, sinks, bs = layer.window, layer.sinks, layer.block_size
    positions, seq_index = batch.positions, batch.seq_index
    tables, group = batch.block_tables.long(), h // layer.kv
    rot = kv_rotation(d, "fp8_e4m3", q.device) if k_pool.dtype == torch.float8_e4m3fn else None
    if rot is not None:
        q = q.float() @ rot
    result = torch.empty((n, h, d), dtype=torch.float32, device=q.device)
    # Per sequence, its tokens against the keys any of them attends, each token masked to its own keys.
    for seq in torch.unique(seq_index).tolist():
        rows = (seq_index == seq).nonzero()[:, 0]
        pos = positions[rows]
        top = int(pos.max())
        low = max(0, int(pos.min()) - window + 1) if window else 0
        cols = torch.cat((torch.arange(min(sinks, low)), torch.arange(low, top + 1))).to(q.device)
        phys = tables[seq, _columns(cols // bs, layer, tables.shape[1])]
        keys = _gather(k_pool, k_scale, phys, cols % bs).repeat_interleave(group, 0)  # [H, L, D]
        values = _gather(v_pool, v_scale, phys, cols % bs).repeat_interleave(group, 0)
        scores = torch.einsum("thd,hld->htl", q[rows].float(), keys) * layer.scale
        visible = cols[None] <= pos[:, None]  # [T, L]
        if window:
            visible &= (cols[None] > pos[:, None] - window) | (cols[None] < sinks)
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        result[rows] = torch.einsum("htl,hld->thd", probs, values)
    if rot is not None:
        result = result @ rot
    return result.reshape(n, h * d)


def reference_rotate(
    qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The twin's q, k, v in fp32: [N, H, D], [N, KV, D] (both normalized if asked, then rotated), [N, KV, D]."""
    h, kv, d = layer.n_heads, layer.kv, layer.d
    heads = qkv.float().reshape(qkv.shape[0], h + 2 * kv, d)
    q, k, v = heads[:, :h], heads[:, h : h + kv], heads[:, h + kv :]
    if layer.q_norm is not None:
        q = F.rms_norm(q, (d,), layer.q_norm.float(), layer.eps)
        k = F.rms_norm(k, (d,), layer.k_norm.float(), layer.eps)
    c, s = batch.rope_rows
    return _rotate(q, c, s), _rotate(k, c, s), v


def _gather(
    pool: torch.Tensor, scales: torch.Tensor | None, phys: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Keys (or values) at (block phys[i], slot slots[i]) of a pool as fp32 [KV, L, D] (8-bit codes times their
    scales)."""
    x = pool[phys, :, slots].float()  # [L, KV, D]
    if scales is not None:
        x = x * scales[phys, :, slots][..., None]
    return x.transpose(0, 1)


def kv_bytes_per_token(
    n_layers: int, n_kv: int, head_dim: int, kv_cache_dtype: str, dtype: torch.dtype
) -> int:
    """KV memory one token takes over all layers: 2 (k, v) x KV heads x (D x element size, + a 4-byte scale
    for 8-bit pools)."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(
            f"kv_cache_dtype={kv_cache_dtype!r} is not known: choose one of {sorted(KV_CACHE_DTYPES)}"
        )
    pool = KV_CACHE_DTYPES[kv_cache_dtype] or dtype
    per_head = head_dim + 4 if kv_cache_dtype in _CODE_MAX else head_dim * pool.itemsize
    return 2 * n_layers * n_kv * per_head


# ---- dispatch ---------------------------------------------------------------------------------------------


Kernel = Callable[[torch.Tensor, PagedBatch, PagedLayer], torch.Tensor]
"""`fn(qkv, batch, layer) -> [N, H * D]`: what every paged-attention implementation is."""


@dataclass(frozen=True)
class PagedBackend:
    """One implementation: `takes(qkv, batch, layer)` says whether it runs this call (never a partial yes)."""

    name: str
    takes: Callable[[torch.Tensor, PagedBatch, PagedLayer], bool]
    run: Kernel


def _native_takes(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> bool:
    if batch.device.type != "cpu" or cpu_native.library() is None:
        return False
    f32 = torch.float32
    if qkv.dtype != f32 or batch.cos.dtype != f32:
        return False
    if layer.q_norm is not None and (layer.q_norm.dtype != f32 or layer.k_norm.dtype != f32):
        return False
    # The pools (and scales) are written in place: they must be contiguous; the inputs are made so if needed.
    if not (layer.k_pool.is_contiguous() and layer.v_pool.is_contiguous()):
        return False
    if layer.codes:
        ks, vs = layer.k_scale, layer.v_scale
        return ks.is_contiguous() and vs.is_contiguous()
    return layer.k_pool.dtype == f32


@functools.cache
def _triton_module():
    """`triton/paged_attention.py`, or None where Triton does not import (imported on the first GPU call)."""
    try:
        from xpullm.kernels.triton import paged_attention as module
    except ImportError:
        return None
    return module


def _triton_takes(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> bool:
    if batch.device.type not in ("cuda", "xpu"):
        return False
    if layer.codes and not (layer.k_scale.is_contiguous() and layer.v_scale.is_contiguous()):
        return False
    module = _triton_module()
    return module is not None and module.supports(layer.d, layer.n_heads, layer.kv, layer.k_pool.dtype)


def _triton_run(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    return _triton_module().paged_attention(qkv, batch, layer)


def _reference_takes(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> bool:
    return True


# In order of preference; the reference takes everything, so every call has a path.
_BACKENDS: tuple[PagedBackend, ...] = (
    PagedBackend(
        "native", _native_takes, lambda qkv, batch, layer: cpu_native.paged_attention(qkv, batch, layer)
    ),
    PagedBackend("triton", _triton_takes, _triton_run),
    PagedBackend("reference", _reference_takes, reference_paged_attention),
)

# (layer, qkv dtype, RoPE dtype) -> the backend that takes it. A layer's facts never change and the batch adds
# only its device (the layer's, `_check_call`) and RoPE dtype, so a choice holds for the layer's whole life.
_CHOSEN: weakref.WeakKeyDictionary[PagedLayer, dict[tuple[torch.dtype, torch.dtype], PagedBackend]] = (
    weakref.WeakKeyDictionary()
)


def _pick(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> PagedBackend:
    _check_call(qkv, batch, layer)
    key = (qkv.dtype, batch.cos.dtype)
    chosen = _CHOSEN.get(layer)
    if chosen is None:
        chosen = _CHOSEN.setdefault(layer, {})
    backend = chosen.get(key)
    if backend is None:
        backend = chosen[key] = next(b for b in _BACKENDS if b.takes(qkv, batch, layer))
    return backend


def paged_backend(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> str:
    """The name of the backend `paged_attention` runs for these arguments: "native", "triton" or "reference"."""
    return _pick(qkv, batch, layer).name


def paged_attention(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """One layer's attention for the step's N flattened tokens over paged KV pools (module docstring).

    qkv [N, (H + 2 KV) D]: the layer's q/k/v projections for the batch's tokens; `batch`: where the tokens sit
    (positions, sequences, block tables) and the RoPE tables, built once per step; `layer`: the layer's pools
    (written in place), heads, softmax scale, optional q/k norms, KV dtype, window and sinks, built once.
    Returns [N, H * D] in qkv's dtype. Index values (positions inside the RoPE table, blocks inside the table and
    the pools) are checked by the native kernel (ValueError, nothing written); on a GPU they are the caller's duty.
    """
    return _pick(qkv, batch, layer).run(qkv, batch, layer)
