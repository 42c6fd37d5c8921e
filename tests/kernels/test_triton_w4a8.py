"""The `w4a8` path (sym_int4 codes as int8 bytes x int8 activation rows on int8 tensor cores) against its twin.

Twin (`w4a8.reference_quantize`, `w4a8.reference`): each 128-element group of an activation row rounded as the
quantizer rounds it (absmax / 127, IEEE division, ties to even), written in the weight bytes' decode order; the
product as each group's exact integer dot times both group scales. The quantizer's codes and scales must equal
the twin's bit for bit; the product must equal it up to fp32 summation order (fp32 rows) or the bf16 output.
Runs on a CUDA GPU and on CPU under `TRITON_INTERPRET=1` (a small subset, which `make test` runs).
"""

from __future__ import annotations

import os
import random
from dataclasses import replace

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

from xpullm.formats import get_format  # noqa: E402
from xpullm.kernels.triton import LaunchConfig, pack_weight, run, w4a8  # noqa: E402
from xpullm.kernels.triton.configs import CONFIG_TABLES, candidates, valid  # noqa: E402
from xpullm.kernels.triton.launch import _prepare_x, dequantize  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _weight(n: int, k: int, group: int, seed: int, fmt: str = "sym_int4"):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return get_format(fmt).quantize(w, group)


