"""Triton decode-step kernels (RMS norm, SwiGLU gate, RoPE + KV-cache write) vs their PyTorch twins.

Runs on a CUDA GPU when one is present. On CPU-only machines the module is skipped, unless Triton's
interpreter is switched on explicitly (`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_decode_ops.py`):
then a smaller set of cases runs on CPU tensors in the interpreter (a few seconds), which checks indexing,
masking and the math but not GPU-only behaviour (CUDA graphs, fp16).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

triton = pytest.importorskip("triton")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and not INTERPRET:
    pytest.skip(
        "no CUDA GPU; set TRITON_INTERPRET=1 to run these kernels in Triton's CPU interpreter",
        allow_module_level=True,
    )

from xpullm.kernels.triton import Q8Activations, quantize_activations  # noqa: E402
from xpullm.kernels.triton.decode_ops import (  # noqa: E402
    add_rms_norm,
    reference_rms_norm,
    reference_rope_kv_write,
    reference_silu_mul,
    rms_norm,
    rope_kv_write,
    silu_mul,
)

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float32] + ([] if INTERPRET else [torch.float16])
HIDDEN = [576, 1000, 4096] + ([] if INTERPRET else [64, 5120, 16384])  # non-powers of two: masked tails
ROWS = [1, 3] + ([] if INTERPRET else [17, 300])
# (n_heads, n_kv, head_dim)
HEADS = [(4, 2, 64), (3, 1, 128)] + (
    [] if INTERPRET else [(32, 8, 128), (8, 8, 256), (14, 2, 64), (4, 4, 32)]
)


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _assert_close(y: torch.Tensor, ref: torch.Tensor, tag: str) -> None:
    """Same shape and dtype, finite, and a small relative error: 1e-2 for bf16/fp16, 1e-5 for fp32."""
    assert y.shape == ref.shape and y.dtype == ref.dtype, (
        f"{tag}: {y.shape} {y.dtype} vs {ref.shape} {ref.dtype}"
    )
    y32, ref32 = y.float().cpu(), ref.float().cpu()
    assert torch.isfinite(y32).all(), f"{tag}: non-finite output"
    err = ((y32 - ref32).norm() / ref32.norm().clamp_min(1e-12)).item()
    assert err < (1e-5 if y.dtype == torch.float32 else 1e-2), f"{tag}: relative error {err:.2e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_matches_twin(dtype, hidden, rows):
    seed = _seed()
    x = _randn(rows, hidden, seed=seed, dtype=dtype, scale=3.0)
    w = (1 + _randn(hidden, seed=seed + 1, dtype=torch.float32, scale=0.2)).to(dtype)
    y = rms_norm(x, (hidden,), w, 1e-6)
    _assert_close(y, reference_rms_norm(x, (hidden,), w, 1e-6), f"{dtype} {rows}x{hidden} seed={seed}")


def test_rms_norm_twin_matches_torch():
    """The twin is torch's rms_norm up to where the weight multiply rounds (torch rounds twice)."""
    x = _randn(3, 1000, seed=_seed(), dtype=torch.bfloat16)
    w = _randn(1000, seed=_seed(), dtype=torch.bfloat16)
    ref = torch.nn.functional.rms_norm(x.float(), (1000,), w.float(), 1e-5).to(x.dtype)
    _assert_close(reference_rms_norm(x, (1000,), w, 1e-5), ref, "twin vs F.rms_norm")


