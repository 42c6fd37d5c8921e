"""Launch configurations per device kind, and the small tuner that picks one per (weight shape, M bucket).

Device-specific knowledge lives only in `CONFIG_TABLES`: candidate tile shapes, warps and split-K factors per
device kind and per path (decode GEMV, small-M tensor-core tiles, prefill). The tuner times every valid
candidate once per key (device, format, group, N, K, M bucket, activation dtype) and caches the winner; when it
cannot time (Triton interpreter, CUDA graph capture, XPULLM_TRITON_AUTOTUNE=0) it uses `default_config`.
The XPU table is a first guess from Intel's Triton tuning guides and is not yet verified on hardware.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Literal

import torch

from xpullm.kernels.cuda import FORMATS as CUDA_KERNEL_FORMATS
from xpullm.settings import RuntimeSettings, runtime_settings

__all__ = [
    "CONFIG_TABLES",
    "MMA_MAX_M",
    "Q8_FORMATS",
    "Q8_ROWS_MAX",
    "Q8_ROW_TILES",
    "LaunchConfig",
    "can_tma",
    "candidates",
    "default_config",
    "default_q8_config",
    "fixup_enabled",
    "m_bucket",
    "mma_block_m",
    "mma_enabled",
    "path_summary",
    "switched_on",
    "tma_enabled",
    "tma_twin",
    "valid",
    "w4a8_enabled",
    "w8a8_formats",
    "w8a8_tile_formats",
]

SINGLE_GROUP_WORDS = 1 << 30  # a weight's GROUP_WORDS when it is per-channel: every word falls in group 0

Path = Literal["gemv", "gemv_q8", "dot", "mma", "mma_t", "w4a8", "w8a8", "w8a8_t", "cuda_mma", "dequant"]


@dataclass(frozen=True)
class LaunchConfig:
    """One way to run the product. `gemv_q8` = int8 activations x int4 weights with dp4a (sym/asym_int4, decode);
    `mma` = a batch of rows on tensor cores, one whole-tile dot per K step (`jit.mma_kernel`);
    `mma_t` = the same product transposed, the decoded weight as the dot's left operand (`jit.mma_t_kernel`);
    `w4a8` = sym_int4 weights x activation rows quantized to int8 on int8 tensor cores (`w4a8.py`; block_kb 4 / 8 /
    16 = 1, 2, 4 dots of 128 elements per K step);
    `w8a8` = 8-bit weights x activation rows quantized to the same 8-bit type on the vendor GEMM (`w8a8.py`);
    `w8a8_t` = the same product in Triton tiles, the rows quantized per block (`w8a8_tile.py`; block_kb 4-word
    blocks of 16 bytes per K step: a whole number of activation blocks);
    `cuda_mma` = low-bit weights (sym / asym_int4, nf4, fp4, sym_int8, fp8_e4m3 / e5m2) x 2-64 bf16 rows in CUDA C++
    (`kernels/cuda/lowbit_mma.cu`): block_n weight rows per program = 16 x tiles x num_warps, split_k K splits summed
    by the last to finish;
    `dequant` = decode to a dense weight, then the vendor GEMM."""

    path: Path
    block_m: int = 1
    block_n: int = 16
    block_kb: int = 16  # 4-word blocks per K step (x 32 elements for 4-bit, x 16 for 8-bit)
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch: bool = False  # gemv, gemv_q8: the next K step's weights loaded early (jit.py); w4a8: the scales
    tiles: int = 1  # gemv_q8, one activation row: tiles of block_n weight rows each program walks in turn;
    # cuda_mma: 16-row weight tiles per warp
    plane_dots: bool = False  # mma_t: one dot per bit plane (else one dot over the whole step's codes)
    pairs: bool = False  # mma_t plane dots: 2 planes per bf16x2 decode; gemv, nf4/fp4: levels by permutes
    natural: bool = False  # mma_t, one dot per step: decoded in the weight's K order, activations contiguous
    accs: int = 1  # mma_t, plane_dots: accumulators the plane dots rotate over (1, 2, 4, 8)
    fold: bool = False  # mma_t, plane_dots, one scale per step: scaled in the decode, no per-step rescale
    fixup: bool = False  # mma_t, w4a8, w8a8_t, split_k > 1: the last split sums the partials (no reduce pass)
    join: int = 1  # mma_t, pairs: planes per tensor-core dot (1; 2: a pair's two planes; 4: two pairs)
    tile_quantizes: bool = (
        False  # w8a8_t: each program rounds the activation blocks it multiplies (no quantizer)
    )
    tma: bool = False  # mma_t, w8a8_t, whole tiles: each K step's weight tile by one TMA copy (`can_tma`)
    quads: bool = False  # mma_t pairs, nf4 / fp4: four codes per byte-permute gather (`lut_pairs.quad_ptx`)


def _gemv(bm: int, bn: int, kb: int, sk: int, warps: int, prefetch: bool = False) -> LaunchConfig:
    return LaunchConfig("gemv", bm, bn, kb, sk, warps, 1, prefetch)


def _dot(bm: int, bn: int, kb: int, sk: int, warps: int, stages: int) -> LaunchConfig:
    return LaunchConfig("dot", bm, bn, kb, sk, warps, stages)


_DEQUANT = LaunchConfig("dequant")

# CUDA (tuned for H100-class parts: 132 SMs, ~3 TB/s). GEMV tiles carry 2-8 KiB of packed weight per K step;
# split-K keeps >= 2 programs per SM on the tall-K shapes (e.g. 4096 x 14336). Split counts are runtime
# values, so they add timing work but no compiles.
_CUDA_GEMV = [
    _gemv(1, bn, kb, sk, w)
    # A thread holding several rows of the same words widens each activation once for all of them, so the
    # taller tiles (32 x 16 blocks on 4 warps = 4 rows per thread) spend fewer ALU ops per weight.
    for bn, kb, w in ((8, 16, 2), (16, 16, 4), (16, 32, 8), (32, 16, 4), (32, 8, 4), (64, 8, 4))
    for sk in (1, 2, 4)
] + [
    # Double-buffered: two K steps of weight in flight per program.
    _gemv(1, bn, kb, sk, w, prefetch=True)
    for bn, kb, w in ((4, 64, 4), (8, 32, 4), (8, 16, 2), (16, 16, 4), (4, 32, 2))
    for sk in (1, 2)
]
# nf4 / fp4 GEMV tiles that decode each level in registers by byte permutes instead of loading it from the table
# (`pairs`; bit for bit the table loads' result, tested on an H200, session 17). The tuner times both.
GEMV_PERMUTES = [replace(c, pairs=True) for c in _CUDA_GEMV]
_CUDA_GEMV += GEMV_PERMUTES
# int4 x int8 (dp4a): ~0.7 instructions per weight instead of ~5.5, so the tiles can be taller.
_CUDA_GEMV_Q8 = (
    [
        LaunchConfig("gemv_q8", 1, bn, kb, sk, w, 1)
        for bn, kb, w in (
            (8, 16, 4),
            (16, 16, 4),
            (16, 32, 8),
            (32, 16, 8),
            (4, 32, 4),
            (8, 32, 8),
            (8, 8, 2),
        )
        for sk in (1, 2)
    ]
    + [LaunchConfig("gemv_q8", 1, bn, kb, 1, w, 1, True) for bn, kb, w in ((8, 8, 2), (8, 16, 4), (4, 8, 2))]
    + [
        # Narrow one-warp programs of 1-4 weight rows: at <= 64 registers 32 of them share an SM, and each one's
        # reduction stays inside its warp (no shared-memory pass) - the 2026-12-01 H200 sweep's winners.
        LaunchConfig("gemv_q8", 1, bn, kb, 1, w, 1, pf, tiles)
        for bn, kb, w, pf, tiles in (
            (2, 32, 1, True, 1),
            (2, 32, 1, False, 1),
            (1, 64, 2, False, 1),
            (4, 64, 1, True, 1),
            # Walking 2-4 row tiles per program: fewer, longer-lived programs on K = 4096 rows.
            (1, 64, 1, True, 4),
            (2, 32, 1, True, 2),
        )
    ]
)
# The one-row GEMV's winning shapes (H100 and H200 sweeps) for 2..8 decode rows per program (`gemv_q8_kernel`'s
# ROWS: each weight step unpacked once, then met by every row in turn; `candidates` sets block_m).
_CUDA_GEMV_Q8_MULTI = [
    LaunchConfig("gemv_q8", 0, bn, kb, sk, w, 1, pf, tiles)
    for bn, kb, sk, w, pf, tiles in (
        (4, 64, 1, 8, False, 1),
        (8, 32, 1, 8, False, 1),
        (8, 16, 1, 4, False, 1),
        (8, 8, 1, 2, False, 1),
        (2, 32, 1, 1, True, 1),
        (4, 32, 1, 4, False, 1),
        (8, 32, 2, 8, False, 1),
        (1, 64, 1, 1, True, 4),
        (2, 32, 1, 1, True, 2),
    )
]
# The same for 2..16 decode rows, all of them in one program (`candidates` sets block_m to the row bucket):
# the weight tile is read once and meets every row.
_CUDA_GEMV_Q8_ROWS = [
    LaunchConfig("gemv_q8", 0, bn, kb, sk, w, 1, pf)
    for bn, kb, w, pf in (
        (8, 16, 4, False),
        (16, 16, 4, False),
        (4, 16, 2, False),
        (8, 8, 2, True),
        (16, 8, 4, False),
    )
    for sk in (1, 2)
]
_CUDA_DOT_SMALL = [
    _dot(16, bn, kb, sk, w, st)
    for bn, kb, w, st in ((32, 4, 4, 3), (64, 4, 4, 3), (64, 8, 4, 2), (128, 4, 8, 2))
    for sk in (1, 2)
]
# Batched decode (2..256 rows, `jit.mma_kernel`): block_m is set per row bucket by `candidates` (16..64, the
# rest in further M tiles). Memory-bound at these batches, so the table varies the bytes in flight per SM:
# tile width, K step, split-K (a 4096-row weight in 64-row tiles is only 64 programs) and pipeline depth.
_CUDA_MMA = [
    LaunchConfig("mma", 0, bn, kb, sk, w, st)
    for bn, kb, sk, w, st in (
        (64, 4, 2, 4, 3),
        (64, 4, 4, 4, 3),
        (32, 4, 4, 4, 4),
        (64, 8, 2, 4, 3),
        (128, 4, 2, 8, 3),
        (32, 8, 2, 4, 3),
        (64, 4, 1, 4, 4),
        (128, 8, 1, 8, 2),
        (64, 4, 8, 4, 3),
        (32, 4, 8, 4, 3),
        (128, 4, 4, 8, 4),
    )
]
# `mma_t` (the weight tile as the dot's left operand, `jit.mma_t_kernel`): weight rows per tile 64 / 128 (the
# tensor cores' tall side), words per step, split-K, pipeline depth, and one dot per step vs one per bit plane.
# sym_int4 / nf4 bf16x2 pair tiles: weight rows per tile, split-K, warps, pipeline depth (all split: `fixup` runs)
_PAIR_TILES = ((64, 2, 4, 3), (64, 4, 4, 3), (128, 2, 4, 3), (128, 4, 4, 3), (128, 2, 8, 3), (256, 2, 8, 3))
_CUDA_MMA_T = (
    [
        LaunchConfig("mma_t", 0, bn, kb, sk, w, st, plane_dots=pd)
        for bn, kb, sk, w, st, pd in (
            (64, 4, 2, 4, 3, False),
            (64, 4, 4, 4, 3, False),
            (128, 4, 2, 4, 3, False),
            (64, 8, 2, 4, 3, False),
            (64, 2, 4, 4, 4, False),
            (128, 2, 2, 8, 3, False),
            (64, 4, 2, 4, 3, True),
            (64, 4, 4, 4, 3, True),
            (128, 4, 2, 4, 3, True),
            (64, 8, 2, 4, 3, True),
            (128, 4, 1, 8, 3, True),
            (64, 8, 4, 4, 2, True),
            (256, 4, 2, 8, 3, True),
            (128, 4, 4, 4, 3, True),
            (64, 4, 8, 4, 3, True),
            (128, 4, 2, 8, 4, True),
        )
    ]
    # join: planes per dot (2, 4: K = 32 / 64 per dot at 16 words per step); fixup: the split-K sum done by each
    # tile's last split (`jit._last_split_sums`), no reduce launch
    + [
        LaunchConfig("mma_t", 0, bn, 4, sk, w, st, plane_dots=True, pairs=True, join=join, fixup=fixup)
        for joins in ((1,), (2, 4))
        for bn, sk, w, st in _PAIR_TILES
        for join in joins
        for fixup in (False, True)
    ]
    # 32 words per K step: half the draining waits per weight (sm_90: 7 per step at 87 registers); at group 128
    # a step spans two groups, scaled per word in the decode (XPULLM_TRITON_MORE_PAIRS=0 leaves them out)
    + [
        LaunchConfig("mma_t", 0, bn, 8, sk, w, st, plane_dots=True, pairs=True, join=join)
        for bn, sk, w, st in ((64, 2, 4, 3), (64, 4, 4, 3), (128, 2, 8, 3))
        for join in (1, 2)
    ]
    # The step's scale folded into the decode and one accumulator per plane dot (or half as many): Triton then
    # issues a step's tensor-core dots without waiting for each before the next (they go to different
    # accumulators and nothing is rescaled per step); 8 accumulators cost ~100 more registers at 16 rows.
    + [
        LaunchConfig("mma_t", 0, bn, 4, sk, w, st, plane_dots=True, pairs=pairs, accs=accs, fold=True)
        for bn, sk, w, st, accs, pairs in (
            (64, 2, 4, 3, 8, True),
            (64, 4, 4, 3, 8, True),
            (128, 2, 8, 3, 8, True),
            (128, 4, 8, 3, 4, True),
            (64, 2, 4, 3, 8, False),
            (64, 4, 4, 3, 8, False),
            (128, 2, 8, 3, 4, False),
        )
    ]
    + [
        LaunchConfig("mma_t", 0, bn, kb, sk, w, st, natural=True)
        for bn, kb, sk, w, st in (
            (64, 4, 2, 4, 3),
            (64, 4, 4, 4, 3),
            (128, 4, 2, 8, 3),
            (64, 2, 4, 4, 4),
            (128, 2, 4, 4, 3),
        )
    ]
)
# `w4a8` (int4 codes as int8 bytes x int8 activations, int32 tensor-core dots): weight rows per tile, groups of 128
# elements per K step (block_kb / 4), split-K (summed in the kernel), warps, pipeline depth; `prefetch`: each
# dot's scales loaded a dot ahead.
_CUDA_W4A8 = [
    LaunchConfig("w4a8", 0, bn, kb, sk, w, st, prefetch=pf, fixup=sk > 1)
    for bn, kb, sk, w, st, pf in (
        (64, 4, 2, 4, 3, False),
        (64, 4, 4, 4, 3, False),
        (64, 8, 2, 4, 3, False),
        (64, 8, 4, 4, 3, False),
        (64, 4, 4, 4, 4, False),
        (64, 4, 1, 4, 4, False),
        (128, 4, 2, 4, 3, False),
        (128, 4, 4, 4, 3, False),
        (128, 4, 2, 8, 3, False),
        (128, 8, 2, 8, 3, False),
        (256, 4, 2, 8, 3, False),
        (64, 16, 2, 4, 2, False),
        (64, 4, 2, 4, 3, True),
        (64, 4, 4, 4, 3, True),
        (128, 4, 2, 8, 3, True),
        (64, 8, 4, 4, 3, True),
    )
]
# `w8a8_t` (8-bit weight bytes x 8-bit activation blocks, fp8 / int8 tensor-core dots, no decode): weight rows
# per tile, 4-word blocks of 16 bytes per K step (8 = 128 bytes), split-K (summed in the kernel), warps, stages.
# The rows are rounded by the quantizer's launch: tiles that round their own blocks (`tile_quantizes`) were
# 1.15-4.4x slower on every Llama-3-8B shape at 8-64 rows (H100, session 15: the bf16 gather is not pipelined),
# so the tuner leaves them out.
_CUDA_W8A8_T = [
    LaunchConfig("w8a8_t", 0, bn, kb, sk, w, st, fixup=sk > 1)
    for bn, kb, sk, w, st in (
        (64, 8, 1, 4, 4),
        (64, 8, 2, 4, 4),
        (64, 8, 4, 4, 4),
        (64, 16, 2, 4, 3),
        (64, 16, 4, 4, 3),
        (128, 8, 1, 4, 4),
        (128, 8, 2, 4, 4),
        (128, 8, 4, 4, 3),
        (128, 16, 2, 8, 3),
        (64, 8, 8, 4, 4),
    )
]


def pair_tiles(
    shapes: tuple[tuple[int, int, int, int], ...], splits: tuple[int, ...], stages: tuple[int, ...]
) -> list[LaunchConfig]:
    """`mma_t` pair tiles (plane dots, bf16x2 pair decodes) of each (weight rows, warps, K blocks, join) shape with
    every K split (summed in the kernel) and pipeline depth; the row bucket's M tile is set where they are timed."""
    return [
        LaunchConfig("mma_t", 0, bn, kb, sk, w, st, plane_dots=True, pairs=True, join=join, fixup=sk > 1)
        for bn, w, kb, join in shapes
        for sk in splits
        for st in stages
    ]