def _rows(m: int, k: int, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 4
    if m > 1:
        x[1] = 0.0  # an all-zero row: zero scales, zero codes
    if k > 200:
        x[0, 128:256] = 0.0  # and one all-zero group
    return x.to(device=DEVICE, dtype=dtype)


def test_tile_order_is_a_permutation_matching_the_weight_bytes() -> None:
    """Position f = 64 h + 4 w + b of a group pairs with nibble 2 b + h of word w, which the layout fills with
    element 32 (w // 4) + 4 (2 b + h) + w % 4: checked on a weight whose codes count the elements."""
    order = w4a8._order(torch.device("cpu"))
    assert sorted(order.tolist()) == list(range(128))
    codes = (torch.arange(128) % 16).to(torch.uint8)[None, :]
    from xpullm.kernels.triton.layout import _interleave_rows

    words = _interleave_rows(codes, 8, 128).view(torch.uint8).reshape(-1)  # 16 words = 64 bytes
    for f in range(128):
        h, w, b = f // 64, (f % 64) // 4, f % 4
        byte = words[4 * w + b].item()
        assert ((byte >> 4) if h else (byte & 0xF)) == order[f].item() % 16, f


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantizer_matches_its_twin_bit_for_bit(dtype: torch.dtype) -> None:
    rnd = random.Random(_seed())
    for _ in range(3):
        k, m = rnd.randint(1, 700), rnd.randint(1, 20)
        kx = -(-k // 128) * 128
        x = _rows(m, k, rnd.randrange(1 << 30), dtype)
        x[:, -1] = 0.5 * x[:, 0]  # exact halves after scaling are rare; the twin must round them the same way
        q, s = w4a8.quantize(x, kx)
        rq, rs = w4a8.reference_quantize(x.cpu(), kx)
        assert torch.equal(q.cpu(), rq), (k, m)
        assert torch.equal(s.cpu(), rs), (k, m)


# (N, K, M, group, config): ragged N / K / M (masks), K steps of 1 and 2 dots, split-K summed in the kernel or by
# the reduce kernel, M tiles of 16 and 32; more and larger on the GPU
CASES = [
    (64, 512, 5, 128, LaunchConfig("w4a8", 16, 64, 4, 1, 4, 2)),
    (100, 700, 17, 128, LaunchConfig("w4a8", 16, 64, 8, 1, 4, 2)),
    (128, 1024, 33, 256, LaunchConfig("w4a8", 32, 64, 4, 2, 4, 2, fixup=True)),
    (64, 1024, 20, 128, LaunchConfig("w4a8", 16, 64, 4, 2, 4, 2)),
    (100, 700, 17, 128, LaunchConfig("w4a8", 16, 64, 8, 2, 4, 2, prefetch=True)),  # scales a dot ahead
    (64, 512, 9, 256, LaunchConfig("w4a8", 16, 64, 4, 1, 4, 2, prefetch=True)),
]
if not INTERPRET:
    CASES += [(4096, 4096, 16, 128, replace(cfg, block_m=16)) for cfg in CONFIG_TABLES["cuda"]["w4a8"]] + [
        (6144, 4096, 8, 128, LaunchConfig("w4a8", 16, 128, 4, 4, 4, 3, fixup=True)),
        (4096, 14336, 64, 128, LaunchConfig("w4a8", 64, 64, 8, 4, 4, 3, fixup=True)),
        (1000, 1030, 100, 256, LaunchConfig("w4a8", 32, 128, 4, 2, 8, 3)),
        (28672, 4096, 32, 128, LaunchConfig("w4a8", 32, 128, 4, 2, 4, 3, fixup=True)),
        (4096, 4096, 512, 128, LaunchConfig("w4a8", 64, 128, 4, 1, 8, 3)),
        (1000, 1030, 50, 128, LaunchConfig("w4a8", 64, 64, 8, 2, 4, 3, prefetch=True, fixup=True)),
    ]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_product_matches_its_twin(case: int) -> None:
    n, k, m, group, cfg = CASES[case]
    seed = _seed()
    qw = _weight(n, k, group, seed)
    tw = pack_weight(qw, DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        x2 = _prepare_x(_rows(m, k, seed + 1, dtype), tw)
        out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)
        y = run(x2, tw, cfg, out=out)
        assert y is out and torch.isfinite(y).all(), f"{cfg} seed={seed}: an element was not written"
        ref = w4a8.reference(x2.cpu(), _cpu(tw))
        scale = ref.abs().max().item()
        if dtype == torch.float32:  # exact integer dots; only the fp32 sums' order differs
            torch.testing.assert_close(y.cpu(), ref, rtol=1e-5, atol=1e-5 * scale, msg=f"{cfg} seed={seed}")
        else:
            torch.testing.assert_close(
                y.float().cpu(), ref, rtol=2**-7, atol=2**-8 * scale, msg=f"{cfg} seed={seed}"
            )
    # and it is the weight-only product up to the activations' rounding, not something else
    x = _rows(m, k, seed + 1, torch.float32)
    weight_only = x.cpu() @ qw.dequantize(torch.float32).T
    err = ((ref - weight_only).norm() / weight_only.norm()).item()
    assert err < 1e-2, f"{cfg} seed={seed}: int8 rows moved the product by {err:.2e}"


def _cpu(tw):
    if tw.device.type == "cpu":
        return tw
    return replace(tw, words=tw.words.cpu(), scales=tw.scales.cpu(), lut=tw.lut.cpu())


def test_random_shapes_and_tiles_match_the_twin() -> None:
    """Property test: random N, K, M, group and table tile (K splits included) against the twin."""
    rnd = random.Random(seed := _seed())
    table = CONFIG_TABLES["cuda"]["w4a8"]
    for _ in range(3 if INTERPRET else 25):
        big = 1 if INTERPRET else 8
        n, k, m = (
            16 * rnd.randint(1, 8 * big),
            rnd.randint(1, 600 * big),
            rnd.randint(1, 40 if INTERPRET else 300),
        )
        group = rnd.choice((128, 256))
        tw = pack_weight(_weight(n, k, group, rnd.randrange(1 << 30)), DEVICE)
        cfg = rnd.choice([c for c in table if c.block_n <= (64 if INTERPRET else 256)])
        cfg = LaunchConfig(**{**cfg.__dict__, "block_m": rnd.choice((16, 32, 64))})
        if not valid(cfg, tw, torch.float32):
            cfg = LaunchConfig(**{**cfg.__dict__, "split_k": 1, "fixup": False})
        x2 = _prepare_x(_rows(m, k, rnd.randrange(1 << 30), torch.float32), tw)
        y = run(x2, tw, cfg)
        ref = w4a8.reference(x2.cpu(), _cpu(tw))
        torch.testing.assert_close(
            y.cpu(),
            ref,
            rtol=1e-5,
            atol=1e-5 * ref.abs().max().item(),
            msg=f"{n}x{k} m={m} {cfg} seed={seed}",
        )


def test_other_formats_and_small_groups_are_declined_with_the_reason() -> None:
    x = torch.zeros(4, 256, dtype=torch.bfloat16, device=DEVICE)
    cfg = LaunchConfig("w4a8", 16, 64, 4, 1, 4, 2)
    for fmt, group in (
        ("sym_int4", 32),
        ("sym_int4", 64),
        ("asym_int4", 128),
        ("nf4", 128),
        ("sym_int8", 128),
    ):
        tw = pack_weight(_weight(32, 256, group, 0, fmt), DEVICE)
        assert not w4a8.supports(tw, x.dtype) and not valid(cfg, tw, x.dtype), (fmt, group)
        with pytest.raises(ValueError, match="use mma_t"):
            run(_prepare_x(x, tw), tw, cfg)
    tw = pack_weight(_weight(32, 256, 128, 0), DEVICE)
    with pytest.raises(ValueError, match="block_m >= 16"):
        run(_prepare_x(x, tw), tw, LaunchConfig("w4a8", 8, 64, 4, 1, 4, 2))


def test_tuner_times_w4a8_only_when_asked_and_never_for_one_row(monkeypatch) -> None:
    tw = pack_weight(_weight(64, 1024, 128, 0), DEVICE)
    monkeypatch.delenv("XPULLM_TRITON_W4A8", raising=False)  # off: it rounds the activations
    assert all(c.path != "w4a8" for c in candidates("cuda", tw, 16, torch.bfloat16))
    monkeypatch.setenv("XPULLM_TRITON_W4A8", "1")
    for m in (2, 16, 64, 512):
        pool = [c for c in candidates("cuda", tw, m, torch.bfloat16) if c.path == "w4a8"]
        assert pool and all(c.block_m >= 16 for c in pool), m
    assert all(c.path != "w4a8" for c in candidates("cuda", tw, 1, torch.bfloat16))
    g32 = pack_weight(_weight(64, 1024, 32, 0), DEVICE)
    assert all(c.path != "w4a8" for c in candidates("cuda", g32, 16, torch.bfloat16))


def test_dequantize_sees_the_same_codes() -> None:
    """The tile reads the words in place, as every other path does: its product with one-hot rows is the
    dequantized weight's column (exact int8 activations: 127 / 127)."""
    tw = pack_weight(_weight(64, 384, 128, 5), DEVICE)
    x = torch.zeros(16, tw.kx, dtype=torch.float32, device=DEVICE)
    cols = torch.arange(16) * 23
    x[torch.arange(16), cols] = 1.0
    y = run(x, tw, LaunchConfig("w4a8", 16, 64, 4, 1, 4, 2))
    w = dequantize(tw, torch.float32)
    torch.testing.assert_close(y.cpu(), w[:, cols].T.cpu(), rtol=1e-6, atol=1e-7)
