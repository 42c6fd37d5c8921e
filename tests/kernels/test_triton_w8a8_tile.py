"""The `w8a8_t` tiles (8-bit weight bytes x 8-bit activation blocks on fp8 / int8 tensor cores) against their twin.

Twin (`w8a8_tile.reference_quantize`, `w8a8_tile.reference`): each block of 128 (fp8) / 64 (int8) elements of an
activation row rounded as the quantizer rounds it (absmax / qmax, IEEE division; int8 ties to even, e4m3 to the
nearest value), times the dequantized weight in fp32. The quantizer's codes and scales must equal the twin's bit
for bit, in the weight's permuted K order; the product must equal the twin up to fp32 summation order and the
bf16 output. Runs on a CUDA GPU and on CPU under `TRITON_INTERPRET=1` (a small subset, which `make test` runs).
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
from xpullm.kernels.triton import LaunchConfig, pack_weight, run, w8a8_tile  # noqa: E402
from xpullm.kernels.triton.configs import CONFIG_TABLES, NARROW_W8A8_T, candidates, valid  # noqa: E402
from xpullm.kernels.triton.launch import _prepare_x, dequantize  # noqa: E402
from xpullm.kernels.triton.w8a8 import FORMATS as ROUNDING  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu
FORMATS = tuple(w8a8_tile.ACT_BLOCK)


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _weight(fmt: str, n: int, k: int, seed: int, group: int = 0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return pack_weight(get_format(fmt).quantize(w, group), DEVICE)


def _rows(m: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * torch.rand(m, 1, generator=gen) * 4
    x[:, :: max(1, k // 7)] *= 8  # outlier channels: their blocks get coarser scales than the rest
    if m > 1:
        x[1] = 0.0  # an all-zero row: the scale floor, zero codes
    if k > 200:
        x[0, 128:192] = 0.0  # and one all-zero block
    return x.to(device=DEVICE, dtype=torch.bfloat16)


def _cpu(tw):
    if tw.device.type == "cpu":
        return tw
    return replace(tw, words=tw.words.cpu(), scales=tw.scales.cpu(), lut=tw.lut.cpu())


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantizer_writes_the_twins_codes_and_scales_in_the_weights_k_order(fmt: str) -> None:
    seed = _seed()
    rnd = random.Random(seed)
    dtype, _, factor = ROUNDING[fmt]
    block = w8a8_tile.act_block(fmt)
    for _ in range(3):
        n, k, m = 16 * rnd.randint(1, 4), rnd.randint(8, 700), rnd.randint(1, 5)
        tw = _weight(fmt, n, k, seed)
        x = _rows(m, k, seed + 1)
        codes, scales = w8a8_tile.quantize(_prepare_x(x, tw), tw)
        q, want_scales = w8a8_tile.reference_quantize(x.float().cpu(), fmt)
        nb = -(-tw.kx // block)
        assert codes.shape == (m, nb * block) and scales.shape == (m, nb), (seed, n, k, m)
        q = torch.nn.functional.pad(q, (0, nb * block - q.shape[1]))
        # position 4 l + i of each block of 16 holds element 4 i + l, as the weight's bytes do
        want = q.to(dtype).view(m, -1, 4, 4).transpose(-1, -2).reshape(m, -1)
        assert torch.equal(codes.cpu().view(torch.uint8), want.view(torch.uint8)), (seed, fmt, n, k, m)
        assert torch.equal(scales.cpu(), want_scales * factor), (seed, fmt, n, k, m)
        assert m == 1 or not codes[1].view(torch.uint8).any()  # the zero row


def _configs(rnd: random.Random, fmt: str, m: int) -> list[LaunchConfig]:
    """A random handful of the table's tiles and of the narrow (1-2 warp, `mma.sync`) ones (block_m from the
    rows), plus one of every split kind."""
    block_m = 16 if m <= 16 else 32
    table = [replace(c, block_m=block_m) for c in CONFIG_TABLES["cuda"]["w8a8_t"]]
    return [
        *rnd.sample(table, 2),
        *(replace(c, block_m=block_m) for c in rnd.sample(NARROW_W8A8_T, 2)),
        LaunchConfig("w8a8_t", 16, 32, 8 if fmt == "fp8_e4m3" else 4, 3, 4, 2, fixup=True),
        LaunchConfig("w8a8_t", 16, 16, 16, 2, 4, 2),  # splits summed by the reduce kernel
        LaunchConfig("w8a8_t", 16, 32, 8, 3, 4, 2, fixup=True, tile_quantizes=True),  # no quantizer launch
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_product_matches_its_twin_over_random_shapes_and_tiles(fmt: str) -> None:
    seed = _seed()
    rnd = random.Random(seed)
    big = 1 if INTERPRET else 8
    shapes = [(16 * rnd.randint(1, 4 * big), rnd.randint(8, 600 * big), rnd.randint(1, 40)) for _ in range(2)]
    shapes += [(48, 384, 17)] + [(4096, 4096, 16), (1024, 14336, 64)] * (not INTERPRET)
    for n, k, m in shapes:
        tw = _weight(fmt, n, k, seed + n)
        x = _rows(m, k, seed + m)
        ref = w8a8_tile.reference(x.float().cpu(), _cpu(tw))
        scale = ref.abs().max().item()
        for cfg in _configs(rnd, fmt, m):
            if not valid(cfg, tw, x.dtype):
                continue
            y = run(_prepare_x(x, tw), tw, cfg)
            assert y.shape == (m, n) and y.dtype == torch.bfloat16
            # exact up to fp32 summation order; the product comes back in bf16 (8 significant bits)
            torch.testing.assert_close(
                y.float().cpu(),
                ref,
                rtol=2**-7,
                atol=2**-8 * scale,
                msg=f"seed {seed} {fmt} {n}x{k} m={m} {cfg}",
            )
        # and it is the weight-only product up to the activations' rounding, not something else. Checked per
        # element, so no statistical bound (a norm ratio over the 16 outputs of a one-row shape drew 1.8% once):
        # each activation the twin multiplies is x to within its rounding - int8: half a step of its block's
        # scale; e4m3: 2**-4 relative (3 mantissa bits), or half the smallest subnormal step - and the twin's
        # product is those activations times the weight as the layout decodes it.
        xf = x.float().cpu()
        q, block_scale = w8a8_tile.reference_quantize(xf, fmt)
        step = block_scale.repeat_interleave(w8a8_tile.act_block(fmt), 1)[:, :k]
        rows = q[:, :k] * step
        if fmt == "sym_int8":
            bound = step / 2
        else:
            bound = torch.maximum(xf.abs() * 2**-4, step * 2**-10)
        excess = ((rows - xf).abs() - bound * (1 + 2**-12)).max().item()
        assert excess <= 0, (seed, fmt, n, k, m, excess)
        weight = dequantize(tw, torch.float32).cpu()
        torch.testing.assert_close(ref, rows @ weight.t(), rtol=2**-16, atol=2**-16 * scale)


def test_out_buffer_is_filled_and_returned() -> None:
    tw = _weight("sym_int8", 48, 200, 3)
    x = _rows(5, 200, 4)
    out = torch.full((5, 48), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    y = run(_prepare_x(x, tw), tw, LaunchConfig("w8a8_t", 16, 16, 4, 2, 4, 2, fixup=True), out=out)
    assert y is out and not torch.isnan(out).any()


def test_grouped_weights_float32_rows_and_partial_blocks_are_declined_with_the_reason() -> None:
    grouped = _weight("sym_int8", 32, 128, 0, group=32)
    fp8 = _weight("fp8_e4m3", 32, 256, 0)
    tile = LaunchConfig("w8a8_t", 16, 64, 8, 1, 4, 3)
    assert not valid(tile, grouped, torch.bfloat16)  # a group scale cannot leave a block's K sum
    assert not valid(tile, fp8, torch.float32)  # fp32 callers asked for exact-as-asked numerics
    assert not valid(replace(tile, block_kb=4), fp8, torch.bfloat16)  # 64 bytes: half an fp8 block
    assert valid(replace(tile, block_kb=4), _weight("sym_int8", 32, 256, 0), torch.bfloat16)
    with pytest.raises(ValueError, match="one scale per row"):
        run(_prepare_x(_rows(2, 128, 0), grouped), grouped, tile)
    with pytest.raises(ValueError, match="whole 128-element"):
        run(_prepare_x(_rows(2, 256, 0), fp8), fp8, replace(tile, block_kb=4))


def test_tuner_times_the_tiles_for_fp8_by_default_and_int8_only_with_all(monkeypatch) -> None:
    fp8, int8 = _weight("fp8_e4m3", 64, 512, 0), _weight("sym_int8", 64, 512, 0)

    def tiles(tw, m: int) -> list[LaunchConfig]:
        return [c for c in candidates("cuda", tw, m, torch.bfloat16) if c.path == "w8a8_t"]

    monkeypatch.setenv("XPULLM_TRITON_W8A8_T", "off")
    assert not tiles(fp8, 16) and not tiles(int8, 16)
    monkeypatch.delenv("XPULLM_TRITON_W8A8_T", raising=False)  # the default: fp8 weights only
    assert tiles(fp8, 16) and not tiles(int8, 16)
    assert {c.block_m for c in tiles(fp8, 8)} == {16} and {c.block_m for c in tiles(fp8, 64)} == {64}
    assert not tiles(fp8, 1)  # one row keeps the GEMVs
    monkeypatch.setenv("XPULLM_TRITON_W8A8_T", "all")
    assert tiles(int8, 32)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiles_that_round_their_own_rows_give_the_quantizers_numbers_bit_for_bit(fmt: str) -> None:
    """`tile_quantizes` rounds each block inside the programs that multiply it: the same codes and scales as the
    quantizer's launch, so the same sums in the same order."""
    seed = _seed()
    n, k, m = 48, 300 if INTERPRET else 4100, 19
    tw = _weight(fmt, n, k, seed)
    x = _prepare_x(_rows(m, k, seed + 1), tw)
    for cfg in (
        LaunchConfig("w8a8_t", 16, 16, 8, 2, 4, 2, fixup=True),
        LaunchConfig("w8a8_t", 32, 32, 16, 1, 4, 3),
    ):
        want = run(x, tw, cfg)
        got = run(x, tw, replace(cfg, tile_quantizes=True))
        assert torch.equal(got, want), (seed, fmt, cfg)