# Narrow tiles: 1-2 warps over 16-64 weight rows. Under four warps Triton issues Ampere-style `mma.sync` dots
# (per warp, m16n8k16 / fp8 m16n8k32) instead of Hopper's warpgroup `wgmma`, so a decoded register operand needs
# no warpgroup-wide wait before the next dot, and many small programs share each SM as the one-row GEMV's do.
# Timed against the tables' tiles by bench/gpu_narrow.py (issue 29, session 17).
NARROW_MMA_T = pair_tiles(
    (
        (16, 1, 4, 1),
        (16, 1, 4, 2),
        (32, 1, 4, 1),
        (32, 2, 4, 2),
        (32, 2, 4, 4),
        (64, 2, 4, 2),
        (16, 1, 8, 1),
        (32, 2, 8, 1),
    ),
    splits=(1, 2, 4),
    stages=(3, 4),
)
# The narrow tiles that won the H200 sweep (session 17: every sym_int4 g128 and nf4 g64 layer shape it won at 1-32
# rows ran on two warps, three stages), which the tuner times beside the wide ones.
_CUDA_NARROW = pair_tiles(
    ((32, 2, 4, 4), (64, 2, 4, 2), (16, 1, 8, 1), (32, 2, 8, 1)), splits=(1, 2, 4), stages=(3,)
)
NARROW_W8A8_T = [
    LaunchConfig("w8a8_t", 0, bn, kb, sk, w, st, fixup=sk > 1)
    for bn, kb, w in ((16, 8, 1), (32, 8, 1), (32, 8, 2), (64, 8, 2), (16, 16, 1), (32, 16, 2))
    for sk in (1, 2, 4)
    for st in (3, 4)
]
MMA_MAX_M = 256  # row buckets the batched tensor-core tiles are timed for
MMA_BLOCK_M = (16, 64)  # smallest and largest M tile of `mma` (tl.dot needs >= 16 rows)


