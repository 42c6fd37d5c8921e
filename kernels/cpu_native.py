"""CPU fast paths compiled on the user's machine, one native kernel for every low-bit format.

PyTorch's `_weight_int4pack_mm_for_cpu` decodes every weight to float and multiplies in floating point, and it has
no op at all for nf4, fp4 or fp8. These kernels (source: `csrc/cpu_ops.c`) do what llama.cpp does instead for the
integer and codebook formats: activations are quantised per block of 32 to int8 and each block's dot product is
integer multiply-adds (AVX2 `vpmaddubsw`, AVX-512 VNNI `vpdpbusd` on four tiles of 4 rows per block with AMX's
arithmetic, and for calls of many rows AMX `tdpbssd` on 16 x 16 tiles per block of 32); nf4/fp4 nibbles go through a 16-entry int8
table (`vpshufb`); fp8 codes are turned into fp16 bit patterns in registers and multiplied in fp32. The same
library holds RMSNorm, SwiGLU, a decode step's attention, which the decoder calls on CPU in fp32, the
continuous-batching engine's paged attention (`paged_attention`, dispatched by `xpullm.kernels.paged`), and the
engine's fused layer halves (`norm_linear`: residual add + RMSNorm + projection; `out_mlp`: output projection +
residual add + RMSNorm + gate/up + SwiGLU + down), which quantise each activation once and allocate nothing.

The C file is compiled once per source version with the system C compiler (`$CC`, `cc` or `gcc`) into
`$XPULLM_CACHE/native` and loaded with ctypes: no build step at install, no PyTorch headers, no -march flag. The
library picks its SIMD path at run time from CPUID (`isa_paths()`: `avx2`, then `avx512_vnni` where the CPU and
OS have it, then `amx` where CPUID, XCR0 and Linux's tile-data permission allow it); `XPULLM_CPU_ISA=avx2` (or
`forced_isa`) forces a path. The amx path runs the integer and codebook formats' calls of at least `amx_min_rows`
rows (default 8: prefill and batched decode) on AMX-INT8 `tdpbssd` tiles, and shorter calls on VNNI with the
tiles' arithmetic, so a row's result is the same bit for bit whatever its call's row count (batch invariance).
fp8 can run its long calls on AMX-BF16 `tdpbf16ps` tiles (activations split into two bf16 halves, 2^-17 close to
fp32): opt-in (`amx_fp8`, `XPULLM_AMX_FP8=1`), since those rows are not bit for bit the short calls' fp32 path.
`amx_emulated` (any AVX-512 CPU; `checked_paths()`) is the amx kernel with every tile instruction run by a
scalar C model of it: the tests hold the amx kernel to its twins on CPUs without AMX, and hold the model to the
hardware (`amx_probe`) on CPUs with it. Where there is no compiler, no AVX2/FMA/F16C,
or `XPULLM_NATIVE=0`, the kernels report themselves unavailable and the registry falls back to PyTorch's ops.
At load, codes are regrouped into 4-row tiles (one cache line per block of 32 columns), on AVX-512 CPUs in groups
of four tiles interleaved by block, so the four-tile kernel that every avx512 call runs reads one stream
(`group_rows`); `export` gives the portable codes back exactly.

Accuracy: the activation rounding (half a step of max|x|/127 per block of 32) is the same one llama.cpp's
Q4 x Q8 path makes; nf4's levels are held as round(127 * level) (at most 0.0037 * scale off per weight; fp4's
levels times 2 are integers, exact); fp8 is exact in fp32. `twin_activations` / `twin_weight` give each kernel's
exact PyTorch twin, the one the tests hold it to.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from xpullm.kernels.codebook import CODEBOOKS
from xpullm.kernels.packing import unpack_nibbles
from xpullm.kernels.registry import Kernel, register_kernel
from xpullm.settings import runtime_settings  # layer 0: imports nothing from xpullm

if TYPE_CHECKING:
    from xpullm.kernels.paged import PagedBatch, PagedLayer

__all__ = [
    "ISA_PATHS",
    "CpuNativeCodebookKernel",
    "CpuNativeFp8Kernel",
    "CpuNativeInt4Kernel",
    "CpuNativeInt8Kernel",
    "LayerScratch",
    "LinearDesc",
    "NativeFp8State",
    "NativeTiledState",
    "active_isa",
    "amx_bf16_on",
    "amx_emu_faults",
    "amx_fp8",
    "amx_min_rows",
    "amx_probe",
    "amx_status",
    "checked_paths",
    "decode_attention",
    "forced_isa",
    "isa_paths",
    "library",
    "linear_desc",
    "norm_linear",
    "out_mlp",
    "paged_attention",
    "quantize_rows",
    "reference_decode_attention",
    "reference_int8_activations",
    "rms_norm",
    "silu_mul",
]

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("csrc") / "cpu_ops.c"
# No -march: every SIMD function in the C file names its own target and the library dispatches at run time.
_FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-shared")
# The C library's path numbers (xq_isa / xq_set_isa), by name, portable floor first; `amx_emulated` is the amx
# kernel over a C model of the tile instructions (a test twin: never picked by itself).
ISA_PATHS = {"avx2": 1, "avx512_vnni": 2, "amx": 3, "amx_emulated": 4}
_EMULATED = ("amx_emulated",)
AMX_MIN_ROWS = 8  # cpu_ops.c's default: the amx path takes calls of at least this many activation rows
_P, _I = ctypes.c_void_p, ctypes.c_int64


def _build_dir() -> Path:
    return runtime_settings().cache_dir() / "native"


def _cpu_signature() -> str:
    """The CPU model and flags (the build is portable; this only keeps one machine's test builds apart)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compile(cc: str, out: Path) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    errors = []
    # OpenMP splits rows across threads; a compiler without it still builds the single-threaded kernel. One that
    # does not know the AMX target (gcc < 11, an old assembler) builds without the amx path (XQ_NO_AMX).
    for extra in (("-fopenmp",), ("-fopenmp", "-DXQ_NO_AMX"), (), ("-DXQ_NO_AMX",)):
        cmd = [cc, *_FLAGS, *extra, str(_SOURCE), "-o", str(tmp), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: a concurrent build or a kill never leaves a half-written library
            return
        errors.append(proc.stderr.strip()[-500:])
    tmp.unlink(missing_ok=True)
    raise RuntimeError("; ".join(errors))


def _runnable(lib: ctypes.CDLL) -> list[str]:
    return [name for name, code in ISA_PATHS.items() if name not in _EMULATED and lib.xq_path_runnable(code)]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled native library, or None where it cannot run here (the reason is logged once)."""
    if not runtime_settings().native:
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.info(
            "no C compiler found: the native CPU kernels fall back to PyTorch's ops (set CC to enable them)"
        )
        return None
    tag = hashlib.sha256(
        _SOURCE.read_bytes() + "\0".join((cc, *_FLAGS, _cpu_signature())).encode()
    ).hexdigest()[:16]
    path = _build_dir() / f"cpu_ops-{tag}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _compile(cc, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("building the int4 CPU kernel failed (%s); using PyTorch's int4 kernel instead", exc)
        return None
    if not lib.xq_simd():
        return None  # built, but this CPU lacks AVX2/FMA/F16C: the scalar build would be slower than PyTorch
    for name in (
        "xq_simd",
        "xq_best_isa",
        "xq_isa",
        "xq_has_amx",
        "xq_amx_emu_faults",
        "xq_amx_reason",
        "xq_amx_bf16",
        "xq_tile_group",
    ):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = []
    for name in (
        "xq_set_isa",
        "xq_path_runnable",
        "xq_set_amx_min_rows",
        "xq_set_amx_fp8",
        "xq_set_tile_group",
    ):
        getattr(lib, name).argtypes = [ctypes.c_int]
        getattr(lib, name).restype = ctypes.c_int
    lib.xq_amx_probe.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        _P,
        _I,
        _P,
        _P,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.xq_amx_probe.restype = ctypes.c_int
    lib.xq_int4_linear.argtypes = [_P, _I, _I, _P, _P, _P, _I, _I, _P, ctypes.c_int]
    lib.xq_lut4_linear.argtypes = [_P, _I, _I, _P, _P, _P, ctypes.c_float, _I, _I, _P, ctypes.c_int]
    lib.xq_int8_linear.argtypes = [_P, _I, _I, _P, _P, _I, _I, _P, ctypes.c_int]
    lib.xq_fp8_linear.argtypes = [_P, _I, _I, _P, _P, _I, _I, ctypes.c_int, _I, _I, _P, ctypes.c_int]
    for name in ("xq_int4_linear", "xq_lut4_linear", "xq_int8_linear", "xq_fp8_linear"):
        getattr(lib, name).restype = ctypes.c_int
    lib.xq_rms_norm.argtypes = [_P, _P, _P, _I, _I, ctypes.c_float]
    lib.xq_rms_norm.restype = None
    lib.xq_acts_bytes.argtypes = [_I, _I]
    lib.xq_acts_bytes.restype = _I
    lib.xq_norm_linear.argtypes = [_P, _P, _P, ctypes.c_float, _I, _I, _P, _P, _P, _P, ctypes.c_int]
    lib.xq_norm_linear.restype = ctypes.c_int
    lib.xq_out_mlp.argtypes = [
        _P,
        _I,
        _P,
        _P,
        _P,
        ctypes.c_float,
        _P,
        _P,
        _I,
        _I,
        _P,
        _P,
        _P,
        _P,
        ctypes.c_int,
    ]
    lib.xq_out_mlp.restype = ctypes.c_int
    lib.xq_silu_mul.argtypes = [_P, _I, _I, _P]
    lib.xq_silu_mul.restype = None
    lib.xq_quantize_rows.argtypes = [_P, _I, _I, _P, _P, _P]
    lib.xq_quantize_rows.restype = None
    lib.xq_decode_attention.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, ctypes.c_float, _P,
                                        ctypes.c_int]  # fmt: skip
    lib.xq_decode_attention.restype = ctypes.c_int
    lib.xq_paged_attention.argtypes = [_P, _I, _P, _P, _P, ctypes.c_int]  # qkv, n, step, layer, out, threads
    lib.xq_paged_attention.restype = ctypes.c_int
    lib.xq_set_amx_fp8(int(os.environ.get("XPULLM_AMX_FP8", "0").strip() == "1"))
    wanted = os.environ.get("XPULLM_CPU_ISA", "").strip().lower()
    if wanted and wanted != "auto":
        if wanted not in ISA_PATHS:
            raise ValueError(
                f"XPULLM_CPU_ISA={wanted!r} is not a CPU path: use auto or one of {sorted(ISA_PATHS)}"
            )
        if lib.xq_set_isa(ISA_PATHS[wanted]) < 0:
            raise ValueError(
                f"XPULLM_CPU_ISA={wanted!r}: this CPU cannot run that path; it runs {_checked(lib)} (unset it)"
            )
    return lib


def _checked(lib: ctypes.CDLL) -> list[str]:
    return [name for name, code in ISA_PATHS.items() if lib.xq_path_runnable(code)]


def isa_paths() -> list[str]:
    """The SIMD paths the native kernels can run on this CPU, portable first (empty without the library)."""
    lib = library()
    return [] if lib is None else _runnable(lib)


def active_isa() -> str | None:
    """The path the native kernels run now (the best one, unless forced), or None without the library."""
    lib = library()
    if lib is None:
        return None
    code = lib.xq_isa()
    return next(name for name, c in ISA_PATHS.items() if c == code)


def checked_paths() -> list[str]:
    """Every path the kernels can be forced to here: `isa_paths()` plus the emulated twins (`amx_emulated` on
    any AVX-512 CPU). The tests run each of them."""
    lib = library()
    return [] if lib is None else _checked(lib)


def has_amx() -> bool:
    """Whether CPUID and the OS report AMX int8 tiles (the amx path also needs Linux's tile-data permission:
    `"amx" in isa_paths()` says whether it runs)."""
    lib = library()
    return lib is not None and bool(lib.xq_has_amx())


_AMX_REASONS = {
    0: "amx path on",
    1: "no amx path: not Linux on x86-64",
    2: "no amx path: CPUID/XCR0 report no AMX-TILE + AMX-INT8",
    3: "no amx path: AMX without AVX-512 VNNI",
    4: "no amx path: the CPU's tile palette is smaller than 8 tiles of 16 x 64 bytes",
    5: "no amx path: Linux refused the tile-data permission (kernel < 5.16, or a signal stack too small)",
    6: "no amx path: the C compiler or assembler here does not know AMX (built with XQ_NO_AMX)",
}


def amx_status() -> str:
    """Whether the amx path runs here, or why not, in words (`xpullm info`, the benchmarks and test skips say it)."""
    lib = library()
    if lib is None:
        return "native kernels not built"
    code = lib.xq_amx_reason()
    if code == 0 and not lib.xq_amx_bf16():
        return "amx path on (int8 tiles; fp8 stays on avx512_vnni: no AMX-BF16)"
    return _AMX_REASONS[code]


@contextlib.contextmanager
def amx_fp8(on: bool) -> Iterator[None]:
    """Inside the block the amx paths run (`on`) or do not run the fp8 formats' long calls on AMX-BF16 tiles
    (default off, or `XPULLM_AMX_FP8=1`: close to the fp32 path, not bit for bit, so batch invariance is lost)."""
    lib = library()
    if lib is None:
        raise ValueError("the native CPU kernels are not built here: no amx path to tune")
    before = lib.xq_set_amx_fp8(int(on))
    try:
        yield
    finally:
        lib.xq_set_amx_fp8(before)


def amx_bf16_on() -> bool:
    """Whether the amx path runs the fp8 formats on AMX-BF16 tiles here (amx_emulated always does)."""
    lib = library()
    return lib is not None and bool(lib.xq_amx_bf16())


@contextlib.contextmanager
def amx_min_rows(rows: int) -> Iterator[None]:
    """Inside the block the amx paths take calls of at least `rows` activation rows (default `AMX_MIN_ROWS`);
    shorter calls run the avx512 path. Tests set 1 to run every shape through the tiles."""
    lib = library()
    if lib is None:
        raise ValueError("the native CPU kernels are not built here: no amx path to tune")
    before = lib.xq_set_amx_min_rows(rows)
    try:
        yield
    finally:
        lib.xq_set_amx_min_rows(before)


def amx_probe(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, emulated: bool) -> torch.Tensor:
    """One tile instruction as the amx kernels issue it, on the hardware or on the C model (`emulated`); returns
    c + a . b. int8 a [rows <= 16, kb <= 64], b [kb / 4, 4 n], int32 c [rows, n <= 16]: `tdpbssd` (int32
    wrap-around). bf16 a [rows, kb / 2], b [kb / 4, 2 n], fp32 c: `tdpbf16ps`. b in VNNI layout: dword j of b's
    row k (4 int8 or 2 bf16) multiplies dword k of a's row r into c[r, j]. ValueError where that path does not
    run or a shape is out of range."""
    op = {torch.int8: 0, torch.bfloat16: 1}.get(a.dtype)
    if op is None or b.dtype != a.dtype or c.dtype != (torch.int32, torch.float32)[op]:
        raise ValueError(
            f"amx_probe: a, b int8 with c int32, or a, b bf16 with c fp32; got {a.dtype}, {c.dtype}"
        )
    rows, kb, n = a.shape[0], a.shape[1] * a.element_size(), c.shape[1]
    if b.shape != (kb // 4, n * 4 // b.element_size()) or c.shape[0] != rows:
        raise ValueError(
            f"amx_probe: b must be [{kb // 4}, 4n bytes] and c [{rows}, n]; got {tuple(b.shape)}"
        )
    a, b, out = a.contiguous(), b.contiguous(), c.clone().contiguous()
    lib = library()
    status = -1 if lib is None else lib.xq_amx_probe(
        op, int(emulated), a.data_ptr(), kb, b.data_ptr(), out.data_ptr(), rows, kb, n
    )  # fmt: skip
    if status != 0:
        raise ValueError(f"amx_probe: the {'emulated' if emulated else 'hardware'} tiles do not run here, "
                         f"or {rows} x {kb} bytes . {kb // 4} x {4 * n} bytes is outside one tile "
                         "(rows, n <= 16; kb <= 64)")  # fmt: skip
    return out


def amx_emu_faults() -> int:
    """How many tile uses the emulated amx path made that the hardware would fault on (the tests want none)."""
    lib = library()
    return 0 if lib is None else lib.xq_amx_emu_faults()


@contextlib.contextmanager
def forced_isa(name: str) -> Iterator[None]:
    """Run the native kernels on path `name` (see `isa_paths`) inside the block, then go back to the one before."""
    lib = library()
    if lib is None or name not in ISA_PATHS:
        raise ValueError(f"unknown or unavailable CPU path {name!r}: this machine runs {checked_paths()}")
    before = lib.xq_isa()
    if lib.xq_set_isa(ISA_PATHS[name]) < 0:
        raise ValueError(f"this CPU cannot run the {name} path; it runs {checked_paths()}")
    try:
        yield
    finally:
        lib.xq_set_isa(before)


def rms_norm(x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.rms_norm` in one native call for contiguous fp32 CPU tensors (PyTorch runs ~8 ops); else `F.rms_norm`."""
    lib = library()
    if (
        lib is None
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or not x.is_contiguous()
        or not weight.is_contiguous()
        or x.device.type != "cpu"
        or len(shape) != 1
    ):
        return F.rms_norm(x, shape, weight, eps)
    y = torch.empty_like(x)
    lib.xq_rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), x.numel() // shape[0], shape[0], eps)
    return y


def silu_mul(gu: torch.Tensor) -> torch.Tensor:
    """SwiGLU of a fused gate/up output [..., 2F]: silu(gate) * up in one native call for contiguous fp32 CPU
    tensors (PyTorch runs three ops); else PyTorch. SiLU is g / (1 + e^-g) with a vectorised e^x (~1 ulp)."""
    lib = library()
    if lib is None or gu.dtype != torch.float32 or not gu.is_contiguous() or gu.device.type != "cpu":
        g, u = gu.chunk(2, dim=-1)
        return F.silu(g) * u
    f = gu.shape[-1] // 2
    out = torch.empty((*gu.shape[:-1], f))
    lib.xq_silu_mul(gu.data_ptr(), gu.numel() // (2 * f), f, out.data_ptr())
    return out


def decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    rope_pos: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    first: torch.Tensor,
    slot: int,
    n_heads: int,
    scale: float,
) -> torch.Tensor:
    """One decode step of attention in one native call: RoPE on the new q/k, cache write, GQA softmax attention.

    qkv [B, 1, (H + 2 KV) D] fp32; cos/sin [positions, D] (sin's first half negated, as the decoder keeps it);
    rope_pos / first int64 [B]: each row's RoPE position and first real cache slot; k_cache/v_cache
    [B, KV, cap, D] (slot `slot` is written). Returns [B, 1, H D]. The caller checks `library()` first.
    """
    batch, kv, cap, d = k_cache.shape
    out = torch.empty((batch, 1, n_heads * d))
    status = library().xq_decode_attention(
        qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), rope_pos.data_ptr(), k_cache.data_ptr(),
        v_cache.data_ptr(), first.data_ptr(), batch, n_heads, kv, d, cap, slot, scale, out.data_ptr(),
        torch.get_num_threads(),
    )  # fmt: skip
    if status != 0:
        raise MemoryError("decode attention could not allocate its score buffer")
    return out


