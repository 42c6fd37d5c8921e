"""The Triton paged-attention kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter tests (`test_triton_paged_attention.py`) check the kernels' numbers but not that Triton's compiler
accepts them; this compiles both kernels ahead of time for CUDA sm_90 through ptxas (shipped in Triton's wheel),
for bf16 pools with Qwen3's norms and for int8 and fp8 e4m3 pools (the latter in the rotated basis), unsplit and
split (the last program merging the splits behind an acquire / release counter), and checks that the attention runs on tensor cores (`mma`); and at Llama's
attention shape, compiled as a launch specializes it (unit strides, 16-byte aligned pointers), that the shipped tile
spills no registers for any pool kind (`cuobjdump`, shipped in Triton's wheel too).
Skipped under TRITON_INTERPRET=1 (the kernels are interpreted functions then) or without Triton's CUDA backend.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip(
        "kernels are interpreted under TRITON_INTERPRET=1: nothing to compile", allow_module_level=True
    )
nvidia = pytest.importorskip("triton.backends.nvidia")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from xpullm.kernels.triton import paged_attention as paged  # noqa: E402

STRIDES = (
    "stride_qkv",
    "stride_cos",
    "stride_sin",
    "stride_t",
    "stride_kb",
    "stride_kh",
    "stride_ks",
    "stride_kd",
)
STRIDES += ("stride_vb", "stride_vh", "stride_vs", "stride_vd")


def _compile(fn, types: dict[str, str], constexprs: dict, warps: int, aligned: bool = False):
    signature = {
        name: "constexpr" if name in constexprs else types.get(name, "i64" if name in STRIDES else "fp32")
        for name in fn.arg_names
    }
    # aligned: pointers and strides marked divisible by 16, as the JIT specializes them on real launches
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if aligned and name not in constexprs and (name.endswith("_ptr") or name in STRIDES)
    }
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def _spilled_bytes(kernel) -> int:
    """The stack frame ptxas gave the kernel (spilled registers), read by `cuobjdump --dump-resource-usage`."""
    tool = Path(nvidia.__file__).parent / "bin" / "cuobjdump"
    if not tool.exists():
        pytest.skip(f"no cuobjdump in Triton's wheel ({tool})")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        usage = subprocess.run(
            [str(tool), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(f.split(":", 1) for line in usage.splitlines() if "STACK:" in line for f in line.split())
    return int(fields["STACK"])


@pytest.mark.parametrize(
    ("act", "pool", "window", "d"),
    [
        ("bf16", "bf16", False, 64),
        ("bf16", "i8", False, 64),
        ("bf16", "fp8e4nv", False, 64),
        ("bf16", "fp8e4nv", False, 128),  # the rotation's D x D tile at Llama's head size
        ("bf16", "bf16", True, 64),
    ],
)
def test_paged_kernels_compile_for_sm90(act: str, pool: str, window: bool, d: int) -> None:
    codes = {"i8": 1, "fp8e4nv": 2}.get(pool, 0)
    common = {
        "pos_ptr": "*i64", "seq_ptr": "*i64", "table_ptr": "*i32", "ks_ptr": "*fp32", "vs_ptr": "*fp32",
        "window": "i32", "sinks": "i32", "sink_cols": "i32", "ring": "i32", "cnt_ptr": "*i32",
    }  # fmt: skip
    rot = codes == 2  # fp8 pools of a power-of-two head size store the rotated basis (`paged.kv_rotation`)
    write = _compile(
        paged._paged_write_kernel,
        {
            **common, "qkv_ptr": f"*{act}", "cos_ptr": f"*{act}", "sin_ptr": f"*{act}", "qn_ptr": f"*{act}",
            "kn_ptr": f"*{act}", "q_ptr": f"*{act}", "k_ptr": f"*{pool}", "v_ptr": f"*{pool}",
        },
        {"H": 9, "KV": 3, "D": d, "BS": 16, "HAS_NORM": True, "CODES": codes, "WINDOW": window, "PDL": True,
         "ROT": rot, "COUNTERS": True},
        warps=1,
    )  # fmt: skip
    assert write.asm["cubin"]
    for splits in (
        1,
        16,
    ):  # one program per token and kv head; the split programs (their partials, the last one merging)
        attend = _compile(
            paged._paged_attention_kernel,
            {**common, "q_ptr": f"*{act}", "k_ptr": f"*{pool}", "v_ptr": f"*{pool}", "o_ptr": f"*{act}",
             "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "n_rows": "i32", "programs": "i32"},
            {
                "KV": 3, "G": 3, "D": d, "BS": 16, "BLOCK_G": 16, "BLOCK_C": paged._block_cols(d, 2),
                "DOT_F32": False, "IEEE": False, "CODES": codes, "WINDOW": window, "PDL": True, "ROT": rot,
                "SPLITS": splits, "PREFETCH": True, "MIN_SPLIT": 128, "UNSPLIT": 128, "BLOCK_H": 4,
            },
            warps=4,
        )  # fmt: skip
        assert attend.asm["cubin"]
        assert "mma" in attend.asm["ptx"], "the scores and p @ v should run on tensor cores"
        if splits > 1:  # the arrival counter: an acquire-release add at GPU scope, the partials read from L2
            assert "atom.global.gpu.acq_rel.add" in attend.asm["ptx"]
            assert "ld.global.cg" in attend.asm["ptx"]


@pytest.mark.parametrize("pool", ["bf16", "i8", "fp8e4nv"])
def test_llama_shaped_attention_spills_no_registers(pool: str) -> None:
    """Llama-3's attention (8 kv heads of 128, 4 query heads each), bf16 activations, split (the engine's default:
    the loop over splits and both stores), the tile `_tile` ships: no stack frame. Before the fp8 pools' rotation became butterflies, its [128, 128] fp32 R tile spilled 2-6 KiB a
    thread (and the write kernel's 2 KiB); 64-column tiles at four warps spilled too without unit strides."""
    codes = {"i8": 1, "fp8e4nv": 2}.get(pool, 0)
    tile = paged._tile(128, 2, codes)
    types = {
        "pos_ptr": "*i64", "seq_ptr": "*i64", "table_ptr": "*i32", "ks_ptr": "*fp32", "vs_ptr": "*fp32",
        "window": "i32", "sinks": "i32", "sink_cols": "i32", "ring": "i32", "q_ptr": "*bf16",
        "k_ptr": f"*{pool}", "v_ptr": f"*{pool}", "o_ptr": "*bf16", "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32",
        "n_rows": "i32", "programs": "i32", "qkv_ptr": "*bf16", "cos_ptr": "*bf16", "sin_ptr": "*bf16",
        "qn_ptr": "*bf16", "kn_ptr": "*bf16", "cnt_ptr": "*i32",
    }  # fmt: skip
    unit = {"stride_kd": 1, "stride_vd": 1}
    attend = _compile(
        paged._paged_attention_kernel,
        types,
        {
            "KV": 8, "G": 4, "D": 128, "BS": 16, "BLOCK_G": 16, "BLOCK_C": tile.cols, "DOT_F32": False, "IEEE": False,
            "CODES": codes, "WINDOW": False, "PDL": True, "ROT": codes == 2, "SPLITS": 16,
            "PREFETCH": tile.prefetch, "MIN_SPLIT": tile.min_split, "UNSPLIT": tile.unsplit, "BLOCK_H": 4, **unit,
        },
        warps=tile.warps,
        aligned=True,
    )  # fmt: skip
    assert _spilled_bytes(attend) == 0
    write = _compile(
        paged._paged_write_kernel,
        types,
        {"H": 32, "KV": 8, "D": 128, "BS": 16, "HAS_NORM": False, "CODES": codes, "WINDOW": False, "PDL": True,
         "ROT": codes == 2, "COUNTERS": True, **unit},
        warps=1,
        aligned=True,
    )  # fmt: skip
    assert _spilled_bytes(write) == 0