def mma_enabled() -> bool:
    """Whether the tuner times the `mma` tiles (default yes: tests/kernels/test_triton_mma.py passed on an H100,
    2026-12-05, and at 32-64 rows they beat dequantize + cuBLAS ~6x); XPULLM_TRITON_MMA=0 leaves them out."""
    return runtime_settings().triton_mma


def w4a8_enabled(settings: RuntimeSettings | None = None) -> bool:
    """Whether the tuner times the `w4a8` tiles for sym_int4 (XPULLM_TRITON_W4A8=1; default off: rounding the
    activation rows to int8 changes the numbers, as `w8a8` does, though by less - a scale per 64 elements:
    +0.20% perplexity on the packaged model)."""
    return (settings or runtime_settings()).triton_w4a8


W8A8_CHOICES = {"fp8": ("fp8_e4m3",), "all": ("fp8_e4m3", "sym_int8")}  # any other value: off


def w8a8_formats(settings: RuntimeSettings | None = None) -> tuple[str, ...]:
    """The weight formats the tuner times the `w8a8` path for (each activation row rounded to the weight's 8-bit
    type, then the vendor's fp8 / int8 GEMM). XPULLM_TRITON_W8A8: `off` (default: rounding the activations
    changes the numbers, and which rows take it depends on the batch's row count; its tests passed on an H100 on
    2026-12-06, and from 64 rows it beats the fp8 tiles: docs/benchmarks-gpu.md), `fp8` =
    fp8_e4m3, the per-token recipe of fp8 serving stacks (+0.9% perplexity over fp8 weight-only on the packaged
    model), `all` adds sym_int8 (+2.8% over int8 weight-only there: a model without outlier smoothing loses
    more to int8 rows). Explicit `LaunchConfig("w8a8")` runs it either way."""
    return W8A8_CHOICES.get((settings or runtime_settings()).triton_w8a8, ())


