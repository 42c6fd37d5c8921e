"""Triton low-bit kernels vs the reference twin (dequantize in fp32, then matmul in fp32).

Runs on a CUDA GPU when one is present. On CPU-only machines the module is skipped, unless Triton's
interpreter is switched on explicitly (`TRITON_INTERPRET=1 pytest tests/kernels/test_triton_kernels.py`): then a
small subset of shapes runs on CPU tensors (about 30 s on 2 cores), which checks the kernels' indexing,
masking and decoding but not GPU-only behaviour (tuning, tensor-core layouts).
"""

from __future__ import annotations

import itertools
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
from xpullm.kernels.triton import (  # noqa: E402
    LaunchConfig,
    TritonLowBitKernel,
    dequantize,
    pack_weight,
    run,
    run_q8,
    tune,
)
from xpullm.kernels.triton.configs import Q8_FORMATS, valid  # noqa: E402
from xpullm.kernels.triton.launch import _prepare_x, one_step, whole_tiles  # noqa: E402

DEVICE = torch.device("cuda" if HAS_CUDA and not INTERPRET else "cpu")
pytestmark = pytest.mark.gpu

# (format, group size); 0 = one group per row
FORMATS = [
    ("sym_int4", 32),
    ("sym_int4", 128),
    ("asym_int4", 32),
    ("asym_int4", 256),
    ("nf4", 64),
    ("fp4", 32),
    ("sym_int8", 0),
    ("sym_int8", 32),
    ("fp8_e4m3", 0),
    ("fp8_e4m3", 128),
    ("fp8_e5m2", 64),
]
if INTERPRET:  # the interpreter runs every program in Python: keep one group size per format
    FORMATS = [
        f
        for f in FORMATS
        if f not in {("sym_int4", 128), ("asym_int4", 256), ("sym_int8", 32), ("fp8_e4m3", 128)}
    ]

# (N, K): aligned, and not divisible by any block size (K padding, N masking, partial K steps)
SHAPES = [(64, 256), (37, 200), (130, 96)] if INTERPRET else [
    (64, 256), (37, 200), (130, 96), (1, 64), (300, 520), (1000, 1030), (4096, 4096), (2048, 11008),
]  # fmt: skip
ROWS = [1, 3, 16, 33] if INTERPRET else [1, 2, 3, 5, 8, 16, 17, 64, 300]

# Every program path, with tiles small enough that the test shapes take several K steps and N tiles.
PATHS = {
    "gemv": LaunchConfig("gemv", 1, 16, 2, 1, 4, 1),
    "gemv_split": LaunchConfig("gemv", 1, 16, 2, 2, 4, 1),
    "gemv_wide": LaunchConfig("gemv", 1, 32, 8, 1, 4, 1),  # one scale per row per step at g>=256 (8-bit)
    "gemv_prefetch": LaunchConfig("gemv", 1, 16, 2, 1, 4, 1, prefetch=True),
    "gemv_prefetch_split": LaunchConfig("gemv", 1, 8, 4, 2, 2, 1, prefetch=True),
    "gemv_q8": LaunchConfig("gemv_q8", 1, 16, 2, 1, 4, 1),
    "gemv_q8_split": LaunchConfig("gemv_q8", 1, 8, 4, 2, 4, 1),
    "gemv_q8_prefetch": LaunchConfig("gemv_q8", 1, 16, 2, 1, 4, 1, prefetch=True),
    "gemv_q8_prefetch_split": LaunchConfig("gemv_q8", 1, 8, 4, 2, 2, 1, prefetch=True),
    "gemv_q8_rows": LaunchConfig("gemv_q8", 4, 16, 2, 1, 4, 1),  # 4 activation rows per program
    "gemv_q8_rows_prefetch_split": LaunchConfig("gemv_q8", 16, 8, 4, 2, 4, 1, prefetch=True),
    "dot": LaunchConfig("dot", 16, 32, 4, 1, 4, 2),
    "dot_split": LaunchConfig("dot", 16, 16, 4, 2, 4, 2),
    "dot_prefill": LaunchConfig("dot", 32, 64, 4, 1, 4, 2),
    "dequant": LaunchConfig("dequant"),
}
if INTERPRET:  # fewer, larger programs: the interpreter's cost is per program and per K step
    PATHS.pop("gemv_wide")
    PATHS.pop("dot")  # dot_split and dot_prefill cover the same code
    PATHS["gemv"] = LaunchConfig("gemv", 1, 32, 2, 1, 4, 1)
    PATHS["gemv_split"] = LaunchConfig("gemv", 1, 32, 4, 2, 4, 1)
    PATHS.pop("gemv_prefetch")  # the split variant covers the prefetch loop and its split boundaries
    PATHS["gemv_prefetch_split"] = LaunchConfig("gemv", 1, 32, 2, 2, 4, 1, prefetch=True)
    PATHS.pop("gemv_q8")  # the split variant covers it
    PATHS["gemv_q8_split"] = LaunchConfig("gemv_q8", 1, 32, 4, 2, 4, 1)
    PATHS.pop("gemv_q8_prefetch")
    PATHS["gemv_q8_prefetch_split"] = LaunchConfig("gemv_q8", 1, 32, 2, 2, 4, 1, prefetch=True)
    PATHS["gemv_q8_rows"] = LaunchConfig("gemv_q8", 4, 32, 4, 1, 4, 1)
    PATHS["gemv_q8_rows_prefetch_split"] = LaunchConfig("gemv_q8", 2, 32, 2, 2, 4, 1, prefetch=True)


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    """Untimed default configurations, so a test run does not compile every candidate."""
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "0")


