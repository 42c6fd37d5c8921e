"""The Triton paged-attention kernels compile for a Hopper GPU (sm_90) on a machine without one.

The interpreter tests (`test_triton_paged_attention.py`) check the kernels' numbers but not that Triton's compiler
accepts them; this compiles both kernels ahead of time for CUDA sm_90 through ptxas (shipped in Triton's wheel),
for bf16 pools with Qwen3's norms and for int8 and fp8 e4m3 pools (the latter in the rotated basis), unsplit and
split (with the merge of the splits), and checks that the attention runs on tensor cores (`mma`).
Skipped under TRITON_INTERPRET=1 (the kernels are interpreted functions then) or without Triton's CUDA backend.
"""

from __future__ import annotations

import os

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


def _compile(fn, types: dict[str, str], constexprs: dict, warps: int):
    signature = {
        name: "constexpr" if name in constexprs else types.get(name, "i64" if name in STRIDES else "fp32")
        for name in fn.arg_names
    }
    src = ASTSource(fn, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


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
        "window": "i32", "sinks": "i32", "sink_cols": "i32", "ring": "i32", "rot_ptr": "*fp32",
    }  # fmt: skip
    rot = codes == 2  # fp8 pools of a power-of-two head size store the rotated basis (`paged.kv_rotation`)
    write = _compile(
        paged._paged_write_kernel,
        {
            **common, "qkv_ptr": f"*{act}", "cos_ptr": f"*{act}", "sin_ptr": f"*{act}", "qn_ptr": f"*{act}",
            "kn_ptr": f"*{act}", "q_ptr": f"*{act}", "k_ptr": f"*{pool}", "v_ptr": f"*{pool}",
        },
        {"H": 9, "KV": 3, "D": d, "BS": 16, "HAS_NORM": True, "CODES": codes, "WINDOW": window, "PDL": True,
         "ROT": rot},
        warps=1,
    )  # fmt: skip
    assert write.asm["cubin"]
    for splits in (
        1,
        16,
    ):  # one program per token and kv head; the split programs (their partials, then a merge)
        attend = _compile(
            paged._paged_attention_kernel,
            {**common, "q_ptr": f"*{act}", "k_ptr": f"*{pool}", "v_ptr": f"*{pool}", "o_ptr": f"*{act}",
             "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "n_rows": "i32", "programs": "i32"},
            {
                "KV": 3, "G": 3, "D": d, "BS": 16, "BLOCK_G": 16, "BLOCK_C": paged._block_cols(d, 2),
                "DOT_F32": False, "IEEE": False, "CODES": codes, "WINDOW": window, "PDL": True, "ROT": rot,
                "SPLITS": splits,
            },
            warps=4,
        )  # fmt: skip
        assert attend.asm["cubin"]
        assert "mma" in attend.asm["ptx"], "the scores and p @ v should run on tensor cores"
    merge = _compile(
        paged._merge_splits_kernel,
        {"ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "o_ptr": f"*{act}", "n_rows": "i32", "S": "i32"},
        {"D": d, "BLOCK_S": 16, "PDL": True},
        warps=4,
    )
    assert merge.asm["cubin"]