def reference_decode_attention(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rope_pos: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, first: torch.Tensor, slot: int, n_heads: int, scale: float,
) -> torch.Tensor:  # fmt: skip
    """`decode_attention` in PyTorch (its twin in the tests); writes the cache the same way."""
    batch, kv, _, d = k_cache.shape
    heads = qkv.reshape(batch, n_heads + 2 * kv, d)
    c, s = cos[rope_pos][:, None], sin[rope_pos][:, None]
    qk = heads[:, : n_heads + kv] * c + heads[:, : n_heads + kv].roll(d // 2, -1) * s
    k_cache[:, :, slot] = qk[:, n_heads:]
    v_cache[:, :, slot] = heads[:, n_heads + kv :]
    rows = []
    for b in range(batch):
        keys, values = k_cache[b, :, first[b] : slot + 1], v_cache[b, :, first[b] : slot + 1]
        q = qk[b, :n_heads, None]  # [H, 1, D]
        rows.append(F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=kv != n_heads))
    return torch.stack(rows).reshape(batch, 1, n_heads * d)


# xq_paged_attention's index errors (nothing is written when one is found).
_PAGED_ERRORS = {
    -2: "a position is outside the RoPE tables (cos/sin have too few rows: grow them to the context length)",
    -3: "a seq_index is outside block_tables' rows",
    -4: "a position lies past block_tables' width (max_blocks * block_size tokens per sequence)",
    -5: "a block id in block_tables (of a key a token attends) is outside the pools' num_blocks",
    -6: "the code pools' kind is unknown",
}
_PAGED_CODES = {"int8": 1, "fp8_e4m3": 2}  # kv_cache_dtype -> the C kernel's code kind


