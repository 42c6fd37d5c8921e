"""Triton decode attention vs its PyTorch twin, and the twin vs SDPA.

Runs on a CUDA GPU when one is present. On CPU-only machines the module is skipped, unless Triton's
interpreter is switched on explicitly (`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_attention.py`):
then a smaller set of cases runs on CPU tensors in the interpreter, which checks indexing, masking, the
split merge and the math but not GPU-only behaviour (CUDA graphs, fp16, tensor-core rounding).
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

from xpullm.kernels.triton.attention import decode_attention, reference_decode_attention  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu

DTYPES = [torch.bfloat16, torch.float32] + ([] if INTERPRET else [torch.float16])
# (n_heads, n_kv, head_dim): GQA groups of 2, 3 (padded rows), 7, 4 and 1 (plain multi-head)
HEADS = [(4, 2, 64), (3, 1, 128), (14, 2, 64), (32, 8, 128), (8, 8, 64), (8, 1, 256), (4, 4, 16)]
CTX = [64, 200, 1024]  # 200: neither a block nor a split multiple; 1024: the default splits the columns
# (n_heads, n_kv, head_dim, batch, ctx): every combination on a GPU, a spread of them in the interpreter
CASES = (
    [(4, 2, 64, 3, 200), (3, 1, 128, 1, 64), (3, 1, 128, 3, 200), (14, 2, 64, 1, 200), (4, 2, 64, 1, 1024)]
    if INTERPRET
    else [(*heads, batch, ctx) for heads in HEADS for batch in (1, 3) for ctx in CTX]
)
SPLITS = [1, 2, 3, None]  # None: the default, chosen from C


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _randn(*shape: int, seed: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)


def _assert_close(y: torch.Tensor, ref: torch.Tensor, tag: str) -> None:
    """Same shape and dtype, finite, and a small relative error: 1e-2 for bf16/fp16, 1e-4 for fp32."""
    assert y.shape == ref.shape and y.dtype == ref.dtype, (
        f"{tag}: {y.shape} {y.dtype} vs {ref.shape} {ref.dtype}"
    )
    y32, ref32 = y.float().cpu(), ref.float().cpu()
    assert torch.isfinite(y32).all(), f"{tag}: non-finite output"
    err = ((y32 - ref32).norm() / ref32.norm().clamp_min(1e-12)).item()
    assert err < (1e-4 if y.dtype == torch.float32 else 1e-2), f"{tag}: relative error {err:.2e}"


def _caches(
    batch: int, n_kv: int, ctx: int, d: int, dtype: torch.dtype, pos: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's k and v of two 5-D [L=2, B, KV, C, D] caches, random in columns 0..pos and NaN after.

    k is a plain layer slice (contiguous, at an offset); v's cache is stored [L, KV, B, C, D] and transposed,
    so its batch and head strides are swapped. Both must be read through their strides.
    """
    k = _randn(2, batch, n_kv, ctx, d, seed=seed, dtype=dtype)
    v = _randn(2, n_kv, batch, ctx, d, seed=seed + 1, dtype=dtype).transpose(1, 2)
    k[:, :, :, pos + 1 :] = float("nan")
    v[:, :, :, pos + 1 :] = float("nan")
    return k[1], v[1]


def _query(batch: int, n_heads: int, d: int, dtype: torch.dtype, seed: int, form: int) -> torch.Tensor:
    """q in the three forms a caller passes: [B, H, 1, D], the model's transposed [B, 1, H, D], or [B, H, D]."""
    q = _randn(batch, 1, n_heads, d, seed=seed, dtype=dtype, scale=2.0)  # scale 2: a peaked softmax
    if form == 0:
        return q.transpose(1, 2).contiguous()
    if form == 1:
        return q.transpose(1, 2)
    return q[:, 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n_heads", "n_kv", "d", "batch", "ctx"), CASES)
def test_decode_attention_matches_twin(dtype, n_heads, n_kv, d, batch, ctx):
    seed = _seed()
    positions = (0, random.Random(seed).randrange(1, ctx - 1), ctx - 1)
    for step, (p, n_splits) in enumerate((p, s) for p in positions for s in SPLITS):
        tag = f"{dtype} B={batch} H={n_heads} KV={n_kv} D={d} C={ctx} pos={p} splits={n_splits} seed={seed}"
        q = _query(batch, n_heads, d, dtype, seed + step, form=step % 3)
        k, v = _caches(batch, n_kv, ctx, d, dtype, p, seed + 100 + step)
        pos = torch.tensor([p], dtype=torch.long, device=DEVICE)
        y = decode_attention(q, k, v, pos, d**-0.5, n_splits=n_splits)
        assert y.is_contiguous(), tag
        _assert_close(y, reference_decode_attention(q, k, v, pos, d**-0.5), tag)


def test_twin_matches_sdpa():
    """The twin is SDPA over the filled columns with GQA, in the [B, 1, H * D] layout the o-projection reads."""
    seed = _seed()
    batch, n_heads, n_kv, d, ctx, p = 2, 6, 2, 32, 50, 37
    q = _query(batch, n_heads, d, torch.float32, seed, form=0)
    k = _randn(batch, n_kv, ctx, d, seed=seed + 1, dtype=torch.float32)
    v = _randn(batch, n_kv, ctx, d, seed=seed + 2, dtype=torch.float32)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k[:, :, : p + 1], v[:, :, : p + 1], scale=0.3, enable_gqa=True
    )
    pos = torch.tensor([p], dtype=torch.int32, device=DEVICE)
    ref = reference_decode_attention(q, k, v, pos, 0.3)
    torch.testing.assert_close(ref, sdpa.transpose(1, 2).reshape(batch, 1, n_heads * d))


