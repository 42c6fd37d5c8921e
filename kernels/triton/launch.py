"""Host side: pick a launch configuration (timed once per shape) and run the Triton programs."""

from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.compiler.errors

from xpullm.kernels.triton import jit, tune_cache, w4a8, w8a8, w8a8_tile
from xpullm.kernels.triton.configs import (
    CUDA_MMA_FORMATS,
    Q8_FORMATS,
    Q8_ROW_TILES,
    Q8_ROWS_MAX,
    LaunchConfig,
    autotune_enabled,
    can_fold,
    can_join,
    can_pair,
    can_tma,
    candidates,
    cuda_mma_fits,
    cuda_mma_group,
    default_config,
    default_q8_config,
    m_bucket,
    one_scale_per_step,
    switched_on,
    tma_enabled,
    tma_twin,
)
from xpullm.kernels.triton.layout import TritonWeight
from xpullm.kernels.triton.pdl import launch_options
from xpullm.settings import runtime_settings

__all__ = [
    "Q8_KEY_DTYPE",
    "Q8Activations",
    "dequantize",
    "export_tuned",
    "load_tuned",
    "matmul",
    "matmul_q8",
    "mma_t_constexprs",
    "quantize_activations",
    "run",
    "run_q8",
    "select_config",
    "select_q8_config",
    "time_cold",
    "tune",
]

_DEQUANT_BLOCK_N, _DEQUANT_BLOCK_KB = 16, 16
_DEQUANT_CHUNK_ELEMS = 1 << 26  # decode at most this many weights at once (128 MiB of bf16) on the GEMM path
_REDUCE_BLOCK = 1024

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read once, like triton.jit does at decoration
_tuned: dict[tuple, LaunchConfig] = {}
_tune_lock = threading.Lock()