def w8a8_tile_formats(settings: RuntimeSettings | None = None) -> tuple[str, ...]:
    """The weight formats the tuner times the `w8a8_t` tiles for (each activation block rounded to the weight's
    8-bit type, then fp8 / int8 tensor-core dots). XPULLM_TRITON_W8A8_T: `fp8` (default: fp8_e4m3 weights, rows
    in e4m3 per 1 x 128 block - the activation recipe of fp8 serving stacks; +0.49% perplexity over fp8
    weight-only on the packaged model, and 1.35x the weight-only tiles' tok/s at 16 streams on an H100:
    docs/benchmarks-gpu.md, session 15), `all` (sym_int8 too, rows per 64: +0.28% over int8 weight-only, a
    smaller gain) or `off`. Explicit `LaunchConfig("w8a8_t", ...)` runs either way."""
    return W8A8_CHOICES.get((settings or runtime_settings()).triton_w8a8_t, ())


def fixup_enabled(settings: RuntimeSettings | None = None) -> bool:
    """Whether the tuner times the `mma_t` tiles that sum their K splits in the kernel (default yes: the split-sum
    tests in tests/kernels/test_triton_mma.py passed on an H100, 2026-12-06); XPULLM_TRITON_FIXUP=0 leaves them
    out."""
    return (settings or runtime_settings()).triton_fixup


def tma_enabled(settings: RuntimeSettings | None = None) -> bool:
    """Whether the tuner times tiles whose weight arrives by TMA tensor copies, and tuned records keep theirs
    (default yes: bit for bit the thread loads' numbers, tested on an H100, 2026-12-06); XPULLM_TRITON_TMA=0
    leaves them out."""
    return (settings or runtime_settings()).triton_tma


def mma_block_m(bucket: int) -> int:
    """The `mma` M tile for a row bucket: the bucket itself within MMA_BLOCK_M."""
    return min(max(bucket, MMA_BLOCK_M[0]), MMA_BLOCK_M[1])


# (128 x 128 tiles on 8 warps spill registers once eight bit planes are decoded per step: not listed.)
# Triton 3.6 fails to compile 64- and 128-row dot tiles of this kernel on Hopper ("Illegal shared layout" in
# TritonGPUOptimizeDotOperands, every format), and dequantize + cuBLAS won every prefill shape the tiles did
# compile for on older Tritons; so prefill on CUDA is the dequantize path plus a 32-row tile that compiles.
_CUDA_PREFILL = [_DEQUANT, _dot(32, 64, 4, 1, 4, 2)]

# Intel GPUs (Triton XPU backend): wider tiles and more warps suit the 8-wide EUs with large register files.
# Unverified on hardware; the tuner times these like the CUDA ones.
_XPU_GEMV = [
    _gemv(1, bn, kb, sk, w) for bn, kb, w in ((16, 16, 4), (32, 16, 8), (64, 8, 16)) for sk in (1, 2, 4)
]
_XPU_DOT_SMALL = [_dot(16, bn, kb, sk, w, 2) for bn, kb, w in ((64, 4, 4), (128, 4, 8)) for sk in (1, 2)]
_XPU_PREFILL = [_DEQUANT, _dot(128, 128, 4, 1, 16, 2), _dot(256, 128, 4, 1, 32, 2)]