class _PagedStep(ctypes.Structure):
    """`struct xq_paged_step`: a `PagedBatch` as the C kernel reads it."""

    _fields_ = [("cos", _P), ("sin", _P), ("max_pos", _I), ("positions", _P), ("seq_index", _P), ("tables", _P),
                ("s", _I), ("max_blocks", _I)]  # fmt: skip


class _PagedLayer(ctypes.Structure):
    """`struct xq_paged_layer`: a `PagedLayer` as the C kernel reads it."""

    _fields_ = [("k_pool", _P), ("v_pool", _P), ("k_s", _P), ("v_s", _P), ("codes", _I), ("num_blocks", _I),
                ("bs", _I), ("q_norm", _P), ("k_norm", _P), ("eps", ctypes.c_float), ("scale", ctypes.c_float),
                ("h", _I), ("kv", _I), ("d", _I), ("window", _I), ("sinks", _I)]  # fmt: skip


# The last step's packed batch (every layer of a step gets the same `PagedBatch`: packed once per step) and each
# live layer's packed constants (packed once per layer). The packed structs only point into the tensors; the
# batch and the layer objects, held here and by the caller, keep those alive.
_PAGED_STEP: tuple[PagedBatch, _PagedStep, int] | None = None
_PAGED_LAYERS: weakref.WeakKeyDictionary[PagedLayer, tuple[_PagedLayer, int]] = weakref.WeakKeyDictionary()


