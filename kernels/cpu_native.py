"""CPU fast paths compiled on the user's machine: int4/int8 weights x int8 activations with AVX2 integer dots.

PyTorch's `_weight_int4pack_mm_for_cpu` decodes every weight to float and multiplies in floating point; on CPUs
without native bf16 it runs at a fraction of llama.cpp's speed. These kernels (source: `csrc/cpu_ops.c`) do
what llama.cpp does instead: activations are quantised per block of 32 to int8 and each block's dot product
is one unsigned x signed byte multiply-add, so a token costs a few integer instructions per 32 weights. The
same library holds RMSNorm and a decode step's attention, which the decoder calls on CPU in fp32.

The C file is compiled once per source version and CPU with the system C compiler (`$CC`, `cc` or `gcc`) into
`$XPULLM_CACHE/native` and loaded with ctypes: no build step at install, no PyTorch headers. Where there is no
compiler, no AVX2/FMA/F16C, or `XPULLM_NATIVE=0`, the kernels report themselves unavailable and the registry
falls back to PyTorch's ops. At load, codes are regrouped into 4-row tiles (one cache line per block of 32
columns); `export` gives the portable codes back exactly.

Accuracy: the activation rounding (half a step of max|x|/127 per block of 32) is the same one llama.cpp's
Q4 x Q8 path makes; `reference_int8_activations` is the exact PyTorch twin used by the tests.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xpullm.kernels.packing import unpack_nibbles
from xpullm.kernels.registry import Kernel, register_kernel
from xpullm.settings import runtime_settings  # layer 0: imports nothing from xpullm

__all__ = [
    "CpuNativeInt4Kernel",
    "CpuNativeInt8Kernel",
    "NativeTiledState",
    "decode_attention",
    "library",
    "reference_decode_attention",
    "reference_int8_activations",
    "rms_norm",
]

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("csrc") / "cpu_ops.c"
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared")
_P, _I = ctypes.c_void_p, ctypes.c_int64


def _build_dir() -> Path:
    return runtime_settings().cache_dir() / "native"


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU model and flags (a shared cache may serve several machines)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _compile(cc: str, out: Path) -> None:
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    errors = []
    # OpenMP splits rows across threads; a compiler without it still builds the single-threaded kernel.
    for extra in (("-fopenmp",), ()):
        cmd = [cc, *_FLAGS, *extra, str(_SOURCE), "-o", str(tmp), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            os.replace(tmp, out)  # atomic: a concurrent build or a kill never leaves a half-written library
            return
        errors.append(proc.stderr.strip()[-500:])
    tmp.unlink(missing_ok=True)
    raise RuntimeError("; ".join(errors))


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
    lib.xq_int4_linear.argtypes = [_P, _I, _I, _P, _P, _P, _I, _I, _P, ctypes.c_int]
    lib.xq_int4_linear.restype = ctypes.c_int
    lib.xq_int8_linear.argtypes = [_P, _I, _I, _P, _P, _I, _I, _P, ctypes.c_int]
    lib.xq_int8_linear.restype = ctypes.c_int
    lib.xq_rms_norm.argtypes = [_P, _P, _P, _I, _I, ctypes.c_float]
    lib.xq_rms_norm.restype = None
    lib.xq_decode_attention.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, ctypes.c_float, _P,
                                        ctypes.c_int]  # fmt: skip
    lib.xq_decode_attention.restype = ctypes.c_int
    return lib


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


def _permute_blocks(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes [N, K] -> each block of 32 columns reordered even columns first, then odd (the activations'
    order, which is how packed int4 bytes unpack)."""
    n, k = codes.shape
    return codes.reshape(n, k // 32, 16, 2).transpose(-1, -2).reshape(n, k)


def _unpermute_blocks(codes: torch.Tensor) -> torch.Tensor:
    n, k = codes.shape
    return codes.reshape(n, k // 32, 2, 16).transpose(-1, -2).reshape(n, k)


@dataclass
class NativeTiledState:
    """Runtime layout: codes of 4-row tiles interleaved by block of 32 columns, one scale (zero) per block."""

    bits: int  # 4 (bytes hold column pairs, as in the portable layout) or 8 (block-permuted int8)
    shape: tuple[int, int]
    group_size: int
    tiles: torch.Tensor  # uint8 [N/4, K/32, 4, 16 or 32] (N padded to a multiple of 4)
    block_scales: torch.Tensor  # fp16 [N (padded), K/32]
    block_zeros: torch.Tensor | None  # fp16 [N (padded), K/32]; None: zero = -8 * scale (int4) or 0 (int8)

    @property
    def padded_k(self) -> int:
        return self.tiles.shape[1] * 32

    def codes(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Portable codes of `rows` (default: all): int4 unpacked to uint8 0..15, int8 as int8, [R, K]."""
        if rows is None:
            rows = torch.arange(self.shape[0])
        raw = self.tiles[rows // _TILE, :, rows % _TILE].reshape(rows.numel(), -1)
        return unpack_nibbles(raw) if self.bits == 4 else _unpermute_blocks(raw.view(torch.int8))

    def dequantize_rows(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows of the float weight (an embedding lookup on a tied low-bit head)."""
        q = self.codes(rows).float().reshape(rows.numel(), -1, 32)
        scale = self.block_scales[rows].float()[..., None]
        if self.block_zeros is not None:
            zero = self.block_zeros[rows].float()[..., None]
        else:
            zero = (-8.0 if self.bits == 4 else 0.0) * scale
        return (q * scale + zero).reshape(rows.numel(), -1)[:, : self.shape[1]].to(dtype)


def _to_blocks(t: torch.Tensor | None, per_block: int, rows: int) -> torch.Tensor | None:
    """Per-group fp16 values -> one per block of 32 columns, rows padded with zeros to `rows`."""
    if t is None:
        return None
    t = t.to(torch.float16).repeat_interleave(per_block, dim=1)
    return F.pad(t, (0, 0, 0, rows - t.shape[0])).contiguous()


class _NativeTiledKernel(Kernel):
    """Shared by the int4 and int8 native kernels: tiling at load, export, and the ctypes call."""

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
        n, k = qw.shape[0], qw.padded_k
        rows = -(-n // _TILE) * _TILE
        # int4: bytes as stored (column pairs); int8: codes reordered per block like the activations.
        codes = qw.data if self.bits == 4 else _permute_blocks(qw.data).view(torch.uint8)
        codes = F.pad(codes, (0, 0, 0, rows - n))
        tiles = codes.reshape(rows // _TILE, _TILE, k // 32, -1).transpose(1, 2).contiguous()
        per_block = qw.group_size // 32
        return NativeTiledState(
            self.bits, tuple(qw.shape), qw.group_size, tiles,
            _to_blocks(qw.scales, per_block, rows), _to_blocks(qw.zeros, per_block, rows),
        )  # fmt: skip

    def export(self, state: NativeTiledState) -> dict[str, Any]:
        """Portable codes (unpacked), scales and zeros, exactly as they came in (fp16 holds them exactly)."""
        n, step = state.shape[0], state.group_size // 32
        pick = lambda t: None if t is None else t[:n, ::step].contiguous()  # noqa: E731
        return {"codes": state.codes(), "scales": pick(state.block_scales), "zeros": pick(state.block_zeros)}

    def matmul(self, x: torch.Tensor, state: NativeTiledState) -> torch.Tensor:
        n, k = state.shape[0], state.padded_k
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        if x2.dtype != torch.float32 or x2.shape[1] != k or not x2.is_contiguous():
            x2 = F.pad(x2.float(), (0, k - x2.shape[1])).contiguous()
        y = torch.empty((x2.shape[0], n))
        lib, rows = library(), state.block_scales.shape[0]
        if self.bits == 4:
            zeros = None if state.block_zeros is None else state.block_zeros.data_ptr()
            status = lib.xq_int4_linear(
                x2.data_ptr(), x2.shape[0], k, state.tiles.data_ptr(), state.block_scales.data_ptr(), zeros,
                rows, n, y.data_ptr(), torch.get_num_threads(),
            )  # fmt: skip
        else:
            status = lib.xq_int8_linear(
                x2.data_ptr(), x2.shape[0], k, state.tiles.data_ptr(), state.block_scales.data_ptr(), rows, n,
                y.data_ptr(), torch.get_num_threads(),
            )  # fmt: skip
        if status != 0:
            raise MemoryError(
                f"native CPU kernel could not allocate scratch for {x2.shape[0]} x {k} activations"
            )
        y = y.reshape(*lead, n)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


@register_kernel(formats=("sym_int4", "asym_int4"), device="cpu", priority=20)
class CpuNativeInt4Kernel(_NativeTiledKernel):
    """int4 x int8 integer dot products (AVX2), compiled here from `csrc/cpu_ops.c`."""

    name = "cpu_int4_native"
    bits = 4


@register_kernel(formats=("sym_int8",), device="cpu", priority=20)
class CpuNativeInt8Kernel(_NativeTiledKernel):
    """int8 x int8 integer dot products (AVX2), per-row or per-group (Q8_0) scales."""

    name = "cpu_int8_native"
    bits = 8
