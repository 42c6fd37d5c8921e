"""Runtime settings: every `XPULLM_*` environment switch, read in this one place into one frozen dataclass.

| variable | field | default | effect |
|---|---|---|---|
| `XPULLM_CACHE` | `cache` | user cache dir (`~/.cache/xpullm`) | where converted default models and the native CPU kernel build live |
| `XPULLM_NATIVE` | `native` | `1` | `0`: never build/use the native AVX2 CPU kernels (PyTorch's int4 op instead) |
| `XPULLM_FUSED_OPS` | `fused_ops` | `1` | `0`: the GPU decode step uses ATen ops instead of the fused Triton norm/RoPE/attention kernels, and the CPU engine runs its layers op by op instead of two native calls per layer |
| `XPULLM_CUDA_GRAPHS` | `cuda_graphs` | `1` | `0`: no CUDA-graph capture of the decode step |
| `XPULLM_CUDA_KERNELS` | `cuda_kernels` | `1` | `0`: the tuner leaves out the CUDA C++ low-bit kernel (`kernels/cuda`: int4, nf4, fp4, int8, fp8 weights x 2-64 bf16 rows on tensor cores; built by the machine's nvcc on first use, about 75 s once; without nvcc it is left out anyway) and passes over its tuned records |
| `XPULLM_TRITON_AUTOTUNE` | `triton_autotune` | `1` | `0`: Triton matmuls take the tuned table / heuristic config without timing candidates |
| `XPULLM_TRITON_TUNED` | `triton_tuned` | unset | path of an extra tuned-config table, read before the packaged one |
| `XPULLM_TRITON_TUNE_CACHE` | `triton_tune_cache` | `1` | `0`: the tuner neither reads nor writes this machine's timed winners (`<XPULLM_CACHE>/triton/`; otherwise a shape timed once is not timed again in later processes) |
| `XPULLM_TRITON_MMA` | `triton_mma` | `1` | `0`: the tuner leaves out the batched tensor-core tiles (`mma`, `mma_t`) |
| `XPULLM_TRITON_MORE_PAIRS` | `triton_more_pairs` | `1` | `0`: the tuner leaves out the pair decodes beyond sym_int4 with one scale per K step (nf4 / fp4 by byte permutes; sym_int4 under several group scales per K step; joined pair dots) |
| `XPULLM_TRITON_FIXUP` | `triton_fixup` | `1` | `0`: the tuner leaves out the `mma_t` tiles that sum their K splits in the kernel |
| `XPULLM_TRITON_TMA` | `triton_tma` | `1` | `0`: the tuner leaves out tiles whose weight arrives by TMA tensor copies (`mma_t`, `w8a8_t` on Hopper+), and tuned records of them keep their tiles with thread loads |
| `XPULLM_TRITON_W4A8` | `triton_w4a8` | `0` | `1`: the tuner also times sym_int4 weights x int8 activation rows (a scale per 64 elements) on int8 tensor cores (`w4a8`) |
| `XPULLM_TRITON_W8A8` | `triton_w8a8` | `off` | `fp8`: the tuner also times fp8_e4m3 weights x per-token fp8 activations on cuBLAS; `all`: sym_int8 too |
| `XPULLM_TRITON_W8A8_T` | `triton_w8a8_t` | `fp8` | the tuner also times 8-bit weights x 8-bit activation rows in Triton tensor-core tiles (`w8a8_t`) for fp8_e4m3 weights (rows in e4m3, a scale per 128 elements); `all`: sym_int8 x int8 rows (a scale per 64) too; `off`: neither |
| `XPULLM_Q8_ROWS` | `q8_rows` | `1` | most rows per step whose activations the fused GPU norm / SwiGLU quantize to int8 for the int4 GEMV (`gemv_q8`, up to 8 rows per program); taller steps hand bf16 rows to the tuner's choice |
| `XPULLM_PAGED_SPLITS` | `paged_splits` | `16` | most parts the GPU paged attention splits each token's context into (flash decoding, merged after); `1`: unsplit, one program per token and kv head |
| `XPULLM_PDL` | `pdl` | `1` | `0`: launch Triton kernels without programmatic dependent launch (Hopper+) |
| `XPULLM_CUDA_PDL` | `cuda_pdl` | `1` | `0`: launch the CUDA C++ low-bit kernel without it (with `XPULLM_PDL=0` it is off anyway) |
| `XPULLM_DEBUG` | `debug` | unset | set (not `0`): the CLI prints tracebacks, as `--debug` does |
| `XPULLM_IPEX` | `ipex` | `1` | `0`: never use intel_extension_for_pytorch's WOQ linear, where it is installed |

`runtime_settings()` reads the environment when called (tests and benchmarks flip switches at run time; reading
twenty-one variables costs about a microsecond). This module imports nothing from xpullm, so every layer, kernels
included, may read it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENVIRONMENT", "RuntimeSettings", "runtime_settings"]

# field -> environment variable
ENVIRONMENT = {
    "cache": "XPULLM_CACHE",
    "native": "XPULLM_NATIVE",
    "fused_ops": "XPULLM_FUSED_OPS",
    "cuda_graphs": "XPULLM_CUDA_GRAPHS",
    "cuda_kernels": "XPULLM_CUDA_KERNELS",
    "triton_autotune": "XPULLM_TRITON_AUTOTUNE",
    "triton_tuned": "XPULLM_TRITON_TUNED",
    "triton_tune_cache": "XPULLM_TRITON_TUNE_CACHE",
    "triton_mma": "XPULLM_TRITON_MMA",
    "triton_more_pairs": "XPULLM_TRITON_MORE_PAIRS",
    "triton_fixup": "XPULLM_TRITON_FIXUP",
    "triton_tma": "XPULLM_TRITON_TMA",
    "triton_w4a8": "XPULLM_TRITON_W4A8",
    "triton_w8a8": "XPULLM_TRITON_W8A8",
    "triton_w8a8_t": "XPULLM_TRITON_W8A8_T",
    "q8_rows": "XPULLM_Q8_ROWS",
    "paged_splits": "XPULLM_PAGED_SPLITS",
    "pdl": "XPULLM_PDL",
    "cuda_pdl": "XPULLM_CUDA_PDL",
    "debug": "XPULLM_DEBUG",
    "ipex": "XPULLM_IPEX",
}


@dataclass(frozen=True)
class RuntimeSettings:
    """The `XPULLM_*` switches (table in the module docstring); switches are on unless set to `0`, except the
    tuner's opt-in candidates (`1` / a name turns them on)."""

    cache: str | None = None  # None: the platform's user cache dir
    native: bool = True
    fused_ops: bool = True
    cuda_graphs: bool = True
    cuda_kernels: bool = True
    triton_autotune: bool = True
    triton_tuned: str | None = None
    triton_tune_cache: bool = True
    triton_mma: bool = True
    triton_more_pairs: bool = True
    triton_fixup: bool = True
    triton_tma: bool = True
    triton_w4a8: bool = False
    triton_w8a8: str = "off"  # off | fp8 | all
    triton_w8a8_t: str = "fp8"  # off | fp8 | all
    q8_rows: int = 1
    paged_splits: int = 16
    pdl: bool = True
    cuda_pdl: bool = True
    debug: bool = False
    ipex: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> RuntimeSettings:
        """The settings the environment `environ` asks for."""
        get = environ.get
        return cls(
            cache=get(ENVIRONMENT["cache"]) or None,
            native=get(ENVIRONMENT["native"], "1") != "0",
            fused_ops=get(ENVIRONMENT["fused_ops"], "1") != "0",
            cuda_graphs=get(ENVIRONMENT["cuda_graphs"], "1") != "0",
            cuda_kernels=get(ENVIRONMENT["cuda_kernels"], "1") != "0",
            triton_autotune=get(ENVIRONMENT["triton_autotune"], "1") != "0",
            triton_tuned=get(ENVIRONMENT["triton_tuned"]) or None,
            triton_tune_cache=get(ENVIRONMENT["triton_tune_cache"], "1") != "0",
            triton_mma=get(ENVIRONMENT["triton_mma"], "1") != "0",
            triton_more_pairs=get(ENVIRONMENT["triton_more_pairs"], "1") != "0",
            triton_fixup=get(ENVIRONMENT["triton_fixup"], "1") != "0",
            triton_tma=get(ENVIRONMENT["triton_tma"], "1") != "0",
            triton_w4a8=get(ENVIRONMENT["triton_w4a8"], "0") not in ("", "0"),
            triton_w8a8=(get(ENVIRONMENT["triton_w8a8"]) or "off").strip().lower(),
            triton_w8a8_t=(get(ENVIRONMENT["triton_w8a8_t"]) or "fp8").strip().lower(),
            q8_rows=_count(get(ENVIRONMENT["q8_rows"]), 1, ENVIRONMENT["q8_rows"]),
            paged_splits=max(
                1, _count(get(ENVIRONMENT["paged_splits"]), 16, ENVIRONMENT["paged_splits"], "splits")
            ),
            pdl=get(ENVIRONMENT["pdl"], "1") != "0",
            cuda_pdl=get(ENVIRONMENT["cuda_pdl"], "1") != "0",
            debug=get(ENVIRONMENT["debug"], "") not in ("", "0"),
            ipex=get(ENVIRONMENT["ipex"], "1") != "0",
        )

    def cache_dir(self) -> Path:
        """`cache` expanded, else the user cache dir (e.g. ~/.cache/xpullm)."""
        if self.cache:
            return Path(self.cache).expanduser()
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("xpullm"))


def _count(text: str | None, default: int, name: str, unit: str = "rows") -> int:
    """A non-negative integer setting (`default` when unset)."""
    if text is None or not text.strip():
        return default
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{name}={text!r} must be a whole number of {unit} (0 or more); unset it for {default}"
        )
    return value


def runtime_settings() -> RuntimeSettings:
    """The current `XPULLM_*` settings."""
    return RuntimeSettings.from_env()