def test_rms_norm_leading_dims_strides_and_empty():
    seed = _seed()
    w = _randn(1000, seed=seed, dtype=torch.bfloat16)
    wide = _randn(2, 3, 1024, seed=seed + 1, dtype=torch.bfloat16)[..., :1000]  # row stride 1024, no copy
    tall = _randn(1000, 3, seed=seed + 2, dtype=torch.bfloat16).t()  # last dim not contiguous: copied
    for x in (wide, tall):
        _assert_close(rms_norm(x, (1000,), w, 1e-6), reference_rms_norm(x, (1000,), w, 1e-6), f"seed={seed}")
    assert rms_norm(wide[:0], (1000,), w, 1e-6).shape == (0, 3, 1000)
    with pytest.raises(ValueError, match="normalized_shape"):
        rms_norm(wide, (3, 1000), w, 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ffn", HIDDEN)
@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul_matches_twin(dtype, ffn, rows):
    seed = _seed()
    gu = _randn(rows, 1, 2 * ffn, seed=seed, dtype=dtype, scale=3.0)
    y = silu_mul(gu)
    assert y.shape == (rows, 1, ffn)
    _assert_close(y, reference_silu_mul(gu), f"{dtype} {rows}x{ffn} seed={seed}")


def test_silu_mul_strided_empty_and_odd_width():
    seed = _seed()
    gu = _randn(3, 2100, seed=seed, dtype=torch.bfloat16, scale=3.0)[:, :2000]
    _assert_close(silu_mul(gu), reference_silu_mul(gu), f"strided seed={seed}")
    assert silu_mul(gu[:0]).shape == (0, 1000)
    with pytest.raises(ValueError, match="odd"):
        silu_mul(gu[:, :999])


def _assert_same_q8(a: Q8Activations, b: Q8Activations, tag: str) -> None:
    """Bit-for-bit the same int8 activations (codes, scales, sums) and the same source dtype."""
    assert a.dtype == b.dtype, tag
    for name in ("codes", "scales", "sums"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, f"{name} {x.shape} vs {y.shape}: {tag}"
        assert torch.equal(x, y), f"{name} differ ({(x != y).sum().item()} elements): {tag}"


def _eager_add(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x + delta as the kernel must round it: to nearest even on GPUs, like torch. Triton's interpreter
    truncates every fp32 -> bf16 conversion, so there the expected value is the truncated fp32 sum."""
    if not (INTERPRET and x.dtype == torch.bfloat16):
        return x + delta
    s = (x.float() + delta.float()).view(torch.int32) & -65536
    return s.view(torch.float32).to(torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_add_rms_norm_is_the_add_then_the_norm(dtype, hidden):
    """h is the eager residual add bit for bit; the norm is `rms_norm`'s, bit for bit (same reduction)."""
    seed = _seed()
    x = _randn(3, 1, hidden, seed=seed, dtype=dtype, scale=3.0)
    delta = _randn(3, 1, hidden, seed=seed + 1, dtype=dtype)
    w = (1 + _randn(hidden, seed=seed + 2, dtype=torch.float32, scale=0.2)).to(dtype)
    h, y = add_rms_norm(x, delta, w, 1e-6)
    assert torch.equal(h, _eager_add(x, delta)), (
        f"residual add rounds differently: {dtype} {hidden} seed={seed}"
    )
    assert torch.equal(y, rms_norm(h, (hidden,), w, 1e-6)), f"{dtype} {hidden} seed={seed}"
    _assert_close(y, reference_rms_norm(h, (hidden,), w, 1e-6), f"twin {dtype} {hidden} seed={seed}")
    same, y0 = add_rms_norm(x, None, w, 1e-6)
    assert same is x and torch.equal(y0, rms_norm(x, (hidden,), w, 1e-6))
    with pytest.raises(ValueError, match="delta"):
        add_rms_norm(x, delta[:, :, :-1], w, 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16] if not INTERPRET else [torch.bfloat16])
@pytest.mark.parametrize("hidden", [1000, 4096] + ([] if INTERPRET else [576, 14336]))
@pytest.mark.parametrize("with_delta", [False, True])
def test_norm_quantized_in_registers_equals_norm_then_quantizer(dtype, hidden, with_delta):
    """The fused int8 output is exactly the stand-alone quantizer applied to the stored norm (1000: a tail)."""
    seed = _seed()
    x = _randn(2, 1, hidden, seed=seed, dtype=dtype, scale=3.0)
    delta = _randn(2, 1, hidden, seed=seed + 1, dtype=dtype) if with_delta else None
    w = (1 + _randn(hidden, seed=seed + 2, dtype=torch.float32, scale=0.2)).to(dtype)
    h, act = add_rms_norm(x, delta, w, 1e-5, quantize=True)
    h_ref, y_ref = add_rms_norm(x, delta, w, 1e-5)
    assert torch.equal(h, h_ref)
    _assert_same_q8(act, quantize_activations(y_ref), f"{dtype} {hidden} delta={with_delta} seed={seed}")


@pytest.mark.parametrize("ffn", [1000, 2048] + ([] if INTERPRET else [14336]))
def test_silu_mul_quantized_in_registers_equals_silu_mul_then_quantizer(ffn):
    seed = _seed()
    gu = _randn(3, 1, 2 * ffn, seed=seed, dtype=torch.bfloat16, scale=3.0)
    act = silu_mul(gu, quantize=True)
    assert act.codes.shape == (3, 8 * -(-ffn // 32))
    _assert_same_q8(act, quantize_activations(silu_mul(gu)), f"ffn={ffn} seed={seed}")


def _rope_tables(positions: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Llama's cos/sin tables, with sin's first half negated (the roll convention)."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = torch.outer(torch.arange(positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin = emb.sin()
    sin[:, : d // 2] *= -1
    return emb.cos().to(dtype).to(DEVICE), sin.to(dtype).to(DEVICE)


def _caches(batch: int, n_kv: int, ctx: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    """A NaN-filled [B, L=3, 2, KV, C, D] cache: layer 1's k and v slices are non-contiguous views."""
    return torch.full((batch, 3, 2, n_kv, ctx, d), float("nan"), dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_heads", "n_kv", "d"), HEADS)
@pytest.mark.parametrize("batch", ROWS[:2])
def test_rope_kv_write_matches_twin(dtype, n_heads, n_kv, d, batch):
    seed = _seed()
    ctx = 40
    cos, sin = _rope_tables(ctx + 5, d, dtype)
    width = (n_heads + 2 * n_kv) * d
    for step, p in enumerate((0, random.Random(seed).randrange(1, ctx - 1), ctx - 1)):
        tag = f"{dtype} B={batch} H={n_heads} KV={n_kv} D={d} pos={p} seed={seed}"
        qkv = _randn(batch, 1, width, seed=seed + step, dtype=dtype)
        if step == 1:
            qkv = qkv.reshape(batch, width)  # both input forms
        pos = torch.tensor([p], dtype=torch.long, device=DEVICE)
        cache, ref_cache = _caches(batch, n_kv, ctx, d, dtype), _caches(batch, n_kv, ctx, d, dtype)
        q = rope_kv_write(qkv, cos, sin, pos, cache[:, 1, 0], cache[:, 1, 1], n_heads, n_kv)
        ref_q = reference_rope_kv_write(
            qkv, cos, sin, pos, ref_cache[:, 1, 0], ref_cache[:, 1, 1], n_heads, n_kv
        )
        assert q.is_contiguous()
        _assert_close(q, ref_q, f"q {tag}")
        _assert_close(cache[:, 1, 0, :, p], ref_cache[:, 1, 0, :, p], f"k {tag}")
        assert torch.equal(cache[:, 1, 1, :, p], ref_cache[:, 1, 1, :, p]), f"v is a plain copy: {tag}"
        written = torch.zeros(cache.shape, dtype=torch.bool, device=DEVICE)
        written[:, 1, :, :, p] = True
        assert torch.isnan(cache[~written]).all(), f"wrote outside column pos: {tag}"


def test_rope_twin_is_rotate_half_rope():
    """The roll convention with a pre-negated sin is the usual x * cos + rotate_half(x) * sin."""
    d, n_heads, n_kv, p = 64, 2, 1, 7
    cos, sin = _rope_tables(16, d, torch.float32)
    qkv = _randn(1, (n_heads + 2 * n_kv) * d, seed=_seed(), dtype=torch.float32)
    cache = _caches(1, n_kv, 16, d, torch.float32)
    q = reference_rope_kv_write(
        qkv, cos, sin, torch.tensor([p], device=DEVICE), cache[:, 0, 0], cache[:, 0, 1], n_heads, n_kv
    )
    x = qkv.reshape(1, n_heads + 2 * n_kv, 1, d)[:, :n_heads]
    rotate_half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    usual_sin = torch.cat((-sin[p, : d // 2], sin[p, d // 2 :]))  # undo the negation: sin(p * freq)
    textbook = x * cos[p] + rotate_half * usual_sin
    torch.testing.assert_close(q, textbook)


@pytest.mark.parametrize("d", [96, 512])
def test_rope_kv_write_rejects_bad_head_dim(d):
    cos, sin = _rope_tables(8, d, torch.float32)
    cache = _caches(1, 1, 8, d, torch.float32)
    qkv = torch.zeros(1, 3 * d, device=DEVICE)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=f"head_dim={d}"):
        rope_kv_write(qkv, cos, sin, pos, cache[:, 0, 0], cache[:, 0, 1], 1, 1)


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="CUDA graphs need a GPU")
def test_ops_replay_in_a_cuda_graph_with_a_new_position():
    """No host sync inside: a captured step reads pos from device memory on every replay."""
    n_heads, n_kv, d, ctx, hidden = 4, 2, 128, 32, 1000
    cos, sin = _rope_tables(ctx, d, torch.bfloat16)
    cache, ref_cache = _caches(1, n_kv, ctx, d, torch.bfloat16), _caches(1, n_kv, ctx, d, torch.bfloat16)
    x = _randn(1, hidden, seed=_seed(), dtype=torch.bfloat16)
    w = _randn(hidden, seed=_seed(), dtype=torch.bfloat16)
    qkv = _randn(1, (n_heads + 2 * n_kv) * d, seed=_seed(), dtype=torch.bfloat16)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)

    def step():
        q = rope_kv_write(qkv, cos, sin, pos, cache[:, 1, 0], cache[:, 1, 1], n_heads, n_kv)
        return q, silu_mul(rms_norm(x, (hidden,), w, 1e-6))

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        q, y = step()
    for p in (5, 17):
        pos.fill_(p)
        graph.replay()
        ref_q = reference_rope_kv_write(
            qkv, cos, sin, pos, ref_cache[:, 1, 0], ref_cache[:, 1, 1], n_heads, n_kv
        )
        _assert_close(q, ref_q, f"graph q pos={p}")
        _assert_close(cache[:, 1, 0, :, p], ref_cache[:, 1, 0, :, p], f"graph k pos={p}")
        _assert_close(y, reference_silu_mul(reference_rms_norm(x, (hidden,), w, 1e-6)), "graph norm + silu")