def test_a_tuned_record_of_a_switched_off_path_is_passed_over(monkeypatch) -> None:
    """The H100 table records `w8a8_t` for fp8 batches: XPULLM_TRITON_W8A8_T=off must still keep them on the
    weight-only tiles."""
    from xpullm.kernels.triton import launch

    tw = _weight("fp8_e4m3", 64, 512, 0)
    tile = LaunchConfig("w8a8_t", 16, 64, 8, 1, 4, 4)
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "0")  # the untimed default where the record is passed over
    launch.select_config(tw, 16, torch.bfloat16)  # the packaged tables are loaded before the record is set
    monkeypatch.setitem(launch._tuned, launch._key(tw, 16, torch.bfloat16), tile)
    monkeypatch.delenv("XPULLM_TRITON_W8A8_T", raising=False)
    assert launch.select_config(tw, 16, torch.bfloat16) == tile
    monkeypatch.setenv("XPULLM_TRITON_W8A8_T", "off")
    assert launch.select_config(tw, 16, torch.bfloat16).path == "mma_t"


def test_with_timing_on_a_record_of_a_switched_off_path_is_timed_anew(monkeypatch) -> None:
    """Timing is on by default (off only here, in the interpreter): the tuner must not hand the switched-off
    record back either, but time the candidates and keep the winner. The timings are stand-ins, the runs real."""
    from xpullm.kernels.triton import launch

    tw = _weight("fp8_e4m3", 64, 512, 0)
    key = launch._key(tw, 16, torch.bfloat16)
    tile = LaunchConfig("w8a8_t", 16, 64, 8, 1, 4, 4)
    plain = LaunchConfig("mma_t", 16, 64, 4, 1, 4, 2, plane_dots=True)
    launch.select_config(tw, 16, torch.bfloat16)  # the packaged tables are loaded before the record is set
    monkeypatch.setitem(launch._tuned, key, tile)
    monkeypatch.setenv("XPULLM_TRITON_W8A8_T", "off")
    monkeypatch.setattr(launch, "autotune_enabled", lambda: True)
    monkeypatch.setattr(launch, "candidates", lambda *args: [plain])
    ran: list[torch.Tensor] = []
    monkeypatch.setattr(launch, "time_cold", lambda fn, device: ran.append(fn()) or 1.0)
    assert launch.select_config(tw, 16, torch.bfloat16) == plain
    assert ran and launch._tuned[key] == plain
    monkeypatch.delenv("XPULLM_TRITON_W8A8_T")
    assert launch.select_config(tw, 16, torch.bfloat16) == plain  # the measured winner stays