@pytest.mark.parametrize("n_splits", [5, 40])
def test_splits_past_pos_and_past_the_cache_add_nothing(n_splits):
    """Splits whose columns all lie beyond pos (or beyond C) carry m = -inf, l = 0: the merge must skip them."""
    seed = _seed()
    n_heads, n_kv, d, ctx = 4, 2, 64, 100
    for p in (0, 20, ctx - 1):
        q = _query(1, n_heads, d, torch.bfloat16, seed + p, form=1)
        k, v = _caches(1, n_kv, ctx, d, torch.bfloat16, p, seed + p + 1)
        pos = torch.tensor([p], dtype=torch.int32, device=DEVICE)
        y = decode_attention(q, k, v, pos, d**-0.5, n_splits=n_splits)
        _assert_close(y, reference_decode_attention(q, k, v, pos, d**-0.5), f"pos={p} seed={seed}")


def test_empty_batch():
    k = torch.zeros(0, 2, 16, 64, dtype=torch.bfloat16, device=DEVICE)
    q = torch.zeros(0, 4, 1, 64, dtype=torch.bfloat16, device=DEVICE)
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)
    assert decode_attention(q, k, k, pos, 0.125).shape == (0, 1, 256)


def _bad_args(case: str) -> dict:
    """Valid arguments with one thing wrong, named by `case`."""
    q = torch.zeros(1, 4, 1, 64, dtype=torch.bfloat16, device=DEVICE)
    k = torch.zeros(1, 2, 32, 64, dtype=torch.bfloat16, device=DEVICE)
    args = dict(q=q, k_cache=k, v_cache=k, pos=torch.zeros(1, dtype=torch.long, device=DEVICE), scale=0.125)
    if case == "head_dim":
        args.update(
            q=q.new_zeros(1, 4, 1, 96), k_cache=k.new_zeros(1, 2, 32, 96), v_cache=k.new_zeros(1, 2, 32, 96)
        )
    elif case == "groups":
        args.update(q=q[:, :3])
    elif case == "tokens":
        args.update(q=q.new_zeros(1, 4, 2, 64))
    elif case == "batch":
        args.update(q=q.new_zeros(2, 4, 1, 64))
    elif case == "cache_shape":
        args.update(v_cache=k[:, :, :16])
    elif case == "dtype":
        args.update(k_cache=k.half())
    elif case == "pos_dtype":
        args.update(pos=torch.zeros(1, device=DEVICE))
    elif case == "pos_numel":
        args.update(pos=torch.zeros(2, dtype=torch.long, device=DEVICE))
    elif case == "pos_device":
        args.update(pos=torch.zeros(1, dtype=torch.long, device="meta"))
    elif case == "n_splits":
        args.update(n_splits=0)
    return args


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("head_dim", "head_dim=96"),
        ("groups", "H=3 query heads and KV=2"),
        ("tokens", "one query token per row"),
        ("batch", r"q must be \[1, H, 1, 64\]"),
        ("cache_shape", "k_cache and v_cache must both be"),
        ("dtype", "share one dtype"),
        ("pos_dtype", "pos must be a one-element int64"),
        ("pos_numel", "pos must be a one-element int64"),
        ("pos_device", "on one device"),
        ("n_splits", "n_splits=0"),
    ],
)
def test_bad_arguments_raise_a_helpful_error(case, message):
    args = _bad_args(case)
    with pytest.raises(ValueError, match=message):
        decode_attention(**args)
    args.pop("n_splits", None)
    if case != "n_splits":
        with pytest.raises(ValueError, match=message):
            reference_decode_attention(**args)


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="CUDA graphs need a GPU")
def test_replays_in_a_cuda_graph_with_a_new_position():
    """No host sync and no pos-dependent launch: a captured call reads pos from device memory on every replay."""
    seed = _seed()
    batch, n_heads, n_kv, d, ctx = 2, 8, 2, 128, 1024
    q = _query(batch, n_heads, d, torch.bfloat16, seed, form=1)
    k_full = _randn(2, batch, n_kv, ctx, d, seed=seed + 1, dtype=torch.bfloat16)
    v_full = _randn(2, batch, n_kv, ctx, d, seed=seed + 2, dtype=torch.bfloat16)
    k_cache, v_cache = k_full.clone(), v_full.clone()
    pos = torch.zeros(1, dtype=torch.long, device=DEVICE)

    def step():
        split = decode_attention(q, k_cache[1], v_cache[1], pos, d**-0.5)  # default: several splits
        whole = decode_attention(q, k_cache[1], v_cache[1], pos, d**-0.5, n_splits=1)
        return split, whole

    step()  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        split, whole = step()
    for p in (0, 300, 777, ctx - 1, 5):
        k_cache.copy_(k_full)
        v_cache.copy_(v_full)
        k_cache[:, :, :, p + 1 :] = float("nan")
        v_cache[:, :, :, p + 1 :] = float("nan")
        pos.fill_(p)
        graph.replay()
        ref = reference_decode_attention(q, k_cache[1], v_cache[1], pos, d**-0.5)
        _assert_close(split, ref, f"graph, default splits, pos={p} seed={seed}")
        _assert_close(whole, ref, f"graph, one split, pos={p} seed={seed}")