# CUDA C++ low-bit tiles (`cuda_mma`): 1, 2 or 4 16-row tiles per warp on 4 or 8 warps, K split 1-16 ways. block_m
# is set to the row bucket; block_kb 4 = one 128-code chunk per K step.
_CUDA_CXX = [
    LaunchConfig("cuda_mma", 8, 16 * tiles * warps, 4, split, warps, 1, tiles=tiles)
    for tiles in (1, 2, 4)
    for warps in (4, 8)
    for split in (1, 2, 4, 8, 16)
]
CUDA_MMA_MAX_M = 64  # rows the CUDA low-bit kernel takes
CUDA_MMA_FORMATS = tuple(CUDA_KERNEL_FORMATS)  # the formats lowbit_mma.cu decodes

CONFIG_TABLES: dict[str, dict[str, list[LaunchConfig]]] = {
    "cuda": {
        "gemv": _CUDA_GEMV + _CUDA_GEMV_Q8,
        "gemv_q8_rows": _CUDA_GEMV_Q8_ROWS,
        "gemv_q8_multi": _CUDA_GEMV_Q8_MULTI,
        "dot_small": _CUDA_DOT_SMALL,
        "prefill": _CUDA_PREFILL,
        "mma": _CUDA_MMA,
        "mma_t": _CUDA_MMA_T + _CUDA_NARROW,
        "w4a8": _CUDA_W4A8,
        "w8a8": [LaunchConfig("w8a8")],
        "w8a8_t": _CUDA_W8A8_T,
        "cuda_mma": _CUDA_CXX,
    },
    "xpu": {"gemv": _XPU_GEMV, "dot_small": _XPU_DOT_SMALL, "prefill": _XPU_PREFILL},
}
GEMV_MAX_M = 16  # above this, prefill configs
Q8_FORMATS = ("sym_int4", "asym_int4")  # the formats the int8-activation GEMV (`gemv_q8`) runs
Q8_ROW_TILES = (1, 2, 4, 8, 16)  # activation rows one `gemv_q8` program may take (block_m)
Q8_ROWS_MAX = 8  # up to this many rows `gemv_q8_kernel` takes them (ROWS); 16 go to `gemv_q8_rows_kernel`


def path_summary() -> list[str]:
    """One line per kernel path: rows it is timed for, formats, what it does (for `xpullm info`)."""
    return [
        "gemv     1 row          every format        CUDA-core FMAs, split-K; nf4/fp4 levels by byte permutes or "
        "table loads",
        f"gemv_q8  1-{Q8_ROW_TILES[-1]} rows      {', '.join(Q8_FORMATS)}  int8 activations, dp4a (CUDA); "
        f"up to {Q8_ROWS_MAX} rows share each weight step",
        f"dot      2-{GEMV_MAX_M} rows      every format        one tensor-core dot per bit plane",
        f"mma      2-{MMA_MAX_M} rows     every format        batched tensor-core tiles, whole-tile decode "
        f"(bf16/fp16, or int8 activations){'' if mma_enabled() else '; off (XPULLM_TRITON_MMA=0)'}",
        f"mma_t    1-{MMA_MAX_M} rows     every format        W @ x^T: decoded weight as the dot's register operand, "
        "nf4/fp4 decoded in registers, sym_int4 in bf16x2; wgmma tiles on 4-8 warps, mma.sync tiles on 1-2"
        f"{', nf4/fp4 (four codes per gather) and grouped sym_int4 in bf16x2, joined dots' if more_pairs_enabled() else '; nf4/fp4 and grouped sym_int4 pairs off (XPULLM_TRITON_MORE_PAIRS=0)'}"
        f"{', K splits summed in the kernel' if fixup_enabled() else '; in-kernel split sums off (XPULLM_TRITON_FIXUP=0)'}"
        f"{', weight tiles by TMA copies (Hopper+)' if tma_enabled() else '; TMA copies off (XPULLM_TRITON_TMA=0)'}",
        f"w4a8     2-{MMA_MAX_M} rows     sym_int4 (g>=128)   int4 codes as int8 x int8 activation rows "
        f"(a scale per 64), int8 tensor cores{'' if w4a8_enabled() else '; off (XPULLM_TRITON_W4A8=1 times it)'}",
        f"w8a8     every M        fp8_e4m3, sym_int8  rows quantized per token, fp8 / int8 tensor cores (cuBLAS); "
        f"timed for: {', '.join(w8a8_formats()) or 'none'} (XPULLM_TRITON_W8A8=off|fp8|all)",
        f"w8a8_t   2-{MMA_MAX_M} rows     fp8_e4m3, sym_int8  8-bit weights x rows quantized per block (fp8: 128, "
        f"int8: 64), fp8 / int8 tensor cores, no decode; timed for: {', '.join(w8a8_tile_formats()) or 'none'} "
        "(XPULLM_TRITON_W8A8_T=off|fp8|all)",
        f"cuda_mma  2-{CUDA_MMA_MAX_M} rows      int4, nf4, fp4, int8, fp8  CUDA C++ (built by nvcc on first use): "
        "weight loads land in mma.sync operand fragments, decoded in registers (levels by byte permutes), fp32 "
        "scales per chunk (4-bit g32 / g64: bf16 scales before the mma), K splits summed by the last program, "
        "programmatic dependent launch (Hopper+)"
        f"{'' if runtime_settings().cuda_kernels else '; off (XPULLM_CUDA_KERNELS=0)'}",
        "dequant  prefill        every format        decode to the activation dtype, then cuBLAS",
    ]


def default_q8_config(m: int) -> LaunchConfig:
    """The untimed `gemv_q8` choice for `m` rows. One row: one warp per 2 weight rows x 1024 elements per step,
    double-buffered (the H200 sweep's winner on most Llama shapes). More rows: 8 weight rows x 512 elements per
    step on 4 warps, all of the row bucket in one program."""
    if m <= 1:
        return LaunchConfig("gemv_q8", 1, 2, 32, 1, 1, 1, True)
    return LaunchConfig("gemv_q8", min(m_bucket(m), Q8_ROW_TILES[-1]), 8, 16, 1, 4, 1)