def _paged_step(batch: PagedBatch) -> int:
    """The address of the batch's packed `xq_paged_step`."""
    global _PAGED_STEP
    last = _PAGED_STEP
    if last is not None and last[0] is batch:
        return last[2]
    t = batch.block_tables
    step = _PagedStep(batch.cos.data_ptr(), batch.sin.data_ptr(), batch.cos.shape[0], batch.positions.data_ptr(),
                      batch.seq_index.data_ptr(), t.data_ptr(), t.shape[0], t.shape[1])  # fmt: skip
    _PAGED_STEP = (batch, step, ctypes.addressof(step))
    return _PAGED_STEP[2]


def _paged_layer(layer: PagedLayer) -> int:
    """The address of the layer's packed `xq_paged_layer`."""
    packed = _PAGED_LAYERS.get(layer)
    if packed is None:
        ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        struct = _PagedLayer(
            layer.k_pool.data_ptr(), layer.v_pool.data_ptr(), ptr(layer.k_scale), ptr(layer.v_scale),
            _PAGED_CODES.get(layer.codes, 0), layer.k_pool.shape[0], layer.block_size, ptr(layer.q_norm),
            ptr(layer.k_norm), layer.eps, layer.scale, layer.n_heads, layer.kv, layer.d, layer.window, layer.sinks,
        )  # fmt: skip
        packed = _PAGED_LAYERS[layer] = (struct, ctypes.addressof(struct))
    return packed[1]