def _seed() -> int:
    return random.SystemRandom().randrange(2**31)  # fresh inputs every run; printed on failure


def _weight(fmt: str, gs: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    w[:, : max(1, k // 50)] *= 20  # a few outlier columns, as real checkpoints have
    return get_format(fmt).quantize(w, gs)


def _reference(x: torch.Tensor, qw) -> torch.Tensor:
    return x.float().cpu() @ qw.dequantize(torch.float32).T


def _int8_twin(x: torch.Tensor, qw) -> torch.Tensor:
    """What `gemv_q8` computes: x quantized per block of 32 to int8, times the decoded weight (fp32).

    int8 activations add ~5.4e-3 relative error to the fp32 reference (median over seeds), with a fat tail on
    these test weights (2% outlier columns x 20): on the interpreter's small shapes 0.5-4.5% of seeds pass 1e-2,
    while on the GPU shapes the maximum stays under 7e-3. So the interpreter checks `gemv_q8` against this exact
    twin, and the GPU runs check it against the fp32 reference as well.
    """
    from xpullm.kernels.cpu_native import reference_int8_activations

    return reference_int8_activations(x.float().cpu(), qw, divide=True)  # the Triton kernels divide


def _check(y: torch.Tensor, ref: torch.Tensor, tag: str) -> None:
    y = y.float().cpu()
    assert y.shape == ref.shape, tag
    assert torch.isfinite(y).all(), f"{tag}: non-finite output"
    err = ((y - ref).norm() / ref.norm().clamp_min(1e-12)).item()
    assert err < 1e-2, f"{tag}: relative error {err:.2e}"


def _activations(m: int, k: int, seed: int, dtype=torch.bfloat16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(m, k, generator=g).to(dtype).to(DEVICE)


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_matmul_matches_reference(fmt, gs, n, k):
    """The registered kernel object, default configuration per row count, vs the reference."""
    seed = _seed()
    qw = _weight(fmt, gs, n, k, seed)
    kernel = TritonLowBitKernel()
    assert kernel.supports(qw)
    state = kernel.prepare(qw, DEVICE)
    rows = ROWS if not INTERPRET or (n, k) == SHAPES[0] else ROWS[:2]
    for m in rows:
        x = _activations(m, k, seed + m)
        _check(kernel.matmul(x, state), _reference(x, qw), f"{fmt} g{gs} {n}x{k} m={m} seed={seed}")


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_overwrites_poisoned_output(fmt, gs, path):
    """Each program path on a non-divisible shape, writing into NaN-filled output and split-K workspace."""
    cfg = PATHS[path]
    seed = _seed()
    n, k, m = (37, 200, 2 if cfg.path.startswith("gemv") else 3) if INTERPRET else (1000, 1030, 21)
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    x = _activations(m, k, seed)
    out = torch.full((m, n), float("nan"), dtype=x.dtype, device=DEVICE)
    ws = torch.full((cfg.split_k, m, n), float("nan"), dtype=torch.float32, device=DEVICE)
    if cfg.path == "gemv_q8" and fmt not in Q8_FORMATS:
        with pytest.raises(ValueError, match="sym_int4 and asym_int4 weights only"):
            run(_prepare_x(x, tw), tw, cfg, out=out)
        return
    y = run(_prepare_x(x, tw), tw, cfg, out=out, workspace=ws if cfg.split_k > 1 else None)
    assert y.data_ptr() == out.data_ptr()
    ref = _int8_twin(x, qw) if INTERPRET and cfg.path == "gemv_q8" else _reference(x, qw)
    _check(y, ref, f"{fmt} g{gs} path={path} seed={seed}")


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize(("split", "prefetch"), [(1, False), (2, False), (2, True)])
@pytest.mark.parametrize("rows", [1, 4])
def test_int8_activation_gemv_matches_its_twin(fmt, gs, split, prefetch, rows):
    """The dp4a GEMV computes exactly the CPU kernels' scheme: x quantized per block of 32 to int8 (round half to
    even), times the decoded weight; only the fp32 summation order differs. With `rows` activation rows per
    program the weight tile meets several rows at once (5 rows: one full tile of 4 and one masked)."""
    seed = _seed()
    n, k, m = (37, 200, 2 if rows == 1 else 5) if INTERPRET else (300, 1030, 3 if rows == 1 else 5)
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    x = _activations(m, k, seed)
    out = torch.full((m, n), float("nan"), dtype=torch.float32, device=DEVICE)  # fp32 out: no bf16 rounding
    bn, kb = (32, 4) if INTERPRET else (16, 2)  # the interpreter's cost is per program and K step
    run(_prepare_x(x, tw), tw, LaunchConfig("gemv_q8", rows, bn, kb, split, 4, 1, prefetch), out=out)
    twin = _int8_twin(x, qw)
    err = ((out.cpu() - twin).norm() / twin.norm()).item()
    assert err < 1e-5, (
        f"{fmt} g{gs} split={split} rows={rows} seed={seed}: relative error to the twin {err:.2e}"
    )
    if not INTERPRET:  # see `_int8_twin`: the fp32-reference bound holds on shapes of this size
        _check(out, _reference(x, qw), f"{fmt} g{gs} vs fp32 reference seed={seed}")


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize(
    ("split", "prefetch", "kb"), [(1, True, 4), (2, True, 4), (1, True, 8), (2, False, 4)]
)
def test_int8_gemv_program_walking_several_tiles(fmt, gs, split, prefetch, kb):
    """With `tiles` = 3 each program covers three consecutive row tiles in turn; N is no multiple of the
    3 x 2 rows a program takes, so the last program's tiles are partly or wholly past N (masked). Every output
    is written (NaN-poisoned) and equals the twin. With prefetch, the load after a tile's last K step fetches
    the next tile's first: with several steps per split, and with one step covering the whole row (kb 8)."""
    seed = _seed()
    n, k, m = (37, 200, 2) if INTERPRET else (301, 1030, 3)
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    x = _activations(m, k, seed)
    out = torch.full((m, n), float("nan"), dtype=torch.float32, device=DEVICE)
    run(_prepare_x(x, tw), tw, LaunchConfig("gemv_q8", 1, 2, kb, split, 1, 1, prefetch, tiles=3), out=out)
    twin = _int8_twin(x, qw)
    err = ((out.cpu() - twin).norm() / twin.norm()).item()
    assert err < 1e-5, (
        f"{fmt} g{gs} split={split} prefetch={prefetch} kb={kb} seed={seed}: error to the twin {err:.2e}"
    )


def test_whole_tiles_only_where_no_load_or_store_can_stray():
    """The unmasked (EVEN) int8 GEMV is chosen only when every tile, K step, activation block and scale group
    the kernel touches exists."""
    cfg = LaunchConfig("gemv_q8", 1, 1, 64, 1, 1, 1, True, tiles=4)
    llama = pack_weight(_weight("sym_int4", 128, 64, 4096, 0), DEVICE)  # 64 rows of K = 4096: 512 words
    assert whole_tiles(llama, cfg, 4096 // 32)
    assert not whole_tiles(llama, LaunchConfig("gemv_q8", 1, 1, 64, tiles=3), 128)  # 64 rows % 3 tiles
    assert not whole_tiles(
        llama, LaunchConfig("gemv_q8", 1, 1, 48, tiles=4), 128
    )  # 512 words % 192-word steps
    ragged = pack_weight(_weight("sym_int4", 32, 64, 200, 0), DEVICE)  # 25 words padded to 32, 7 groups of 4
    assert not whole_tiles(ragged, LaunchConfig("gemv_q8", 1, 1, 8), 7)


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize(("split", "prefetch"), [(1, True), (2, True), (1, False)])
def test_int8_gemv_on_whole_tiles_runs_unmasked_and_exact(fmt, gs, split, prefetch):
    """On a shape where `whole_tiles` holds (as on every Llama projection) the kernel runs without masks; it
    still writes every output (NaN-poisoned) and equals the twin, with and without the prefetch past the end."""
    seed = _seed()
    n, k, m = 48, 512, 2
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    cfg = LaunchConfig("gemv_q8", 1, 2, 4, split, 1, 1, prefetch, tiles=3)
    assert whole_tiles(tw, cfg, k // 32)
    x = _activations(m, k, seed)
    out = torch.full((m, n), float("nan"), dtype=torch.float32, device=DEVICE)
    run(_prepare_x(x, tw), tw, cfg, out=out)
    twin = _int8_twin(x, qw)
    err = ((out.cpu() - twin).norm() / twin.norm()).item()
    assert err < 1e-5, (
        f"{fmt} g{gs} split={split} prefetch={prefetch} seed={seed}: error to the twin {err:.2e}"
    )


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize(("n", "k"), [(48, 512), (37, 200)])
@pytest.mark.parametrize(("split", "prefetch"), [(1, False), (1, True), (2, True), (2, False), (4, True)])
def test_int8_gemv_with_one_step_per_split_loads_activations_once(fmt, gs, n, k, split, prefetch):
    """When a split is a single K step (a whole 4096-wide row with the tuned tiles) each program loads its
    activations once for all its row tiles, its first tile's weights before the previous kernel is waited for,
    and with prefetch the next tile's while this one is computed. On a whole-tile shape (unmasked) and a ragged
    one (N no multiple of the 3 x 2 rows per program, K padded), with split-K (4 splits: with 128-wide groups
    each step lies in one group, one scale per row): every output written, equal to the twin."""
    seed = _seed()
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    kb = tw.kw // (4 * split)  # 4 words per block: one step per split
    cfg = LaunchConfig("gemv_q8", 1, 2, kb, split, 1, 1, prefetch, tiles=3)
    assert one_step(tw, cfg)
    assert whole_tiles(tw, cfg, -(-k // 32)) == ((n, k) == (48, 512))
    x = _activations(2, k, seed)
    out = torch.full((2, n), float("nan"), dtype=torch.float32, device=DEVICE)
    run(_prepare_x(x, tw), tw, cfg, out=out)
    twin = _int8_twin(x, qw)
    err = ((out.cpu() - twin).norm() / twin.norm()).item()
    assert err < 1e-5, f"{fmt} g{gs} {n}x{k} split={split} prefetch={prefetch} seed={seed}: error {err:.2e}"
    several = LaunchConfig("gemv_q8", 1, 2, kb // 2, split, 1, 1, prefetch, tiles=3)
    assert not one_step(tw, several)  # two steps per split: the K loop


def test_several_tiles_only_for_int8_programs_of_up_to_8_rows():
    """`tiles` belongs to `gemv_q8_kernel` (1..8 rows per program); elsewhere the tuner never offers it and
    `run_q8` refuses it."""
    tw = pack_weight(_weight("sym_int4", 32, 16, 64, 0), DEVICE)
    assert not valid(LaunchConfig("gemv", 1, 16, 2, tiles=2), tw, torch.bfloat16)
    assert not valid(LaunchConfig("gemv_q8", 16, 16, 2, tiles=2), tw, torch.bfloat16)
    assert valid(LaunchConfig("gemv_q8", 1, 16, 2, tiles=2), tw, torch.bfloat16)
    assert valid(LaunchConfig("gemv_q8", 8, 16, 2, tiles=2), tw, torch.bfloat16)
    with pytest.raises(ValueError, match="tiles"):
        run(_prepare_x(_activations(16, 64, 0), tw), tw, LaunchConfig("gemv_q8", 16, 16, 2, tiles=2))


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
@pytest.mark.parametrize(
    ("rows", "m", "one", "split", "prefetch"),
    [(4, 7, True, 1, True), (4, 7, False, 2, False), (8, 8, True, 2, False), (8, 8, False, 1, True)],
)
def test_int8_gemv_meets_several_rows_per_weight_step(fmt, gs, rows, m, one, split, prefetch):
    """`rows` activation rows per program: each weight step is unpacked once and met by every row (one
    accumulator each), programs walk 3 row tiles, and rows past M (7 rows in tiles of 4) store nothing. With one
    K step per split (activations loaded per tile) and with the K loop, on a ragged shape (N no multiple of the
    3 x 2 rows a program takes, K padded): every output written (NaN-poisoned), equal to the twin."""
    seed = _seed()
    n, k = 37, 200
    qw = _weight(fmt, gs, n, k, seed)
    tw = pack_weight(qw, DEVICE)
    kb = tw.kw // (4 * split) if one else 2
    cfg = LaunchConfig("gemv_q8", rows, 2, kb, split, 1, 1, prefetch, tiles=3)
    assert one_step(tw, cfg) == one
    x = _activations(m, k, seed)
    out = torch.full((m, n), float("nan"), dtype=torch.float32, device=DEVICE)
    run(_prepare_x(x, tw), tw, cfg, out=out)
    twin = _int8_twin(x, qw)
    err = ((out.cpu() - twin).norm() / twin.norm()).item()
    assert err < 1e-5, f"{fmt} g{gs} rows={rows} m={m} {cfg} seed={seed}: error to the twin {err:.2e}"
    # Bit for bit the one-row program's result on every row (the same per-row arithmetic in the same order).
    single = torch.full((m, n), float("nan"), dtype=torch.float32, device=DEVICE)
    run(_prepare_x(x, tw), tw, replace(cfg, block_m=1), out=single)
    assert torch.equal(out, single)


@pytest.mark.parametrize(("fmt", "gs"), [f for f in FORMATS if f[0] in Q8_FORMATS])
def test_prequantized_activations_give_the_same_product(fmt, gs):
    """`matmul_q8` on `quantize(x)` (what a fused producer hands over) is `run`'s gemv_q8 path on x, exactly."""
    seed = _seed()
    n, k, m = (37, 200, 2) if INTERPRET else (300, 1030, 3)
    qw = _weight(fmt, gs, n, k, seed)
    kernel = TritonLowBitKernel()
    tw = kernel.prepare(qw, DEVICE)
    x = _activations(m, k, seed)
    cfg = LaunchConfig("gemv_q8", 1, 32, 4, 1, 4, 1)
    y = run_q8(kernel.quantize(x), tw, cfg)
    assert y.dtype == x.dtype and y.shape == (m, n)
    assert torch.equal(y, run(_prepare_x(x, tw), tw, cfg)), f"{fmt} g{gs} seed={seed}"
    _check(y, _int8_twin(x, qw), f"{fmt} g{gs} vs the int8 twin seed={seed}")
    if not INTERPRET:
        assert kernel.takes_q8(tw)
        _check(kernel.matmul_q8(kernel.quantize(x), tw), _int8_twin(x, qw), f"{fmt} tuned seed={seed}")
    with pytest.raises(ValueError, match="K=200" if INTERPRET else "K=1030"):
        run_q8(kernel.quantize(x[:, :64]), tw, cfg)


def test_q8_path_refuses_other_formats():
    tw = pack_weight(_weight("nf4", 64, 16, 128, 0), DEVICE)
    assert not TritonLowBitKernel().takes_q8(tw)
    act = TritonLowBitKernel().quantize(_activations(1, 128, 0))
    with pytest.raises(ValueError, match="sym_int4 and asym_int4 weights only"):
        run_q8(act, tw, LaunchConfig("gemv_q8", 1, 16, 2, 1, 4, 1))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m", [1, 20])
def test_other_activation_dtypes(dtype, m):
    seed = _seed()
    qw = _weight("sym_int4", 32, 48, 160, seed)
    state = TritonLowBitKernel().prepare(qw, DEVICE)
    x = _activations(m, 160, seed, dtype)
    y = TritonLowBitKernel().matmul(x, state)
    assert y.dtype == dtype
    _check(y, _reference(x, qw), f"{dtype} m={m} seed={seed}")


def test_leading_batch_dims_and_empty_input():
    seed = _seed()
    qw = _weight("asym_int4", 32, 40, 96, seed)
    state = TritonLowBitKernel().prepare(qw, DEVICE)
    x = _activations(6, 96, seed).reshape(2, 3, 96)
    y = TritonLowBitKernel().matmul(x, state)
    assert y.shape == (2, 3, 40)
    _check(y.reshape(6, 40), _reference(x.reshape(6, 96), qw), f"batch dims seed={seed}")
    assert TritonLowBitKernel().matmul(x[:0], state).shape == (0, 3, 40)


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
def test_dequantize_is_exact(fmt, gs):
    """The device layout decodes back to exactly the portable layout's values."""
    qw = _weight(fmt, gs, 37, 200, _seed())
    tw = pack_weight(qw, DEVICE)
    torch.testing.assert_close(
        dequantize(tw, torch.float32).cpu(), qw.dequantize(torch.float32), rtol=0, atol=0
    )


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
@pytest.mark.parametrize(("n", "k"), [(37, 200), (5, 64)])
def test_export_gives_back_the_portable_weight_bit_for_bit(fmt, gs, n, k):
    """The device layout is the only copy a GPU layer keeps: saving and merging read the portable weight back."""
    from xpullm.formats import QuantizedWeight, pack_nibbles

    qw = _weight(fmt, gs, n, k, _seed())
    out = TritonLowBitKernel().export(pack_weight(qw, DEVICE))
    codes = out["codes"].cpu()
    data = pack_nibbles(codes) if get_format(fmt).bits == 4 else codes
    back = QuantizedWeight(fmt, qw.shape, qw.group_size, data, out["scales"].cpu(),
                           None if out["zeros"] is None else out["zeros"].cpu())  # fmt: skip
    for name, tensor in qw.tensors().items():
        got = back.tensors()[name]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name
    assert set(back.tensors()) == set(qw.tensors())


@pytest.mark.parametrize(("fmt", "gs"), FORMATS)
def test_dequantize_rows_decodes_any_rows_exactly(fmt, gs):
    """Training's backward pass and tied low-bit heads decode chosen rows on the device."""
    qw = _weight(fmt, gs, 37, 200, _seed())
    tw = pack_weight(qw, DEVICE)
    rows = torch.tensor([36, 0, 5, 5, 17], device=DEVICE)
    for dtype in (torch.float32, torch.bfloat16):
        got = tw.dequantize_rows(rows, dtype)
        assert got.dtype == dtype and got.shape == (5, 200)
        ref = qw.dequantize(torch.float32)[rows.cpu()]
        if INTERPRET and dtype == torch.bfloat16:  # the interpreter casts to bf16 by truncation, GPUs round
            ref = (ref.view(torch.int32) & ~0xFFFF).view(torch.float32)
        torch.testing.assert_close(got.cpu(), ref.to(dtype), rtol=0, atol=0)


def test_wrong_width_and_unsupported_weights_raise():
    qw = _weight("sym_int4", 32, 16, 64, 0)
    state = TritonLowBitKernel().prepare(qw, DEVICE)
    with pytest.raises(ValueError, match="K=64"):
        TritonLowBitKernel().matmul(torch.zeros(1, 65, device=DEVICE), state)
    dense = get_format("bf16").quantize(torch.randn(4, 8))
    assert not TritonLowBitKernel().supports(dense)
    with pytest.raises(ValueError, match="bf16"):
        pack_weight(dense, DEVICE)


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="timing candidates needs a GPU")
def test_tuner_picks_a_working_config(monkeypatch):
    monkeypatch.setenv("XPULLM_TRITON_AUTOTUNE", "1")
    seed = _seed()
    qw = _weight("sym_int4", 128, 1024, 2048, seed)
    tw = pack_weight(qw, DEVICE)
    for m in (1, 4, 16, 100):
        cfg = tune(tw, m)
        x = _activations(m, 2048, seed)
        _check(run(_prepare_x(x, tw), tw, cfg), _reference(x, qw), f"tuned {cfg} m={m} seed={seed}")


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="the registry loads Triton kernels for CUDA devices")
def test_registry_selects_triton_on_cuda():
    from xpullm.kernels.registry import kernel_table, select_kernel

    qw = _weight("nf4", 64, 32, 64, 0)
    assert select_kernel(qw, "cuda").name == "triton"
    assert kernel_table("cuda")["sym_int4"] == "triton"


@pytest.mark.skipif(not HAS_CUDA or INTERPRET, reason="a LowBitLinear on CUDA runs the Triton kernel")
@pytest.mark.parametrize("fmt", ["nf4", "sym_int8"])
def test_gpu_layer_trains_through_the_device_layout_and_keeps_no_host_copy(fmt):
    """QLoRA on a GPU: the forward and backward pass decode blocks of the device layout on the device and match
    the dense twin; the layer holds one copy of the weight (no portable host copy) and exports it exactly."""
    from xpullm.linear import LowBitLinear

    seed = _seed()
    qw = _weight(fmt, 64, 300, 256, seed)
    layer = LowBitLinear(qw, device="cuda").train()
    assert layer.kernel.name == "triton" and not any(n.startswith("portable_") for n in layer._buffers)
    dense = qw.dequantize(torch.float32).cuda()
    x = _activations(70, 256, seed, torch.float32).requires_grad_(True)
    y = layer(x)
    torch.testing.assert_close(y, x.detach() @ dense.t(), rtol=1e-6, atol=1e-6)
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, (2 * y.detach()) @ dense, rtol=1e-6, atol=1e-6)
    back = layer.export()
    for name, tensor in qw.tensors().items():
        assert torch.equal(back.tensors()[name].cpu(), tensor), name


def test_torch_compile_sees_one_custom_op():
    """Under `torch.compile` the kernel is an opaque op: the whole function compiles as one graph."""
    seed = _seed()
    qw = _weight("nf4", 64, 40, 128, seed)
    kernel = TritonLowBitKernel()
    state = kernel.prepare(qw, DEVICE)
    x = _activations(3, 128, seed)
    fn = torch.compile(lambda x: kernel.matmul(x, state) * 2, backend="aot_eager", fullgraph=True)
    _check(fn(x) / 2, _reference(x, qw), f"compiled seed={seed}")


@pytest.mark.parametrize(("fmt", "gs"), [("nf4", 64), ("nf4", 128), ("fp4", 32)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_codebook_gemv_by_byte_permutes_equals_the_table_loads_bit_for_bit(fmt, gs, dtype):
    """`pairs` on a GEMV tile: nf4 / fp4 levels decoded in registers four at a time (`lut_pairs.quad_f32_ptx`)
    are the table's fp32 levels, summed in the same order: the same bits as the table-load GEMV, split, prefetch
    and ragged shapes included; no pairs for integer formats."""
    seed = _seed()
    shapes = [(37, 300)] if INTERPRET else [(37, 700), (64, 1024), (4096, 4096), (1000, 14336)]
    tiles = [LaunchConfig("gemv", 1, 8, 16, 1, 2, 1), LaunchConfig("gemv", 1, 16, 8, 2, 4, 1, prefetch=True)]
    for (n, k), loads in itertools.product(shapes, tiles):
        qw = _weight(fmt, gs, n, k, seed)
        tw = pack_weight(qw, DEVICE)
        permutes = replace(loads, pairs=True)
        if not valid(loads, tw, dtype):
            continue
        assert valid(permutes, tw, dtype)
        x = _prepare_x(_activations(3, k, seed, dtype), tw)
        want = run(x, tw, loads)
        assert torch.equal(run(x, tw, permutes), want), f"seed {seed} {fmt} g{gs} {n}x{k} {loads}"
        _check(want, _reference(x[:, :k], qw), f"seed {seed} {fmt} {n}x{k}")
    int4 = pack_weight(_weight("sym_int4", 128, 64, 1024, seed), DEVICE)
    assert not valid(replace(tiles[0], pairs=True), int4, dtype)