def m_bucket(m: int) -> int:
    """Rows rounded up to a power of two (capped at 512): the tuner's notion of "same M"."""
    return min(1 << max(m - 1, 0).bit_length(), 512)


def cuda_mma_group(tw) -> int:
    """The weight's group size in codes as the CUDA kernel takes it (0: one group per row)."""
    return 0 if tw.group_words == SINGLE_GROUP_WORDS else tw.group_words * tw.planes


def cuda_mma_fits(tw, x_dtype: torch.dtype) -> bool:
    """Whether the CUDA low-bit kernel takes weight `tw` x `x_dtype` rows: a format of `CUDA_MMA_FORMATS` whose
    groups it can scale (4-bit: 32, 64 or whole 128-code chunks; 8-bit: whole 64-code chunks; or one per row), bf16
    rows, on a CUDA device where the kernel builds (`kernels.cuda.available`)."""
    if tw.format not in CUDA_MMA_FORMATS or x_dtype != torch.bfloat16 or tw.device.type != "cuda":
        return False
    from xpullm.kernels import cuda

    return cuda.group_args(cuda_mma_group(tw), 32 // tw.planes) is not None and cuda.available(tw.device)


def cuda_mma_tile_built(cfg: LaunchConfig, kw: int) -> bool:
    """Whether the CUDA kernel is built for `cfg`'s tile and can split a row of `kw` words as it asks (what
    `valid` checks besides the weight, the rows' dtype and the device)."""
    from xpullm.kernels.cuda import MMA_ROW_TILES, MMA_WARPS

    # 8 activation rows per mma column tile; the kernel pads to 1, 2, 4 or 8 of them
    column_tiles = -(-cfg.block_m // 8)
    return (
        2 <= cfg.block_m <= CUDA_MMA_MAX_M
        and cfg.tiles in MMA_ROW_TILES
        and MMA_WARPS[0] <= cfg.num_warps <= MMA_WARPS[1]
        and (column_tiles <= 2 or cfg.tiles * column_tiles <= 8)  # its two accumulators fit in registers
        and cfg.block_n == 16 * cfg.tiles * cfg.num_warps
        and cfg.block_kb == 4
        and (cfg.split_k == 1 or kw >= 32 * cfg.split_k)  # two chunks a split at least
    )


def valid(cfg: LaunchConfig, tw, x_dtype: torch.dtype) -> bool:
    """Whether `cfg` can run weight `tw` with activations of `x_dtype`."""
    if cfg.path == "dequant":
        return True
    if cfg.path == "cuda_mma":
        return cuda_mma_tile_built(cfg, tw.kw) and cuda_mma_fits(tw, x_dtype)
    if cfg.path == "w8a8":
        from xpullm.kernels.triton.w8a8 import supports  # its module imports this one

        return supports(tw, x_dtype)
    if cfg.path == "w8a8_t":
        from xpullm.kernels.triton import w8a8_tile  # its module imports this one

        step = cfg.block_kb * 16  # bytes of a K step
        block = w8a8_tile.ACT_BLOCK.get(tw.format, 0)
        if not w8a8_tile.supports(tw, x_dtype) or cfg.block_m < MMA_BLOCK_M[0] or step % block:
            return False  # 8-bit dots need >= 16 rows; a K step holds whole activation blocks
    if cfg.path == "w4a8":
        from xpullm.kernels.triton.w4a8 import supports  # its module imports this one

        if not supports(tw, x_dtype) or cfg.block_m < MMA_BLOCK_M[0] or cfg.block_kb not in (4, 8, 16):
            return False  # int8 dots need >= 16 rows; a K step is 1, 2 or 4 dots of 128 elements
    if cfg.path == "dot" and (x_dtype not in (torch.bfloat16, torch.float16) or cfg.block_kb < 4):
        return False  # tl.dot on fp32 would silently drop to tf32; one plane's dot needs K = 4 * BKB >= 16
    if cfg.path in ("mma", "mma_t") and (
        x_dtype not in (torch.bfloat16, torch.float16) or cfg.block_m < MMA_BLOCK_M[0]
    ):
        return False  # bf16 / fp16 tensor-core operands; tl.dot needs >= 16 rows
    if cfg.path == "mma_t" and cfg.plane_dots and cfg.block_kb < 4:
        return False  # one plane's dot has K = 4 * block_kb words' codes: tl.dot needs K >= 16
    if cfg.natural and (cfg.path != "mma_t" or cfg.plane_dots or cfg.pairs):
        return False  # the natural K order is one of mma_t's single-dot layouts
    if cfg.accs not in (1, 2, 4, 8) or (cfg.accs > 1 and not (cfg.path == "mma_t" and cfg.plane_dots)):
        return False  # several accumulators split a step's plane dots
    if cfg.fold and not can_fold(cfg, tw):
        return False
    if cfg.fixup and (cfg.path not in ("mma_t", "w4a8", "w8a8_t") or cfg.split_k == 1):
        return False  # only the tiles' K splits have partials to sum
    if not can_join(cfg):
        return False
    if cfg.tile_quantizes and cfg.path != "w8a8_t":
        return False  # only the 8-bit activation tiles round their own rows
    if cfg.tma and not can_tma(cfg, tw):
        return False
    if cfg.pairs and not can_pair(cfg, tw, x_dtype):
        return False
    if cfg.quads and not (cfg.pairs and cfg.path == "mma_t" and tw.format in CODEBOOK_FORMATS):
        return False  # the quad decode is a codebook pair tile's
    if cfg.path == "gemv_q8" and (
        tw.format not in Q8_FORMATS or x_dtype == torch.float32 or cfg.block_m not in Q8_ROW_TILES
    ):
        return False  # integer weights only; fp32 activations keep the float GEMV (exact-as-asked numerics)
    if cfg.tiles != 1 and (cfg.path != "gemv_q8" or cfg.block_m > Q8_ROWS_MAX):
        return False  # only the int8 GEMV programs of up to 8 rows walk several weight tiles
    # A split needs at least a couple of K steps to be worth its reduction pass.
    return cfg.split_k == 1 or tw.kw >= 2 * cfg.split_k * cfg.block_kb * 4


def can_tma(cfg: LaunchConfig, tw) -> bool:
    """Whether `tma` can run: an `mma_t` / `w8a8_t` tile whose row tiles, K steps and K splits cover the weight
    exactly (the descriptor's loads are never masked) on a device with tensor-memory copies (CUDA compute
    capability 9.0+, or the Triton interpreter) and a Triton with host-built descriptors (3.4+), rows a multiple
    of 16 bytes apart."""
    if cfg.path not in ("mma_t", "w8a8_t") or tw.n % cfg.block_n or (tw.words.stride(0) * 4) % 16:
        return False
    if not _has_tma(tw.device):
        return False
    if cfg.path == "mma_t":
        return tw.kw % (cfg.block_kb * 4) == 0  # whole K steps (splits are whole steps)
    from xpullm.kernels.triton import w8a8_tile  # its module imports this one

    block = w8a8_tile.ACT_BLOCK.get(tw.format, 0)
    if not block or tw.kx % block:
        return False
    blocks, dots = tw.kx // block, cfg.block_kb * 16 // block
    per_split = -(-blocks // (cfg.split_k * dots)) * dots
    return blocks == cfg.split_k * per_split  # every split whole steps of whole blocks


def tma_twin(cfg: LaunchConfig, tw, x_dtype: torch.dtype) -> LaunchConfig | None:
    """`cfg` with its weight by TMA copies, where that can run and the switch lets the tuner pick it; else None.
    The tuner (`launch.tune`) and the sweeps time a winner against it head to head: the same numbers, another
    load path."""
    twin = replace(cfg, tma=True)
    return twin if not cfg.tma and valid(twin, tw, x_dtype) and switched_on(twin, tw) else None


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, like triton.jit does at decoration


@functools.cache
def _has_tma(device: torch.device) -> bool:
    try:
        import triton.tools.tensor_descriptor  # noqa: F401  (host-built descriptors: Triton 3.4+)
    except ImportError:
        return False
    if _INTERPRET:  # the interpreter runs tensor descriptors on any tensor
        return True
    return (
        device.type == "cuda"
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device)[0] >= 9
    )


def can_join(cfg: LaunchConfig) -> bool:
    """Whether `join` (planes per dot: 1, 2 or 4) can run: above 1 it joins the planes of pair decodes."""
    return cfg.join in (1, 2, 4) and (cfg.join == 1 or cfg.pairs)


def can_fold(cfg: LaunchConfig, tw) -> bool:
    """Whether `fold` can run: the scale folded into the decode is the step's one scale per row."""
    return cfg.path == "mma_t" and cfg.plane_dots and one_scale_per_step(tw, cfg)


def can_pair(cfg: LaunchConfig, tw, x_dtype: torch.dtype) -> bool:
    """Whether `pairs` can run: the bf16x2 decode of two planes for bf16 activations (sym_int4, nf4, fp4). With one
    scale per K step the codes go into the dots unscaled and the step's product is scaled; where a step spans
    several groups each weight is scaled in the decode by its word's group scale."""
    if (
        cfg.path == "gemv"
    ):  # the one-row GEMV: a codebook's exact fp32 levels by byte permutes, four at a time
        return tw.format in CODEBOOK_FORMATS
    return cfg.path == "mma_t" and cfg.plane_dots and x_dtype == torch.bfloat16 and tw.format in PAIR_FORMATS


def basic_pairs(cfg: LaunchConfig, tw) -> bool:
    """Whether `cfg` has no pair decode or the first one (sym_int4 with one scale per K step, one dot per plane):
    what stays on with XPULLM_TRITON_MORE_PAIRS=0. The others (nf4 / fp4 levels by byte permutes, per-word group
    scales, joined pair dots) passed their GPU tests on an H100 on 2026-12-06."""
    return not cfg.pairs or (tw.format == "sym_int4" and one_scale_per_step(tw, cfg) and cfg.join == 1)


PAIR_FORMATS = ("sym_int4", "nf4", "fp4")  # 4-bit formats with a bf16x2 pair decode (jit.py, `lut_pairs.py`)
CODEBOOK_FORMATS = ("nf4", "fp4")  # 16-level codebooks the GEMV can decode by byte permutes (`pairs`)


def more_pairs_enabled(settings: RuntimeSettings | None = None) -> bool:
    """Whether the tuner times every pair decode (default yes): nf4 / fp4 by byte permutes, sym_int4 scaled per
    word where a K step spans several groups (g32, g64: GGUF Q4_0's group) and joined pair dots, all tested on an
    H100 (tests/kernels/test_triton_mma.py, 2026-12-06); XPULLM_TRITON_MORE_PAIRS=0 keeps only sym_int4's
    one-scale pairs."""
    return (settings or runtime_settings()).triton_more_pairs


def one_scale_per_step(tw, cfg: LaunchConfig) -> bool:
    """True when one K step of `cfg` never straddles two scale groups of `tw` (one scale per row per step)."""
    return tw.group_words == SINGLE_GROUP_WORDS or tw.group_words % (cfg.block_kb * 4) == 0


def candidates(device_kind: str, tw, m: int, x_dtype: torch.dtype) -> list[LaunchConfig]:
    """Every valid candidate from the device kind's table for `m` rows."""
    table = CONFIG_TABLES.get(device_kind, CONFIG_TABLES["cuda"])
    bucket = m_bucket(m)
    if bucket <= GEMV_MAX_M:
        # The CUDA-core GEMV runs one activation row per program (re-reading the weight tile from L2 for
        # rows 2..8); the tensor-core tiles read it once for up to 16 rows. The tuner measures which wins.
        pool = list(table["gemv"]) if bucket <= 8 else []
        if bucket > 1:
            pool += [replace(c, block_m=bucket) for c in table.get("gemv_q8_rows", ())]
            # The one-row GEMV's tiles with every row of the bucket (16: two tiles of 8) in each program.
            rows = min(bucket, Q8_ROWS_MAX)
            pool += [replace(c, block_m=rows) for c in table.get("gemv_q8_multi", ())]
        pool += table["dot_small"]
    else:
        pool = list(table["prefill"])
    if mma_enabled() and bucket <= MMA_MAX_M and (bucket > 1 or tw.format not in Q8_FORMATS):
        # At batch 1 the tiles waste 15 of 16 rows, but for the formats without the int8 GEMV (codebooks,
        # 8-bit) their cheaper per-weight decode can still beat the float GEMV: the tuner decides.
        pool += [
            replace(c, block_m=mma_block_m(bucket)) for c in (*table.get("mma", ()), *table.get("mma_t", ()))
        ]
    if bucket > 1:  # int8 dots need whole 16-row tiles; batch 1 keeps the GEMVs
        pool += [
            replace(c, block_m=mma_block_m(bucket))
            for c in (*table.get("w4a8", ()), *table.get("w8a8_t", ()))
        ]
    if 2 <= bucket <= CUDA_MMA_MAX_M:
        pool += [replace(c, block_m=bucket) for c in table.get("cuda_mma", ())]
    pool += table.get("w8a8", [])  # every row count: the vendor GEMM serves decode batches and prefill alike
    if tw.format in CODEBOOK_FORMATS:  # codebook pair tiles decode four codes per gather: same values, faster
        pool = [replace(c, quads=True) if c.path == "mma_t" and c.pairs else c for c in pool]
    return [c for c in pool if valid(c, tw, x_dtype) and switched_on(c, tw)]


def switched_on(cfg: LaunchConfig, tw) -> bool:
    """Whether the switches (XPULLM_TRITON_W8A8, _W8A8_T, _W4A8, _MORE_PAIRS, _FIXUP, _TMA) let the tuner pick `cfg` for
    `tw`: what it times, what a sweep may record as a winner, and which tuned records `select_config` uses. It
    runs on every `select_config` call: a config no switch governs returns without reading the environment, the
    others read it once."""
    if cfg.path == "cuda_mma":  # a record of it runs only where the kernel may run (else the next choice)
        return cuda_mma_fits(tw, torch.bfloat16)
    if cfg.path not in ("w8a8", "w8a8_t", "w4a8") and not cfg.fixup and not cfg.tma and basic_pairs(cfg, tw):
        return True
    settings = runtime_settings()
    return (
        (tma_enabled(settings) or not cfg.tma)
        and (cfg.path != "w8a8" or tw.format in w8a8_formats(settings))
        and (cfg.path != "w8a8_t" or tw.format in w8a8_tile_formats(settings))
        and (cfg.path != "w4a8" or w4a8_enabled(settings))
        and (more_pairs_enabled(settings) or basic_pairs(cfg, tw))
        and (fixup_enabled(settings) or not cfg.fixup)
    )


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 64


# The untimed choice for 2-64 bf16 / fp16 rows on CUDA: the `mma_t` family most 4-bit records of the H100 table
# hold (sessions 9-18): plane dots with the bf16x2 pair decode joined four planes a dot where one scale covers a K
# step (sym_int4, nf4 / fp4 with four codes a gather, at groups of 128 or more), else plain plane dots (grouped
# 4-bit formats, asym_int4, the 8-bit formats: the untimed path keeps the activation rows as they are; the tuner
# may pick `w8a8_t`). Shapes a table lacks run it under XPULLM_TRITON_AUTOTUNE=0 and during graph capture.
DEFAULT_TILE_MAX_M = 64


def _default_tile(tw, bucket: int, x_dtype: torch.dtype) -> LaunchConfig | None:
    """The first of those families that can run here (a switch or the weight rules some out), with as many of its
    4 K splits as K allows; None where none can run."""
    base = LaunchConfig("mma_t", mma_block_m(bucket), 64, 4, 1, 4, 3, plane_dots=True)
    pairs = replace(base, pairs=True, quads=tw.format in CODEBOOK_FORMATS)
    # Only where one scale covers a K step: the codes go into the dots unscaled and each step's product is scaled
    # in fp32. Where a step spans groups each weight is scaled in the decode and rounded to bf16 a second time
    # (nf4 g64: relative error 5.9e-3 -> 7.4e-3 median, over 1e-2 in 2 of 150 seeds in the kernel tests' check).
    families = [replace(pairs, join=4), pairs] if one_scale_per_step(tw, base) else []
    families.append(base)
    for tile in families:
        for split in (4, 2, 1):
            cfg = replace(tile, split_k=split)
            if valid(cfg, tw, x_dtype) and switched_on(cfg, tw):
                return cfg
    return None


def default_config(tw, m: int, x_dtype: torch.dtype) -> LaunchConfig:
    """A sensible untimed choice: GEMV for 1 row; on CUDA the batched `mma_t` tile to 64 rows (elsewhere small
    tensor-core tiles to 16); dequant + GEMM beyond."""
    bucket = m_bucket(m)
    if 1 < bucket <= DEFAULT_TILE_MAX_M and tw.device.type != "xpu" and mma_enabled():
        tile = _default_tile(tw, bucket, x_dtype)
        if tile is not None:
            return tile
    if bucket > GEMV_MAX_M:
        return _DEQUANT
    if bucket > 1 and x_dtype in (torch.bfloat16, torch.float16):
        return _dot(16, 64 if tw.n >= 4096 else 32, 4, 1, 4, 3)
    bn = 16
    tiles = -(-tw.n // bn)
    # Split K until there are ~2 programs per SM, but keep >= 4 K steps per split.
    sms = _num_sms(tw.device) if tw.device.type != "cpu" else 1
    split = 1
    while tiles * split < 2 * sms and tw.kw // (split * 2) >= 4 * 64 and split < 8:
        split *= 2
    return _gemv(1, bn, 16, split, 4)


def autotune_enabled() -> bool:
    """Timing candidates is on unless XPULLM_TRITON_AUTOTUNE=0 or under the Triton interpreter."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return runtime_settings().triton_autotune