def paged_attention(qkv: torch.Tensor, batch: PagedBatch, layer: PagedLayer) -> torch.Tensor:
    """`xpullm.kernels.paged.paged_attention` as one native call (fp32 CPU tensors; contiguous pools, written in
    place; 8-bit code pools with their fp32 scales for kv_cache_dtype "int8" / "fp8_e4m3"). `kernels.paged`
    checks shapes and dtypes (when the batch and the layer are built) and calls this only when the library
    loads; index values are checked here (ValueError, nothing written). Returns [N, H * D] fp32."""
    n = batch.n
    out = torch.empty((n, layer.n_heads * layer.d))
    if n == 0:
        return out
    qkv = qkv.contiguous()
    status = library().xq_paged_attention(qkv.data_ptr(), n, _paged_step(batch), _paged_layer(layer),
                                          out.data_ptr(), torch.get_num_threads())  # fmt: skip
    if status == -1:
        raise MemoryError(f"paged attention could not allocate its score buffers ({n} tokens)")
    if status != 0:
        raise ValueError(f"paged attention: {_PAGED_ERRORS[status]}; nothing was written")
    return out


def _fits_fp16(t: torch.Tensor | None) -> bool:
    """Scales/zeros are held in fp16, the int4 formats' own scale precision (exact for spec-conforming weights;
    fp32 values from elsewhere, e.g. a bf16 runtime's export, round once to the nearest fp16)."""
    return t is None or bool(torch.isfinite(t).all() and t.abs().max() <= torch.finfo(torch.float16).max)


