"""CUDA C++ kernels: built on first use by the machine's `nvcc` for the GPU it has, loaded with ctypes.

`lowbit_mma.cu` multiplies low-bit weights (`FORMATS`: sym_int4, asym_int4, nf4 / fp4 in groups of 32, 64 or whole
128-code chunks; sym_int8, fp8_e4m3 / e5m2 in whole 64-code chunks or per row) in the Triton kernels' layout (no
second copy) by 2-64 bf16 activation rows on tensor cores (`mma.sync`, sm_80+), each lane's weight loads landing
directly in the operand fragments. The Triton launcher runs it as the `cuda_mma` path, which the tuner times beside
its own tiles (`kernels/triton/configs.py`). Nothing here runs at import. `available` is False - and those
candidates are left out - without `nvcc`, on a GPU older than sm_80, and with `XPULLM_CUDA_KERNELS=0`. Its twin
tests pass on an H100, where it halves nf4 / fp4 layers against the Triton tiles and ties them for int4 at 8 rows
(kernels/cuda/README.md); the tuner picks it per shape.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

import torch

from xpullm.kernels.codebook import CODEBOOKS
from xpullm.settings import runtime_settings

__all__ = [
    "FORMATS",
    "MMA_MAX_ROWS",
    "MMA_ROW_TILES",
    "available",
    "build_error",
    "group_args",
    "level_words",
    "loadable",
    "lowbit_mma",
]

log = logging.getLogger("xpullm.kernels.cuda")

_SOURCE = Path(__file__).with_name("lowbit_mma.cu")
MMA_MAX_ROWS = 64  # activation rows the kernel takes (8 per mma column tile, up to 8 tiles)
MMA_ROW_TILES = (1, 2, 4)  # 16-row weight tiles per warp the kernel is built for
MMA_WARPS = (4, 8)  # warps per program: its staging needs >= 128 threads, its launch bound is 256
_P, _I = ctypes.c_void_p, ctypes.c_int64
_build_errors: dict[str, str] = {}


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    for cand in (
        (Path(home) / "bin" / "nvcc") if home else None,
        shutil.which("nvcc"),
        "/usr/local/cuda/bin/nvcc",
    ):
        if cand and Path(cand).is_file():
            return str(cand)
    return None


def _arch(device: torch.device) -> str | None:
    """sm_XY's "XY" for `device`, None below sm_80 (no bf16 `mma.sync`)."""
    return _arch_of(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _arch_of(index: int) -> str | None:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{major}{minor}" if major >= 8 else None


def _compile(nvcc: str, arch: str, out: Path) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [
        nvcc, "-O3", "-shared", "-Xcompiler", "-fPIC", "-std=c++17", "-cudart", "static",
        f"-gencode=arch=compute_{arch},code=sm_{arch}", str(_SOURCE), "-o", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(proc.stderr.strip()[-800:])
    os.replace(tmp, out)  # atomic: a concurrent build or a kill never leaves a half-written library


@functools.cache
def _library(arch: str) -> ctypes.CDLL | None:
    nvcc = _nvcc()
    if nvcc is None:
        _build_errors[arch] = "no nvcc found (install the CUDA toolkit or set CUDA_HOME)"
        return None
    tag = hashlib.sha256(_SOURCE.read_bytes() + arch.encode()).hexdigest()[:16]
    path = runtime_settings().cache_dir() / "cuda" / f"lowbit_mma-sm{arch}-{tag}.so"
    try:
        lib = None
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as exc:  # built elsewhere (other system libraries): build it here
                log.warning("xpullm: %s does not load here (%s); rebuilding it", path.name, exc)
        if lib is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            log.warning(
                "xpullm: building the CUDA low-bit kernels for sm_%s (once, one to two minutes)", arch
            )
            _compile(nvcc, arch, path)
            lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _build_errors[arch] = f"building {_SOURCE.name} failed: {exc}"
        log.warning("xpullm: %s; the Triton kernels run instead", _build_errors[arch])
        return None
    return bind(lib)


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """`lib` (a build of lowbit_mma.cu) with its launch function's argument types set."""
    fn = lib.xpullm_lowbit_mma_launch
    fn.restype = ctypes.c_int
    words_p = ctypes.POINTER(ctypes.c_uint32)
    # x, ldx, words, kw, scales, zeros, ld_scales | n_groups, half_scales, kind | levels | group_blocks,
    # chunks_per_group | out, partials, counters | m, n, tiles, warps, split, pdl | stream
    fn.argtypes = [_P, _I, _P, _I, _P, _P, _I, *[ctypes.c_int] * 3, words_p, *[ctypes.c_int] * 2, _P, _P, _P]
    fn.argtypes += [ctypes.c_int] * 6 + [_P]  # m, n, tiles, warps, split, pdl | stream
    return lib


def loadable(device: torch.device) -> bool:
    """Whether the CUDA kernels build and load for `device` (builds them on the first call for its architecture)."""
    if device.type != "cuda":
        return False
    arch = _arch(device)
    return arch is not None and _library(arch) is not None


def available(device: torch.device) -> bool:
    """Whether the tuner may use the CUDA kernels on `device`: not switched off (`XPULLM_CUDA_KERNELS=0`) and loadable."""
    return runtime_settings().cuda_kernels and loadable(device)


def build_error(device: torch.device) -> str | None:
    """Why `available(device)` is False, where a build was tried."""
    arch = _arch(device) if device.type == "cuda" else None
    return _build_errors.get(arch or "")


# format -> (lowbit_mma.cu's `Kind`, bits per code)
FORMATS: dict[str, tuple[int, int]] = {
    "sym_int4": (0, 4),
    "asym_int4": (1, 4),
    "nf4": (2, 4),
    "fp4": (2, 4),
    "sym_int8": (3, 8),
    "fp8_e4m3": (4, 8),
    "fp8_e5m2": (5, 8),
}


@functools.cache
def level_words(levels: tuple[float, ...]) -> ctypes.Array:
    """A codebook's 16 levels, rounded to bf16, as the kernel's eight lookup words: words 0-3 hold the low bytes of
    levels 0-15 (byte c of word i: level 4 i + c), words 4-7 the high bytes."""
    if len(levels) != 16:
        raise ValueError(f"a 4-bit codebook has 16 levels, got {len(levels)}")
    bits = [int(b) & 0xFFFF for b in torch.tensor(levels, dtype=torch.float32).bfloat16().view(torch.int16)]
    words = [
        sum(((bits[4 * i + c] >> shift) & 0xFF) << (8 * c) for c in range(4))
        for shift in (0, 8)
        for i in range(4)
    ]
    return (ctypes.c_uint32 * 8)(*words)


def group_args(group_size: int, bits: int) -> tuple[int, int] | None:
    """(group_blocks, chunks_per_group) for the launch, or None where the kernel cannot take the groups. 4-bit
    groups of 32 / 64 codes are scaled per 32-code block before the mma; groups of whole chunks (128 codes for
    4-bit, 64 for 8-bit) or one per row (0) after it."""
    chunk = 512 // bits  # 16 words
    if bits == 4 and group_size in (32, 64):
        return group_size // 32, 0
    if group_size >= 0 and group_size % chunk == 0:
        return 0, group_size // chunk
    return None


def lowbit_mma(
    x: torch.Tensor,
    words: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    group_size: int,
    out: torch.Tensor,
    partials: torch.Tensor | None,
    counters: torch.Tensor | None,
    tiles: int,
    warps: int,
    split: int,
    fmt: str = "sym_int4",
) -> torch.Tensor:
    """out [M, N] (bf16) = x [M, KX] (bf16) @ W^T for weight `fmt` in the Triton layout: words [N, KW] (KW a
    multiple of 16: whole chunks), KX = KW x codes per word, `scales` [N, groups] (fp16 / fp32; a group =
    `group_size` codes, 0 = one per row). sym_int4: w = (q - 8) s; asym_int4: w = q s + z (`zeros` shaped and typed
    like `scales`); nf4 / fp4: w = level[q] s (levels in bf16); sym_int8: w = q s; fp8_e4m3: w = e4m3(q) s / 2^8
    (the layout's scales); fp8_e5m2: w = e5m2(q) s. `split` > 1 sums K splits through `partials` (fp32
    [split, M, N]) and `counters` (int32, one per output tile, zero; left zero). On sm_90+ it launches with
    programmatic dependent launch where the Triton kernels do (`kernels.triton.pdl`): its start overlaps the end of
    the kernel before it."""
    if fmt not in FORMATS:
        raise ValueError(f"lowbit_mma takes the formats {sorted(FORMATS)}, got {fmt!r}")
    kind, bits = FORMATS[fmt]
    m, kx = x.shape
    n, kw = words.shape
    if not (x.dtype == torch.bfloat16 and out.dtype == torch.bfloat16 and words.dtype == torch.int32):
        raise ValueError(
            f"lowbit_mma takes bf16 activations / output and int32 words, got {x.dtype}, {out.dtype}"
        )
    if (
        not 1 <= m <= MMA_MAX_ROWS
        or kx != kw * 32 // bits
        or kw % 16
        or x.stride(1) != 1
        or not words.is_contiguous()
    ):
        raise ValueError(
            f"lowbit_mma needs 1..{MMA_MAX_ROWS} activation rows of KX = {32 // bits} * KW features (KW % 16 == 0, "
            f"contiguous); got x {tuple(x.shape)} words {tuple(words.shape)}"
        )
    if tiles not in MMA_ROW_TILES or not MMA_WARPS[0] <= warps <= MMA_WARPS[1] or split < 1:
        raise ValueError(
            f"lowbit_mma takes tiles in {MMA_ROW_TILES}, {MMA_WARPS[0]}..{MMA_WARPS[1]} warps, split >= 1"
        )
    if split > 1 and (partials is None or counters is None):
        raise ValueError("lowbit_mma with split > 1 needs the partials workspace and the tile counters")
    if scales.dtype not in (torch.float16, torch.float32) or scales.stride(1) != 1:
        raise ValueError(f"lowbit_mma takes fp16 / fp32 scales with unit column stride, got {scales.dtype}")
    if zeros is not None and (zeros.dtype != scales.dtype or zeros.stride() != scales.stride()):
        raise ValueError("lowbit_mma takes zero points laid out like the scales (same dtype and strides)")
    if (zeros is not None) != (fmt == "asym_int4"):
        raise ValueError(f"lowbit_mma takes zero points for asym_int4 only (and needs them there), got {fmt}")
    groups = group_args(group_size, bits)
    if groups is None:
        raise ValueError(
            f"lowbit_mma takes {fmt} groups of {'32, 64 or ' if bits == 4 else ''}a multiple of "
            f"{512 // bits} codes (or 0: one per row), got {group_size}"
        )
    levels = CODEBOOKS.get(fmt)
    arch = _arch(x.device)
    lib = _library(arch) if arch else None
    if lib is None:
        raise RuntimeError(
            f"the CUDA low-bit kernel cannot run here: {build_error(x.device) or 'needs sm_80+'}"
        )
    from xpullm.kernels.triton.pdl import pdl_enabled  # the Triton kernels' switch: both or neither

    stream = torch.cuda.current_stream(x.device).cuda_stream
    code = lib.xpullm_lowbit_mma_launch(
        x.data_ptr(), x.stride(0), words.data_ptr(), kw, scales.data_ptr(),
        zeros.data_ptr() if zeros is not None else None, scales.stride(0), scales.shape[1],
        int(scales.dtype == torch.float16), kind, level_words(levels) if levels is not None else None,
        *groups, out.data_ptr(),
        partials.data_ptr() if partials is not None else None, counters.data_ptr() if counters is not None else None,
        m, n, tiles, warps, split, int(runtime_settings().cuda_pdl and pdl_enabled(x.device)), stream,
    )  # fmt: skip
    if code:
        raise RuntimeError(
            f"lowbit_mma launch failed with CUDA error {code} (tiles={tiles}, warps={warps}, m={m})"
        )
    return out