def _words_per_split(tw: TritonWeight, cfg: LaunchConfig) -> int:
    step = cfg.block_kb * 4
    per_split = -(-tw.kw // cfg.split_k)
    return -(-per_split // step) * step  # whole K steps, so split boundaries are step- (and group-) aligned


def whole_tiles(tw: TritonWeight, cfg: LaunchConfig, kbx: int) -> bool:
    """Whether `gemv_q8_kernel` may run unmasked (its EVEN flag): every program's row tiles lie inside N, every
    K step is whole, and each step's words have activation blocks and scale groups. True on the usual model
    shapes (K and N multiples of 512 with the tuned tiles)."""
    step = cfg.block_kb * 4
    return (
        tw.n % (cfg.block_n * cfg.tiles) == 0
        and tw.kw % step == 0
        and 4 * kbx >= tw.kw
        and tw.n_groups * tw.group_words >= tw.kw
    )


def one_step(tw: TritonWeight, cfg: LaunchConfig) -> bool:
    """Whether each K split of `gemv_q8_kernel` is a single K step (its ONE_STEP flag): then all of a program's
    row tiles multiply the same activations, which it loads once."""
    return _words_per_split(tw, cfg) == cfg.block_kb * 4


def _prepare_x(x: torch.Tensor, tw: TritonWeight) -> torch.Tensor:
    """x [..., K] -> contiguous [M, KX]; the pad columns are zero so the padded weight codes add nothing."""
    if x.shape[-1] != tw.k:
        raise ValueError(f"activation has {x.shape[-1]} features but the weight expects K={tw.k}")
    x2 = x.reshape(-1, tw.k)
    if tw.kx != tw.k:
        x2 = F.pad(x2, (0, tw.kx - tw.k))
    x2 = x2.contiguous()
    if x2.data_ptr() % 16:
        x2 = x2.clone()  # the GEMV reads bf16 pairs as int32 vectors: a view at an odd offset would fault
    return x2


def run(
    x2: torch.Tensor,
    tw: TritonWeight,
    cfg: LaunchConfig,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [M, N] = x2 [M, KX] @ W^T with one explicit configuration (tests and the tuner call this).

    `out` and `workspace` (fp32 [split_k, M, N]) may be passed in; every element of `out` is written.
    """
    m = x2.shape[0]
    if cfg.path == "gemv_q8":
        return run_q8(quantize_activations(x2[:, : tw.k]), tw, cfg, out=out, workspace=workspace)
    if cfg.path == "gemv" and cfg.block_m != 1:
        raise ValueError(f"the GEMV runs one activation row per program: block_m must be 1, got {cfg}")
    if cfg.path == "dot" and cfg.block_kb < 4:
        raise ValueError(f"tensor-core tiles need block_kb >= 4 (a dot of K >= 16 per bit plane), got {cfg}")
    if out is None:
        out = torch.empty((m, tw.n), dtype=x2.dtype, device=x2.device)
    if m == 0:
        return out
    if cfg.path == "dequant":
        return _dequant_matmul(x2, tw, out)
    if cfg.path == "mma":
        return _run_mma(x2, None, tw, cfg, out, workspace)
    if cfg.path == "mma_t":
        return _run_mma_t(x2, tw, cfg, out, workspace)
    if cfg.path == "w8a8":
        return w8a8.run(x2, tw, out)
    if cfg.path == "w4a8":
        return _run_w4a8(x2, tw, cfg, out, workspace)
    if cfg.path == "w8a8_t":
        return _run_w8a8_t(x2, tw, cfg, out, workspace)
    if cfg.path == "cuda_mma":
        return _run_cuda_mma(x2, tw, cfg, out, workspace)
    split = cfg.split_k
    workspace, target, stride_ys = _split_target(split, out, workspace)
    zeros = tw.zeros if tw.zeros is not None else tw.scales
    args = (
        x2, tw.words, tw.scales, zeros, tw.lut, target,
        m, tw.n, tw.kw, tw.n_groups, _words_per_split(tw, cfg),
        x2.stride(0), tw.words.stride(0), tw.scales.stride(0), target.stride(-2), stride_ys,
    )  # fmt: skip
    meta = dict(
        GROUP_WORDS=tw.group_words,
        FMT=tw.fmt_code,
        PLANES=tw.planes,
        HAS_ZERO=tw.zeros is not None,
        SCALE_PER_TILE=one_scale_per_step(tw, cfg),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_KB=cfg.block_kb,
        USE_WS=split > 1,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        **launch_options(x2.device),
    )
    if cfg.path == "gemv":
        grid = (triton.cdiv(tw.n, cfg.block_n), split, m)
        jit.gemv_kernel[grid](
            *args, **meta, X_BF16=x2.dtype == torch.bfloat16, PREFETCH=cfg.prefetch,
            CODEBOOK=_CODEBOOK_DECODE.get(tw.format, 0) if cfg.pairs else 0, EMULATE=_INTERPRET,
        )  # fmt: skip
    else:
        grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(tw.n, cfg.block_n), split)
        jit.dot_kernel[grid](*args, **meta, DOT_F32=_INTERPRET)
    if split > 1:
        _reduce_splits(workspace, out)
    return out


_Q8_BLOCKS = 16  # 32-element blocks per program of the activation quantizer


class Q8Activations(NamedTuple):
    """Activation rows quantized to int8 per block of 32, as `gemv_q8_kernel` reads them.

    Made by `quantize_activations`, or directly by a fused producer (`decode_ops.add_rms_norm` and
    `decode_ops.silu_mul` with `quantize=True`),
    so a decode step quantizes each activation row once, inside the kernel that computes it.
    """

    codes: torch.Tensor
    """int32 [M, 8 * KB]: four int8 codes per word, in the order the weight nibbles unpack."""
    scales: torch.Tensor
    """fp32 [M, KB]: absmax / 127 of each block."""
    sums: torch.Tensor
    """fp32 [M, KB]: scale * the sum of each block's codes (the zero-point / int4-offset term)."""
    dtype: torch.dtype
    """The dtype the unquantized activations had, which the product is returned in."""

    @property
    def rows(self) -> int:
        return self.codes.shape[0]

    @staticmethod
    def empty(m: int, k: int, dtype: torch.dtype, device: torch.device) -> Q8Activations:
        """Buffers for `m` rows of width `k` (ceil(k / 32) blocks)."""
        kb = -(-k // 32)
        return Q8Activations(
            torch.empty((m, 8 * kb), dtype=torch.int32, device=device),
            torch.empty((m, kb), dtype=torch.float32, device=device),
            torch.empty((m, kb), dtype=torch.float32, device=device),
            dtype,
        )


def quantize_activations(x: torch.Tensor) -> Q8Activations:
    """x [..., K] -> `Q8Activations` of the flattened rows (the activation side of `gemv_q8_kernel`)."""
    k = x.shape[-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    act = Q8Activations.empty(x2.shape[0], k, x.dtype, x.device)
    kb = act.scales.shape[1]
    if x2.shape[0] == 0:
        return act
    grid = (x2.shape[0], triton.cdiv(kb, _Q8_BLOCKS))
    jit.quantize_x_q8_kernel[grid](
        x2, act.codes, act.scales, act.sums, k, kb, x2.stride(0), act.codes.stride(0), act.scales.stride(0),
        BLOCKS=_Q8_BLOCKS, num_warps=4, **launch_options(x2.device),
    )  # fmt: skip
    return act


def run_q8(
    act: Q8Activations,
    tw: TritonWeight,
    cfg: LaunchConfig,
    out: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """y [M, N] = dequantized activations @ W^T through `gemv_q8_kernel` (block_m <= Q8_ROWS_MAX rows per
    program, each weight step unpacked once for all of them) or `gemv_q8_rows_kernel` (16 rows per program) with
    one explicit configuration."""
    if cfg.path != "mma" and (cfg.path != "gemv_q8" or cfg.block_m not in Q8_ROW_TILES):
        raise ValueError(
            f"run_q8 runs gemv_q8 ({Q8_ROW_TILES} activation rows per program, block_m) or mma tiles, got {cfg}"
        )
    if cfg.tiles != 1 and cfg.block_m > Q8_ROWS_MAX:
        raise ValueError(
            f"only gemv_q8 programs of up to {Q8_ROWS_MAX} rows walk several weight tiles (tiles > 1), got {cfg}"
        )
    if tw.format not in Q8_FORMATS:
        raise ValueError(
            f"the int8-activation GEMV runs {' and '.join(Q8_FORMATS)} weights only, not {tw.format}"
        )
    kbx = act.scales.shape[1]
    if kbx != -(-tw.k // 32):
        raise ValueError(
            f"activations hold {kbx} blocks of 32 but the weight has K={tw.k} ({-(-tw.k // 32)} blocks); "
            "quantize rows of the weight's input width"
        )
    m = act.rows
    if out is None:
        out = torch.empty((m, tw.n), dtype=act.dtype, device=tw.device)
    if m == 0:
        return out
    if cfg.path == "mma":
        return _run_mma(act.codes, act.scales, tw, cfg, out, workspace)
    split = cfg.split_k
    workspace, target, stride_ys = _split_target(split, out, workspace)
    zeros = tw.zeros if tw.zeros is not None else tw.scales
    args = (
        act.codes, act.scales, act.sums, tw.words, tw.scales, zeros, target,
        m, tw.n, tw.kw, kbx, tw.n_groups, _words_per_split(tw, cfg),
        act.codes.stride(0), act.scales.stride(0), tw.words.stride(0), tw.scales.stride(0), target.stride(-2),
        stride_ys,
    )  # fmt: skip
    meta = dict(
        GROUP_WORDS=tw.group_words, HAS_ZERO=tw.zeros is not None, SCALE_PER_TILE=one_scale_per_step(tw, cfg),
        BLOCK_N=cfg.block_n, BLOCK_KB=cfg.block_kb, USE_WS=split > 1,
        EMULATE=_INTERPRET or tw.device.type != "cuda", PREFETCH=cfg.prefetch, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **launch_options(tw.device),
    )  # fmt: skip
    row_tiles = triton.cdiv(tw.n, cfg.block_n)
    if cfg.block_m <= Q8_ROWS_MAX:
        grid = (triton.cdiv(row_tiles, cfg.tiles), split, triton.cdiv(m, cfg.block_m))
        jit.gemv_q8_kernel[grid](
            *args, **meta, TILES=cfg.tiles, EVEN=whole_tiles(tw, cfg, kbx), ONE_STEP=one_step(tw, cfg),
            ROWS=cfg.block_m,
        )  # fmt: skip
    else:
        grid = (row_tiles, split, triton.cdiv(m, cfg.block_m))
        jit.gemv_q8_rows_kernel[grid](*args, **meta, ROWS=cfg.block_m)
    if split > 1:
        _reduce_splits(workspace, out)
    return out


def _run_mma(
    x: torch.Tensor,
    xs: torch.Tensor | None,
    tw: TritonWeight,
    cfg: LaunchConfig,
    out: torch.Tensor,
    workspace: torch.Tensor | None,
) -> torch.Tensor:
    """`jit.mma_kernel`: x [M, KX] in bf16 / fp16 (xs None), or int8 codes [M, 8 KB] with their block scales xs."""
    x_q8 = xs is not None
    if not x_q8 and x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"mma tiles take bf16 / fp16 activations (fp32 dots would run as tf32), got {x.dtype}"
        )
    if cfg.block_m < 16:
        raise ValueError(f"mma tiles need block_m >= 16 (tl.dot's smallest M), got {cfg}")
    m = x.shape[0]
    split = cfg.split_k
    workspace, target, stride_ys = _split_target(split, out, workspace)
    zeros = tw.zeros if tw.zeros is not None else tw.scales
    scales_x = xs if x_q8 else tw.scales  # a placeholder pointer when the activations are floats
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(tw.n, cfg.block_n), split)
    jit.mma_kernel[grid](
        x, scales_x, tw.words, tw.scales, zeros, tw.lut, target,
        m, tw.n, tw.kw, scales_x.shape[1] if x_q8 else 0, tw.n_groups, _words_per_split(tw, cfg),
        x.stride(0), scales_x.stride(0), tw.words.stride(0), tw.scales.stride(0), target.stride(-2), stride_ys,
        GROUP_WORDS=tw.group_words, FMT=tw.fmt_code, PLANES=tw.planes, HAS_ZERO=tw.zeros is not None,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_KB=cfg.block_kb, USE_WS=split > 1, X_Q8=x_q8,
        POST_SCALE=one_scale_per_step(tw, cfg) and tw.zeros is None,
        DOT_F32=_INTERPRET, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(tw.device),
    )  # fmt: skip
    if split > 1:
        _reduce_splits(workspace, out)
    return out


_CODEBOOK_DECODE = {
    "nf4": 1,
    "fp4": 2,
}  # jit.mma_t_kernel's CODEBOOK: select tree / e2m1 bits; else the table


def _run_mma_t(
    x: torch.Tensor, tw: TritonWeight, cfg: LaunchConfig, out: torch.Tensor, workspace: torch.Tensor | None
) -> torch.Tensor:
    """`jit.mma_t_kernel`: x [M, KX] bf16 / fp16 times the weight, computed as W @ x^T."""
    if x.dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(
            f"mma_t tiles take bf16 / fp16 activations (fp32 dots would run as tf32), got {x.dtype}"
        )
    bkw = cfg.block_kb * 4
    if cfg.block_m < 16 or (cfg.plane_dots and bkw < 16):
        raise ValueError(f"mma_t tiles need block_m >= 16 and, with plane_dots, block_kb >= 4; got {cfg}")
    if cfg.accs not in (1, 2, 4, 8) or (cfg.accs > 1 and not cfg.plane_dots):
        raise ValueError(
            f"mma_t takes accs = 1, 2, 4 or 8, and more than one only with plane_dots; got {cfg}"
        )
    if cfg.fold and not can_fold(cfg, tw):
        raise ValueError(
            f"fold=True scales each step's plane dots by its one scale per row; {tw.format} (group "
            f"{tw.group_size}) with {cfg} has several scales per step: use fold=False"
        )
    if not can_join(cfg):
        raise ValueError(
            f"join (planes per dot: 1, 2 or 4) joins the planes of pair decodes; above 1 it needs pairs=True; got {cfg}"
        )
    if cfg.pairs and not can_pair(cfg, tw, x.dtype):
        raise ValueError(
            f"pairs=True decodes two 4-bit planes (sym_int4, nf4, fp4) at a time for bf16 activations in plane "
            f"dots; {tw.format} (group {tw.group_size}) x {x.dtype} with {cfg} is not that: use pairs=False"
        )
    m = x.shape[0]
    split = cfg.split_k
    workspace, target, stride_ys = _split_target(split, out, workspace)
    zeros = tw.zeros if tw.zeros is not None else tw.scales
    grid = (triton.cdiv(tw.n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    counters = _tile_counters(tw.device, grid[0] * grid[2]) if cfg.fixup and split > 1 else None
    jit.mma_t_kernel[grid](
        x, _weight_operand(tw.words, cfg, cfg.block_kb * 4, tw), tw.scales, zeros, tw.lut, target,
        m, tw.n, tw.kw, tw.n_groups, _words_per_split(tw, cfg),
        x.stride(0), tw.words.stride(0), tw.scales.stride(0), target.stride(-2), stride_ys,
        out, counters if counters is not None else tw.words,
        **mma_t_constexprs(tw, cfg), FIXUP=counters is not None, TMA=cfg.tma, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **launch_options(tw.device),
    )  # fmt: skip
    if split > 1 and counters is None:
        _reduce_splits(workspace, out)
    return out


def _run_w4a8(
    x: torch.Tensor, tw: TritonWeight, cfg: LaunchConfig, out: torch.Tensor, workspace: torch.Tensor | None
) -> torch.Tensor:
    """`w4a8.mma_kernel`: the rows of x [M, KX] quantized to int8 (a scale per 64 elements), times the sym_int4
    weight's codes on int8 tensor cores."""
    if not w4a8.supports(tw, x.dtype):
        raise ValueError(
            f"w4a8 runs sym_int4 weights whose scale groups hold whole 128-element dots (group >= 128) with "
            f"bf16 / fp16 / fp32 activations; got {tw.format} group {tw.group_size}, {x.dtype}: use mma_t"
        )
    if cfg.block_m < 16 or cfg.block_kb not in (4, 8, 16):
        raise ValueError(
            f"w4a8 tiles need block_m >= 16 and block_kb 4, 8 or 16 (1, 2, 4 dots per step); got {cfg}"
        )
    m = x.shape[0]
    xq, xs = w4a8.quantize(x, tw.kx)
    split = cfg.split_k
    workspace, target, stride_ys = _split_target(split, out, workspace)
    grid = (triton.cdiv(tw.n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    counters = _tile_counters(tw.device, grid[0] * grid[2]) if cfg.fixup and split > 1 else None
    step = cfg.block_kb * 4
    w4a8.mma_kernel[grid](
        xq, xs, tw.words.view(torch.int8), tw.scales, target,
        m, tw.n, tw.kw, _words_per_split(tw, cfg),
        xq.stride(0), xs.stride(0), 4 * tw.words.stride(0), tw.scales.stride(0), target.stride(-2), stride_ys,
        out, counters if counters is not None else tw.words,
        GROUP_WORDS=tw.group_words, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DOTS=cfg.block_kb // 4,
        USE_WS=split > 1, EVEN=tw.n % cfg.block_n == 0 and tw.kw % step == 0, DOT_I32=_INTERPRET,
        FIXUP=counters is not None, PREFETCH=cfg.prefetch, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **launch_options(tw.device),
    )  # fmt: skip
    if split > 1 and counters is None:
        _reduce_splits(workspace, out)
    return out


def _run_w8a8_t(
    x: torch.Tensor, tw: TritonWeight, cfg: LaunchConfig, out: torch.Tensor, workspace: torch.Tensor | None
) -> torch.Tensor:
    """`w8a8_tile.tile_kernel`: the rows of x [M, KX] quantized per block to the weight's 8-bit type (by the
    quantizer, or with `tile_quantizes` by the tile's programs), times its bytes on fp8 / int8 tensor cores."""
    if not w8a8_tile.supports(tw, x.dtype):
        raise ValueError(
            f"w8a8_t runs fp8_e4m3 / sym_int8 weights with one scale per row and bf16 / fp16 activations; got "
            f"{tw.format} (group {tw.group_size}), {x.dtype}: use mma_t"
        )
    block = w8a8_tile.act_block(tw.format)
    if cfg.block_m < 16 or cfg.block_kb * 16 % block:
        raise ValueError(
            f"w8a8_t tiles need block_m >= 16 and K steps (block_kb x 16 bytes) of whole {block}-element "
            f"activation blocks; got {cfg}"
        )
    if cfg.tile_quantizes:  # the programs round the bf16 rows themselves (the scales: a placeholder pointer)
        return w8a8_t_launch(x, tw.scales, tw, cfg, out, workspace)
    xq, xs = w8a8_tile.quantize(x, tw)
    return w8a8_t_launch(xq, xs, tw, cfg, out, workspace)


def w8a8_t_launch(
    xq: torch.Tensor,
    xs: torch.Tensor,
    tw: TritonWeight,
    cfg: LaunchConfig,
    out: torch.Tensor,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """The `w8a8_t` tile alone, over codes and scales from `w8a8_tile.quantize` (or, with `tile_quantizes`, the
    bf16 / fp16 rows and any placeholder): what `run` launches after the quantizer, and what
    bench/gpu_w8a8t_parts.py times apart from it."""
    block = w8a8_tile.act_block(tw.format)
    dtype, qmax, factor = w8a8.FORMATS[tw.format]
    if _INTERPRET and not cfg.tile_quantizes:
        xq = xq.view(torch.int8)  # the interpreter cannot mask fp8 loads: their bytes
    operand = torch.int8 if _INTERPRET else dtype
    m = xq.shape[0]
    nb = -(-tw.kx // block)
    dots = cfg.block_kb * 16 // block
    split = cfg.split_k
    # blocks per split: whole K steps (trailing splits may be empty)
    per_split = -(-nb // (split * dots)) * dots
    workspace, target, stride_ys = _split_target(split, out, workspace)
    grid = (triton.cdiv(tw.n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
    counters = _tile_counters(tw.device, grid[0] * grid[2]) if cfg.fixup and split > 1 else None
    even = tw.n % cfg.block_n == 0 and tw.kx % block == 0 and nb == split * per_split
    w8a8_tile.tile_kernel[grid](
        xq, xs, _weight_operand(tw.words.view(operand), cfg, block, tw), tw.scales, target,
        m, tw.n, tw.kx, nb, per_split,
        xq.stride(0), xs.stride(0), 4 * tw.words.stride(0), tw.scales.stride(0), target.stride(-2), stride_ys,
        out, counters if counters is not None else tw.words,
        B=block, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, DOTS=dots, INT8=dtype == torch.int8,
        USE_WS=split > 1, EVEN=even, EMULATE=_INTERPRET, FIXUP=counters is not None,
        TILE_QUANTIZES=cfg.tile_quantizes, QMAX=qmax, SCALE_FACTOR=factor, TMA=cfg.tma,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **launch_options(tw.device),
    )  # fmt: skip
    if split > 1 and counters is None:
        _reduce_splits(workspace, out)
    return out


def _run_cuda_mma(
    x: torch.Tensor, tw: TritonWeight, cfg: LaunchConfig, out: torch.Tensor, workspace: torch.Tensor | None
) -> torch.Tensor:
    """`kernels/cuda/lowbit_mma.cu` on this weight's words as they are (`CUDA_MMA_FORMATS`)."""
    from xpullm.kernels import cuda

    if not cuda_mma_fits(tw, x.dtype):
        raise ValueError(
            f"cuda_mma runs {' / '.join(CUDA_MMA_FORMATS)} (4-bit groups of 32, 64 or a multiple of 128; 8-bit "
            f"groups of a multiple of 64 or per row) x bf16 rows on CUDA where the kernel builds, unless "
            f"XPULLM_CUDA_KERNELS=0; got {tw.format} group {tw.group_size} x {x.dtype} "
            f"({cuda.build_error(tw.device) or 'no build error'})"
        )
    split = min(cfg.split_k, tw.kw // 16)
    counters = _tile_counters(tw.device, triton.cdiv(tw.n, cfg.block_n)) if split > 1 else None
    if counters is None:  # one pass; also when the counter array cannot be made (inside a graph capture)
        split = 1
    workspace, _, _ = _split_target(split, out, workspace)
    return cuda.lowbit_mma(
        x, tw.words, tw.scales, tw.zeros, cuda_mma_group(tw), out, workspace, counters, cfg.tiles, cfg.num_warps,
        split, fmt=tw.format,
    )  # fmt: skip


def _weight_operand(words: torch.Tensor, cfg: LaunchConfig, step: int, tw: TritonWeight) -> Any:
    """The weight argument of a tile launch: `words` itself, or with `cfg.tma` a tensor descriptor of it whose
    blocks are the tile's [block_n, step] (step: words or bytes of a K step's load)."""
    if not cfg.tma:
        return words
    if not can_tma(cfg, tw):
        raise ValueError(
            f"tma=True loads whole [{cfg.block_n}, {step}] weight tiles by TMA copies (CUDA compute capability "
            f"9.0+); {tw.format} {tw.n}x{tw.k} with {cfg} has partial tiles or no TMA here: use tma=False"
        )
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor(words, list(words.shape), [words.stride(0), 1], [cfg.block_n, step])


_COUNTER_TILES = 1 << 16  # output tiles one counter array covers (a 128256-row head in 64-row tiles: 2004)
_counters: dict[torch.device, torch.Tensor] = {}


def _tile_counters(device: torch.device, tiles: int) -> torch.Tensor | None:
    """The int32 arrival counters of `mma_t`'s in-kernel split-K sum, one array per device, zero between calls
    (each tile's last split resets its own). One array for every stream: CUDA graphs are captured on a side
    stream and replayed on the caller's, so per-stream arrays would miss each other; kernels of two streams
    running at the same time on one device would share counts - the engine runs one step at a time. None (the
    reduce kernel runs instead) when the grid has more tiles than the array, or when the array would have to
    be made during a CUDA graph capture (the engine's eager warm-up makes it first)."""
    if tiles > _COUNTER_TILES:
        return None
    cnt = _counters.get(device)
    if cnt is None and not _capturing(device):
        cnt = _counters[device] = torch.zeros(_COUNTER_TILES, dtype=torch.int32, device=device)
    return cnt


def mma_t_constexprs(tw: TritonWeight, cfg: LaunchConfig) -> dict[str, int | bool]:
    """The compile-time arguments of `jit.mma_t_kernel` for weight `tw` under `cfg` (also what
    bench/triton_static.py compiles offline)."""
    bkw = cfg.block_kb * 4
    row_scale = one_scale_per_step(tw, cfg)
    return dict(
        GROUP_WORDS=tw.group_words, FMT=tw.fmt_code, PLANES=tw.planes, HAS_ZERO=tw.zeros is not None,
        CODEBOOK=_CODEBOOK_DECODE.get(tw.format, 0), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BKW=bkw,
        PLANE_DOTS=cfg.plane_dots, PAIRS=cfg.pairs, NATURAL=cfg.natural, USE_WS=cfg.split_k > 1,
        POST_SCALE=row_scale and not cfg.fold, ROW_SCALE=row_scale, ACCS=cfg.accs, JOIN=cfg.join, QUADS=cfg.quads,
        EVEN=tw.n % cfg.block_n == 0 and tw.kw % bkw == 0, DOT_F32=_INTERPRET,
    )  # fmt: skip


def _split_target(
    split: int, out: torch.Tensor, workspace: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, int]:
    """(workspace, where the programs write, its split stride): `out` itself, or fp32 [split, M, N] partials."""
    if split == 1:
        return workspace, out, 0
    if workspace is None:
        workspace = torch.empty((split, *out.shape), dtype=torch.float32, device=out.device)
    return workspace, workspace, workspace.stride(0)


def _reduce_splits(workspace: torch.Tensor, out: torch.Tensor) -> None:
    numel = out.numel()
    jit.splitk_reduce_kernel[(triton.cdiv(numel, _REDUCE_BLOCK),)](
        workspace, out, numel, workspace.stride(0), SPLIT_K=workspace.shape[0], BLOCK=_REDUCE_BLOCK,
        **launch_options(out.device),
    )  # fmt: skip


def dequantize(
    tw: TritonWeight,
    dtype: torch.dtype = torch.bfloat16,
    rows: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode rows [r0, r1) (default: all) of the weight into a dense [rows, K] tensor of `dtype`."""
    r0, r1 = rows if rows is not None else (0, tw.n)
    if out is None:
        out = torch.empty((r1 - r0, tw.k), dtype=dtype, device=tw.device)
    zeros = tw.zeros if tw.zeros is not None else tw.scales
    # Offsets inside the kernel are 32-bit: launch at most 2**30 outputs at a time.
    step = max(1, (1 << 30) // max(tw.kw * tw.planes, 1))
    for c0 in range(r0, r1, step):
        c1 = min(c0 + step, r1)
        dst = out[c0 - r0 : c1 - r0]
        grid = (triton.cdiv(c1 - c0, _DEQUANT_BLOCK_N), triton.cdiv(tw.kw, _DEQUANT_BLOCK_KB * 4))
        jit.dequant_kernel[grid](
            tw.words[c0:], tw.scales[c0:], zeros[c0:], tw.lut, dst,
            c1 - c0, tw.k, tw.kw, tw.n_groups, tw.words.stride(0), tw.scales.stride(0), dst.stride(0),
            GROUP_WORDS=tw.group_words, FMT=tw.fmt_code, PLANES=tw.planes, HAS_ZERO=tw.zeros is not None,
            BLOCK_N=_DEQUANT_BLOCK_N, BLOCK_KB=_DEQUANT_BLOCK_KB,
        )  # fmt: skip
    return out


def _dequant_matmul(x2: torch.Tensor, tw: TritonWeight, out: torch.Tensor) -> torch.Tensor:
    """Prefill path: decode to x's dtype in row chunks, then the vendor GEMM (cuBLAS / oneDNN)."""
    x = x2[:, : tw.k]
    rows_per_chunk = max(1, _DEQUANT_CHUNK_ELEMS // max(tw.k, 1))
    if rows_per_chunk >= tw.n:
        torch.matmul(x, dequantize(tw, x2.dtype).t(), out=out)
        return out
    for r0 in range(0, tw.n, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, tw.n)
        out[:, r0:r1] = F.linear(x, dequantize(tw, x2.dtype, rows=(r0, r1)))
    return out


def _device_kind(device: torch.device) -> str:
    return "xpu" if device.type == "xpu" else "cuda"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "xpu":
        return torch.xpu.get_device_name(device)
    return device.type


def _key(tw: TritonWeight, m: int, dtype: torch.dtype | str) -> tuple:
    return (_device_name(tw.device), tw.format, tw.group_words, tw.n, tw.kw, m_bucket(m), str(dtype))


# -- tuned tables ---------------------------------------------------------------------------------------
# Timing results can be exported (`export_tuned`, e.g. by bench/gpu_kernels.py) and shipped as
# `tuned_<device name>.json` next to this file; they are loaded on the first call for that device, so a known GPU starts
# with the measured winners and never times candidates for the shapes listed there.
_TUNED_DIR = Path(__file__).parent
_loaded_tables: set[str] = set()
_FIELDS = tune_cache.FIELDS
_slug = tune_cache.device_slug


def _record(key: tuple, cfg: LaunchConfig) -> dict:
    return {**dict(zip(_FIELDS, key, strict=True)), "config": asdict(cfg)}


def export_tuned() -> list[dict]:
    """Every tuned (shape -> configuration) entry of this process, as JSON-able records."""
    return [_record(key, cfg) for key, cfg in _tuned.items()]


def load_tuned(source: str | Path | list[dict]) -> int:
    """Add records from `export_tuned` (a list, or a JSON file holding one); returns how many were added."""
    records = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
    for rec in records:
        key = tuple(rec[f] for f in _FIELDS)
        _tuned.setdefault(key, LaunchConfig(**rec["config"]))
    return len(records)


def _load_packaged_table(device: torch.device) -> None:
    """Load, once per device name, `$XPULLM_TRITON_TUNED` (a table of your own, e.g. from the sweep; it wins),
    then the winners this machine timed before (`tune_cache`), then the packaged `tuned_<device>.json`."""
    name = _device_name(device)
    if name in _loaded_tables:
        return
    _loaded_tables.add(name)
    extra = runtime_settings().triton_tuned
    if extra:
        if not Path(extra).is_file():
            raise FileNotFoundError(
                f"XPULLM_TRITON_TUNED={extra} does not exist; unset it or point it at a table"
            )
        load_tuned(extra)
    load_tuned(tune_cache.read(name))
    path = _TUNED_DIR / f"tuned_{_slug(name)}.json"
    if path.is_file():
        load_tuned(path)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


_flush_buffers: dict[torch.device, torch.Tensor] = {}


_SLEEP_CYCLES = 400_000  # ~0.2 ms at H100 clocks


def time_cold(fn, device: torch.device, reps: int = 30, warmup: int = 3) -> float:
    """Median milliseconds of `fn()` with the L2 cache flushed before every call (weights come from DRAM).

    Like `triton.testing.do_bench`, but with a fixed repetition count: its time-based count spends ~10k
    flushes on a 10 us kernel, which would make tuning a model's worth of shapes take minutes.
    """
    mod = torch.xpu if device.type == "xpu" else torch.cuda
    flush = _flush_buffers.get(device)
    if flush is None:
        flush = _flush_buffers[device] = torch.empty(256 << 20, dtype=torch.int8, device=device)
    for _ in range(warmup):
        fn()
    events = [(mod.Event(enable_timing=True), mod.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        flush.zero_()
        if device.type == "cuda":
            # Keep the GPU busy while the CPU launches `fn`, so the events time the kernel and not the
            # Python launch path (tens of microseconds for a Triton launch, more than a 4k x 4k GEMV).
            torch.cuda._sleep(_SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
    mod.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def _fastest(tw: TritonWeight, pool: list[LaunchConfig], call, fallback: LaunchConfig) -> LaunchConfig:
    """The candidate of `pool` for which `call(cfg)` times fastest (`time_cold`), or `fallback`.

    A tile this device cannot hold or this Triton cannot build is skipped with a warning.
    """
    best, best_ms = fallback, float("inf")
    for cfg in pool:
        try:
            ms = time_cold(lambda cfg=cfg: call(cfg), tw.device)
        except (
            triton.runtime.errors.OutOfResources,
            triton.compiler.errors.CompilationError,
            RuntimeError,
        ) as exc:
            if isinstance(exc, RuntimeError) and "PassManager" not in str(exc):
                raise  # only a compiler pipeline failure (seen in Triton 3.6 for some dot tiles) is skipped
            # A tile this device cannot hold (shared memory / registers) or this Triton cannot build:
            # skip it, but say so - a table entry that never runs is worth fixing.
            warnings.warn(f"xpullm triton: skipping {cfg} for {tw.format} {tw.n}x{tw.k}: {exc}", stacklevel=3)
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    return best


def tune(tw: TritonWeight, m: int, dtype: torch.dtype = torch.bfloat16) -> LaunchConfig:
    """Time every candidate for `m` rows on random activations; cache and return the fastest. A record already
    there is kept only while its path may run (`switched_on`): one a switch or this machine rules out (e.g. a
    packaged `cuda_mma` record where no `nvcc` can build the kernel) is timed anew and replaced."""
    key = _key(tw, m, dtype)
    with _tune_lock:
        cached = _tuned.get(key)
        if cached is not None and switched_on(cached, tw):
            return cached
        bucket = m_bucket(m)
        x2 = torch.randn((bucket, tw.kx), dtype=dtype, device=tw.device)
        pool = candidates(_device_kind(tw.device), tw, bucket, dtype)
        best = _fastest(tw, pool, lambda cfg: run(x2, tw, cfg), default_config(tw, m, dtype))
        twin = tma_twin(best, tw, dtype)
        if twin is not None:  # the winner's load-path twin (the same numbers), head to head
            best = _fastest(tw, [best, twin], lambda cfg: run(x2, tw, cfg), best)
        _tuned[key] = best
        tune_cache.remember([_record(key, best)])
        return best


def select_config(tw: TritonWeight, m: int, dtype: torch.dtype) -> LaunchConfig:
    """The cached tuned configuration, tuning now when allowed, else `default_config`. A record whose tile a
    switch has turned off since (e.g. XPULLM_TRITON_W8A8_T=off under a table that picked `w8a8_t`) is passed
    over, so the switch holds for tuned shapes too; a record whose TMA copies are switched off
    (XPULLM_TRITON_TMA=0) or cannot run here (an older Triton, a pre-Hopper card) keeps its tile with thread
    loads."""
    _load_packaged_table(tw.device)
    key = _key(tw, m, dtype)
    cfg = _tuned.get(key)
    if cfg is not None:
        if cfg.tma and not (can_tma(cfg, tw) and tma_enabled()):
            cfg = replace(cfg, tma=False)  # no TMA here, or XPULLM_TRITON_TMA=0: the same tile, thread loads
        if switched_on(cfg, tw):
            return cfg
    if autotune_enabled() and not _capturing(tw.device):
        return tune(tw, m, dtype)
    return default_config(tw, m, dtype)


Q8_KEY_DTYPE = "int8x32"  # the activation "dtype" of `matmul_q8` in tuning keys and tables


def select_q8_config(tw: TritonWeight, m: int) -> LaunchConfig:
    """The `gemv_q8` configuration for activations that arrive already quantized (`matmul_q8`).

    Tuned separately from `select_config` (key dtype `Q8_KEY_DTYPE`): here the GEMV alone is timed, since the
    quantizer is the producer's cost now. Falls back to the untimed default when timing is not allowed.
    """
    _load_packaged_table(tw.device)
    key = _key(tw, m, Q8_KEY_DTYPE)
    cfg = _tuned.get(key)
    if cfg is not None:
        return cfg
    if not autotune_enabled() or _capturing(tw.device):
        return default_q8_config(m)
    with _tune_lock:
        if key in _tuned:
            return _tuned[key]
        act = quantize_activations(torch.randn((m_bucket(m), tw.k), dtype=torch.bfloat16, device=tw.device))
        pool = [
            c
            for c in candidates(_device_kind(tw.device), tw, m, torch.bfloat16)
            if c.path in ("gemv_q8", "mma")
        ]
        best = _fastest(tw, pool, lambda cfg: run_q8(act, tw, cfg), default_q8_config(m))
        _tuned[key] = best
        tune_cache.remember([_record(key, best)])
        return best


def matmul_q8(act: Q8Activations, tw: TritonWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = activations @ W^T for rows already quantized to int8 (`Q8Activations`), in act.dtype."""
    return run_q8(act, tw, select_q8_config(tw, act.rows), out=out)


def matmul(x: torch.Tensor, tw: TritonWeight, out: torch.Tensor | None = None) -> torch.Tensor:
    """y [..., N] = x [..., K] @ W^T for a Triton-layout weight (x bf16 / fp16 / fp32)."""
    x2 = _prepare_x(x, tw)
    cfg = select_config(tw, x2.shape[0], x2.dtype)
    y = run(x2, tw, cfg, out=out)
    return y.reshape(*x.shape[:-1], tw.n)