def int8_block_activations(x: torch.Tensor, k: int, divide: bool = False) -> torch.Tensor:
    """x [M, <= k] as the int8-activation kernels read it: padded to k columns, quantised per block of 32 to int8
    (scale max|x| / 127, round half to even) and decoded back to fp32, cut to x's own width.

    The C kernels multiply by the fp32 reciprocal of the scale; the Triton kernels divide (IEEE). The two round
    some exact ties (common with bf16 inputs, e.g. 63.5) differently, so `divide` picks the twin of each.
    """
    m = x.shape[0]
    blocks = F.pad(x.float(), (0, k - x.shape[1])).reshape(m, k // 32, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127.0
    if divide:
        v = torch.where(d > 0, blocks / d, torch.zeros_like(blocks))
    else:
        v = blocks * torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    return (v.round() * d).reshape(m, k)[:, : x.shape[1]]


def reference_int8_activations(x: torch.Tensor, qw: Any, divide: bool = False) -> torch.Tensor:
    """What the int8-activation kernels compute, in PyTorch: int8 block activations times the exactly decoded
    weight. Their exact twin up to float summation order (`divide`: the Triton kernels' rounding)."""
    return int8_block_activations(x, qw.padded_k, divide) @ qw.dequantize(torch.float32).T


_TILE = 4  # weight rows per tile in the runtime layout


@contextlib.contextmanager
def tile_group(tiles: int) -> Iterator[None]:
    """Tests: weights prepared inside the block use groups of `tiles` tiles (1 or 4), as on another CPU; matmuls on
    them must run inside it too."""
    lib = library()
    before = lib.xq_set_tile_group(tiles)
    try:
        yield
    finally:
        lib.xq_set_tile_group(before)


def group_rows() -> int:
    """Weight rows per group in the integer and codebook formats' layout: 16 (four tiles interleaved by block) on
    AVX-512 CPUs, 4 (one tile) on AVX2-only CPUs (cpu_ops.c, `xq_tile_group`)."""
    lib = library()
    return _TILE * (lib.xq_tile_group() if lib is not None else 1)


def _permute_blocks(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] -> each block of 32 columns reordered even columns first, then odd (the activations'
    order, which is how packed int4 bytes unpack)."""
    n, k = codes.shape
    return codes.reshape(n, k // 32, 16, 2).transpose(-1, -2).reshape(n, k)


def _unpermute_blocks(codes: torch.Tensor) -> torch.Tensor:
    n, k = codes.shape
    return codes.reshape(n, k // 32, 2, 16).transpose(-1, -2).reshape(n, k)


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    return F.pad(t, (0, 0, 0, rows - t.shape[0]))


def _tile_major(t: torch.Tensor) -> torch.Tensor:
    """Per-row values [N (multiple of 4), C] -> [N/4, C, 4], the order the tiles read them."""
    return t.reshape(-1, _TILE, t.shape[1]).transpose(1, 2).contiguous()


def _row_major(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`_tile_major`'s inverse for `rows`: [len(rows), C]."""
    return t[rows // _TILE, :, rows % _TILE]


def _group_major(t: torch.Tensor, group: int) -> torch.Tensor:
    """Per-row values [N (multiple of `group`), C] -> [N / group, C, group], the order the kernels read them (row
    4 i + q of a group: its tile i's row q)."""
    return t.reshape(-1, group, t.shape[1]).transpose(1, 2).contiguous()


@functools.cache
def codebook_table(levels: tuple[float, ...]) -> tuple[torch.Tensor, float]:
    """(int8 table [16], multiplier) holding a 16-level codebook: levels ~ table * multiplier.

    Levels that become integers when doubled a few times (fp4 e2m1: x2) are held exactly; others (nf4) as
    round(127 * level / max|level|), at most half a step of max|level| / 127 off.
    """
    top = max(abs(v) for v in levels)
    for mul in (1, 2, 4, 8, 16):
        ints = [v * mul for v in levels]
        if all(float(i).is_integer() and abs(i) <= 127 for i in ints):
            return torch.tensor([int(i) for i in ints], dtype=torch.int8), 1.0 / mul
    table = torch.tensor([round(127 * v / top) for v in levels], dtype=torch.int8)
    return table, top / 127.0


def _levels(fmt: str) -> tuple[float, ...]:
    """A codebook format's 16 levels."""
    return CODEBOOKS[fmt]


class _Tiles:
    """Shape facts shared by the tiled runtime states: `tiles` is [N/4, K/32, ...]."""

    tiles: torch.Tensor

    @property
    def padded_k(self) -> int:
        return self.tiles.shape[1] * 32

    @property
    def rows(self) -> int:
        return self.tiles.shape[0] * _TILE


@dataclass
class NativeTiledState(_Tiles):
    """Runtime layout of the integer and codebook formats: groups of `group_rows()` rows (16: four 4-row tiles on
    AVX-512 CPUs; 4: one tile on AVX2 CPUs) interleaved by block of 32 columns, so block b of a group's tiles is one
    contiguous run (csrc/cpu_ops.c, `tile_w`)."""

    bits: int  # 4 (bytes hold column pairs, as in the portable layout) or 8 (block-permuted int8)
    shape: tuple[int, int]
    group_size: int
    # uint8 [N/G, K/32, G, 16] (int4: rows, bytes) or [N/G, K/32, G/4, 2, 4, 16] (int8: tile, even / odd
    # columns, row, codes); G = group_rows() when prepared
    tiles: torch.Tensor
    scales: torch.Tensor  # fp16 [N/G, K/32, G], one per row and block (N padded to a multiple of G)
    zeros: torch.Tensor | None  # fp16 like scales; None: zero = -8 * scale (int4) or 0 (int8, codebooks)
    lut: torch.Tensor | None = None  # codebooks: int8 [16] table (see `codebook_table`)
    wmul: float = 1.0  # codebooks: the table's multiplier
    levels: torch.Tensor | None = None  # codebooks: the format's exact fp32 levels (for row lookups)

    @property
    def group(self) -> int:
        """Weight rows per group of the layout."""
        return self.scales.shape[2]

    @property
    def rows(self) -> int:
        return self.tiles.shape[0] * self.group

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Portable codes of `rows` (default: all): int4 unpacked to uint8 0..15, int8 as int8, [R, K]."""
        if rows is None:
            rows = torch.arange(self.shape[0])
        g, r = rows // self.group, rows % self.group
        if self.bits == 4:
            return unpack_nibbles(self.tiles[g, :, r].reshape(rows.numel(), -1))
        raw = self.tiles[g, :, r // _TILE, :, r % _TILE].reshape(rows.numel(), -1)
        return _unpermute_blocks(raw.view(torch.int8))

    def block_values(self, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Per-block scales or zeros of `rows` as fp32 [R, K/32, 1]."""
        return t[rows // self.group, :, rows % self.group].float()[..., None]

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the float weight (an embedding lookup on a tied low-bit head), the format's exact values."""
        codes = self.codes(rows)
        q = (self.levels[codes.long()] if self.levels is not None else codes.float()).reshape(
            rows.numel(), -1, 32
        )
        scale = self.block_values(self.scales, rows)
        if self.zeros is not None:
            zero = self.block_values(self.zeros, rows)
        else:
            zero = (-8.0 if self.bits == 4 and self.levels is None else 0.0) * scale
        return (q * scale + zero).reshape(rows.numel(), -1)[:, : self.shape[1]].to(dtype)


def _to_blocks(t: torch.Tensor | None, per_block: int, rows: int, group: int) -> torch.Tensor | None:
    """Per-group fp16 values -> one per block of 32 columns, rows padded with zeros, group-major [N/G, K/32, G]."""
    if t is None:
        return None
    return _group_major(_pad_rows(t.to(torch.float16).repeat_interleave(per_block, dim=1), rows), group)


def _as_fp32_input(x2: torch.Tensor, k: int) -> torch.Tensor:
    if x2.dtype != torch.float32 or x2.shape[1] != k or not x2.is_contiguous():
        x2 = F.pad(x2.float(), (0, k - x2.shape[1])).contiguous()
    return x2


def _check_simd(status: int) -> None:
    if status != 0:
        raise RuntimeError(
            "the native CPU layer calls found no SIMD path on this CPU (they need AVX2 + FMA + F16C)"
        )


def _check(status: int, m: int, k: int) -> None:
    if status != 0:
        raise MemoryError(f"native CPU kernel could not allocate scratch for {m} x {k} activations")


class _NativeTiledKernel(Kernel):
    """Shared by the int4, codebook and int8 native kernels: tiling at load, export, and the ctypes call."""

    bits: int

    def available(self) -> bool:
        return library() is not None

    def supports(self, qw: Any) -> bool:
        return (
            qw.group_size % 32 == 0
            and qw.padded_k % 32 == 0
            and qw.scales is not None
            and _fits_fp16(qw.scales)
            and _fits_fp16(qw.zeros)
            and library() is not None
        )

    def twin_activations(self, x: torch.Tensor, qw: Any) -> torch.Tensor:
        return int8_block_activations(x, qw.padded_k)

    def prepare(self, qw: Any, device: torch.device) -> NativeTiledState:
        n, k, g = qw.shape[0], qw.padded_k, group_rows()
        rows = -(-n // g) * g
        codes = _pad_rows(qw.data, rows)
        if self.bits == 4:  # bytes as stored (column pairs) -> [N/G, K/32, G rows, 16]
            tiles = codes.reshape(rows // g, g, k // 32, 16).transpose(1, 2)
        else:  # codes reordered per block like the activations, then [N/G, K/32, tile, even/odd, 4, 16]
            codes = _permute_blocks(codes).view(torch.uint8)
            tiles = codes.reshape(rows // g, g // _TILE, _TILE, k // 32, 2, 16).permute(0, 3, 1, 4, 2, 5)
        per_block = qw.group_size // 32
        return NativeTiledState(
            self.bits, tuple(qw.shape), qw.group_size, tiles.contiguous(),
            _to_blocks(qw.scales, per_block, rows, g), _to_blocks(qw.zeros, per_block, rows, g),
        )  # fmt: skip

    def export(self, state: NativeTiledState) -> dict[str, Any]:
        """Portable codes (unpacked), scales and zeros, exactly as they came in (fp16 holds them exactly)."""
        rows, step = torch.arange(state.shape[0]), state.group_size // 32
        pick = lambda t: None if t is None else state.block_values(t, rows)[:, ::step, 0].half()  # noqa: E731
        return {"codes": state.codes(), "scales": pick(state.scales), "zeros": pick(state.zeros)}

    def matmul(self, x: torch.Tensor, state: NativeTiledState) -> torch.Tensor:
        n, k = state.shape[0], state.padded_k
        lead = x.shape[:-1]
        x2 = _as_fp32_input(x.reshape(-1, x.shape[-1]), k)
        m = x2.shape[0]
        y = torch.empty((m, n))
        lib, threads = library(), torch.get_num_threads()
        if state.lut is not None:
            status = lib.xq_lut4_linear(
                x2.data_ptr(), m, k, state.tiles.data_ptr(), state.scales.data_ptr(), state.lut.data_ptr(),
                state.wmul, state.rows, n, y.data_ptr(), threads,
            )  # fmt: skip
        elif self.bits == 4:
            zeros = None if state.zeros is None else state.zeros.data_ptr()
            status = lib.xq_int4_linear(
                x2.data_ptr(), m, k, state.tiles.data_ptr(), state.scales.data_ptr(), zeros, state.rows, n,
                y.data_ptr(), threads,
            )  # fmt: skip
        else:
            status = lib.xq_int8_linear(
                x2.data_ptr(), m, k, state.tiles.data_ptr(), state.scales.data_ptr(), state.rows, n, y.data_ptr(),
                threads,
            )  # fmt: skip
        _check(status, m, k)
        y = y.reshape(*lead, n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


@register_kernel(formats=("sym_int4", "asym_int4"), device="cpu", priority=20)
class CpuNativeInt4Kernel(_NativeTiledKernel):
    """int4 x int8 integer dot products (AVX2 or AVX-512 VNNI), compiled here from `csrc/cpu_ops.c`."""

    name = "cpu_int4_native"
    bits = 4


@register_kernel(formats=("nf4", "fp4"), device="cpu", priority=20)
class CpuNativeCodebookKernel(_NativeTiledKernel):
    """nf4 / fp4: nibbles through a 16-entry int8 table (`vpshufb`), then int4-style int8 dot products."""

    name = "cpu_codebook_native"
    bits = 4

    def supports(self, qw: Any) -> bool:
        return qw.zeros is None and super().supports(qw)

    def prepare(self, qw: Any, device: torch.device) -> NativeTiledState:
        state = super().prepare(qw, device)
        levels = _levels(qw.format)
        state.lut, state.wmul = codebook_table(levels)
        state.levels = torch.tensor(levels, dtype=torch.float32)
        return state

    def twin_weight(self, qw: Any) -> torch.Tensor:
        """The weight this kernel multiplies by: the format's codes through `codebook_table`, times the scales."""
        table, mul = codebook_table(_levels(qw.format))
        n, k = qw.shape
        codes = unpack_nibbles(qw.data).long().reshape(n, -1, qw.group_size)
        w = (table.float() * mul)[codes] * qw.scales.float()[..., None]
        return w.reshape(n, -1)[:, :k]


@register_kernel(formats=("sym_int8",), device="cpu", priority=20)
class CpuNativeInt8Kernel(_NativeTiledKernel):
    """int8 x int8 integer dot products (AVX2 or AVX-512 VNNI), per-row or per-group (Q8_0) scales."""

    name = "cpu_int8_native"
    bits = 8


# The C kernels' weight kinds (cpu_ops.c's K_INT4, K_LUT4, K_INT8).
_KIND_INT4, _KIND_LUT4, _KIND_INT8 = 0, 1, 2


class LinearDesc(ctypes.Structure):
    """A tiled weight as the fused layer calls read it (cpu_ops.c's `struct xq_linear`); holds raw pointers, so
    keep the `NativeTiledState` alive while it is used."""

    _fields_ = [
        ("kind", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("n_out", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("w", ctypes.c_void_p),
        ("scale", ctypes.c_void_p),
        ("zero", ctypes.c_void_p),
        ("lut", ctypes.c_void_p),
        ("zmul", ctypes.c_float),
        ("wmul", ctypes.c_float),
    ]


def linear_desc(state: NativeTiledState) -> LinearDesc:
    """`state`'s descriptor for `norm_linear` / `out_mlp` (the same tiles, scales and zeros its matmul reads)."""
    if state.lut is not None:
        kind, zmul = _KIND_LUT4, 0.0
    elif state.bits == 4:
        kind, zmul = _KIND_INT4, -8.0
    else:
        kind, zmul = _KIND_INT8, 0.0
    ptr = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    return LinearDesc(
        kind, state.rows, state.shape[0], state.padded_k, state.tiles.data_ptr(), state.scales.data_ptr(),
        ptr(state.zeros), ptr(state.lut), zmul, state.wmul,
    )  # fmt: skip


@dataclass
class LayerScratch:
    """Buffers the fused layer calls share for m rows: normed/padded activations, the gate/up output, and the
    quantised activations (allocated once per forward, reused by every layer)."""

    y: torch.Tensor  # fp32 [m, k_max]
    gu: torch.Tensor  # fp32 [m, gate_up rows]
    acts: torch.Tensor  # uint8, xq_acts_bytes(m, k_max)

    @classmethod
    def new(cls, m: int, k_max: int, gu_rows: int) -> LayerScratch:
        size = library().xq_acts_bytes(m, k_max)
        return cls(torch.empty(m, k_max), torch.empty(m, gu_rows), torch.empty(size, dtype=torch.uint8))


def norm_linear(
    h: torch.Tensor,
    delta: torch.Tensor | None,
    norm_weight: torch.Tensor,
    eps: float,
    lin: LinearDesc,
    scratch: LayerScratch,
) -> torch.Tensor:
    """First half of a decoder layer in one call: h += delta in place (the residual add; skipped for None), then
    rms_norm(h) @ W^T with the norm's output quantised once. h, delta: contiguous fp32 [m, hidden]. Bit for bit
    what `h + delta`, `rms_norm` and the weight's `matmul` give one after the other. Returns [m, lin.n_out]."""
    m, hidden = h.shape
    out = torch.empty(m, lin.n_out)
    status = library().xq_norm_linear(
        h.data_ptr(), None if delta is None else delta.data_ptr(), norm_weight.data_ptr(), eps, m, hidden,
        ctypes.byref(lin), out.data_ptr(), scratch.y.data_ptr(), scratch.acts.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _check_simd(status)
    return out


def out_mlp(
    attn: torch.Tensor,
    h: torch.Tensor,
    o: LinearDesc,
    norm_weight: torch.Tensor,
    eps: float,
    gate_up: LinearDesc,
    down: LinearDesc,
    scratch: LayerScratch,
) -> torch.Tensor:
    """Second half of a decoder layer in one call: h += attn @ O^T in place (the residual add), then returns
    down(silu(g) * u) [m, hidden] with [g | u] = rms_norm(h) @ GU^T. Contiguous fp32 attn [m, width], h [m, hidden].
    Bit for bit the unfused ops' result (with `silu_mul`, the CPU's SwiGLU op)."""
    m, hidden = h.shape
    out = torch.empty(m, hidden)
    status = library().xq_out_mlp(
        attn.data_ptr(), attn.shape[1], h.data_ptr(), ctypes.byref(o), norm_weight.data_ptr(), eps,
        ctypes.byref(gate_up), ctypes.byref(down), m, hidden, out.data_ptr(), scratch.y.data_ptr(),
        scratch.gu.data_ptr(), scratch.acts.data_ptr(), torch.get_num_threads(),
    )  # fmt: skip
    _check_simd(status)
    return out


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The int8-activation kernels' quantisation of contiguous fp32 x [m, k] (k a multiple of 32), on the active
    path: codes [m, k] in natural column order, scales [m, k/32], per-block code sums [m, k/32] (int32)."""
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8)
    d = torch.empty(m, k // 32)
    isum = torch.empty(m, k // 32, dtype=torch.int32)
    library().xq_quantize_rows(x.data_ptr(), m, k, q.data_ptr(), d.data_ptr(), isum.data_ptr())
    return _unpermute_blocks(q), d, isum


@dataclass
class NativeFp8State(_Tiles):
    """fp8 codes in 4-row tiles by block of 32 columns (K padded with zero codes), fp32 scales per group."""

    shape: tuple[int, int]
    group_size: int
    stored_k: int  # K of the portable codes
    e4m3: bool
    tiles: torch.Tensor  # uint8 [N/4, K/32, 4, 32]
    scales: torch.Tensor  # fp32 [N/4, groups, 4]
    group_blocks: int  # blocks of 32 per scale group (per-channel: all of them)

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            rows = torch.arange(self.shape[0])
        return self.tiles[rows // _TILE, :, rows % _TILE].reshape(rows.numel(), -1)[:, : self.stored_k]

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        fp8 = torch.float8_e4m3fn if self.e4m3 else torch.float8_e5m2
        values = self.codes(rows).contiguous().view(fp8).float()
        scale = _row_major(self.scales, rows).repeat_interleave(self.group_size, dim=1)[:, : self.stored_k]
        return (values * scale)[:, : self.shape[1]].to(dtype)


@register_kernel(formats=("fp8_e4m3", "fp8_e5m2"), device="cpu", priority=20)
class CpuNativeFp8Kernel(Kernel):
    """fp8 x fp32: codes become fp16 bit patterns in registers (F16C converts them exactly), fp32 FMAs."""

    name = "cpu_fp8_native"

    def available(self) -> bool:
        return library() is not None

    def supports(self, qw: Any) -> bool:
        groups = 1 if qw.scales is None else qw.scales.shape[1]
        return (
            qw.scales is not None
            and (groups == 1 or qw.group_size % 32 == 0)
            and bool(torch.isfinite(qw.scales).all())
            and library() is not None
        )

    def prepare(self, qw: Any, device: torch.device) -> NativeFp8State:
        n, stored = qw.shape[0], qw.data.shape[1]
        rows, k = -(-n // _TILE) * _TILE, -(-stored // 32) * 32
        codes = _pad_rows(F.pad(qw.data.view(torch.uint8), (0, k - stored)), rows)
        tiles = codes.reshape(rows // _TILE, _TILE, k // 32, 32).transpose(1, 2).contiguous()
        groups = qw.scales.shape[1]
        blocks = k // 32 if groups == 1 else qw.group_size // 32
        scales = _tile_major(_pad_rows(qw.scales.float(), rows))
        return NativeFp8State(
            tuple(qw.shape), qw.group_size, stored, qw.format == "fp8_e4m3", tiles, scales, blocks
        )

    def export(self, state: NativeFp8State) -> dict[str, Any]:
        rows = torch.arange(state.shape[0])
        return {
            "codes": state.codes().contiguous(),
            "scales": _row_major(state.scales, rows).contiguous(),
            "zeros": None,
        }

    def matmul(self, x: torch.Tensor, state: NativeFp8State) -> torch.Tensor:
        n, k = state.shape[0], state.padded_k
        lead = x.shape[:-1]
        x2 = _as_fp32_input(x.reshape(-1, x.shape[-1]), k)
        y = torch.empty((x2.shape[0], n))
        status = library().xq_fp8_linear(
            x2.data_ptr(), x2.shape[0], k, state.tiles.data_ptr(), state.scales.data_ptr(), state.scales.shape[1],
            state.group_blocks, int(state.e4m3), state.rows, n, y.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        _check(status, x2.shape[0], k)
        y = y.reshape(*lead, n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)
