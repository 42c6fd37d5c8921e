"""Compile the `mma_t` kernel variants for a GPU architecture offline (no GPU needed) and report their structure.

Triton compiles down to a cubin on any machine that has its NVIDIA backend (ptxas ships in the wheel), so the
shape of a kernel can be read before device time is spent on it. Per variant this prints what decides a
memory-bound batched decode kernel's speed:

- `waits`: tensor-core dot waits inside the K loop that drain everything in flight (`pendings = 0`) - each one
  serialises the step's dots - and the ones that leave dots in flight (`pendings > 0`);
- `smem weight`: layout conversions of the decoded weight through shared memory (0 = decoded in the dot's
  register layout);
- `async loads`: global loads Triton pipelines into shared memory (weights and activations);
- `regs` / `spill bytes`: registers per thread and local-memory spills (from the cubin).

The constants come from the launcher (`launch.mma_t_constexprs`) for a packed 4096 x 4096 weight; integer
arguments are marked divisible by 16, as the JIT specialises them on real launches (without that hint Triton
cannot vectorise the bf16 activation loads and does not pipeline them).

    .venv/bin/python -P bench/triton_static.py                     # the sym_int4 variants at 16 rows, sm_90
    .venv/bin/python -P bench/triton_static.py --format nf4 --rows 32
    .venv/bin/python -P bench/triton_static.py --path w4a8     # the w4a8 table's tiles (sym_int4 g128)
    .venv/bin/python -P bench/triton_static.py --path w8a8_t   # the w8a8_t table's tiles (fp8_e4m3, sym_int8)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from xpullm.formats import get_format
from xpullm.kernels.triton import jit, pack_weight
from xpullm.kernels.triton.configs import LaunchConfig, valid
from xpullm.kernels.triton.launch import mma_t_constexprs
from xpullm.kernels.triton.layout import FORMAT_CODES, TritonWeight

VARIANTS = {
    "planes": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True),
    "pairs": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True),
    "pairs accs=4": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, accs=4),
    "pairs fold accs=4": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, accs=4, fold=True),
    "pairs fold accs=8": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, accs=8, fold=True),
    "planes fold accs=8": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, accs=8, fold=True),
    "natural": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, natural=True),
    "one dot": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3),
    "pairs fixup": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, fixup=True),
    "pairs join 2": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, join=2),
    "pairs join 4": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, join=4),
    "pairs quads": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, quads=True),
    "pairs join 4 quads": LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, join=4, quads=True),
    "pairs 1 warp x 16 rows": LaunchConfig("mma_t", 16, 16, 4, 2, 1, 3, plane_dots=True, pairs=True),
    "pairs 32 words": LaunchConfig("mma_t", 16, 64, 8, 2, 4, 3, plane_dots=True, pairs=True),
    "pairs 32 words join 2": LaunchConfig("mma_t", 16, 64, 8, 2, 4, 3, plane_dots=True, pairs=True, join=2),
    "planes 32 words": LaunchConfig("mma_t", 16, 64, 8, 2, 4, 3, plane_dots=True),
}  # fmt: skip
SIGNATURE = {
    "x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*fp16", "lut_ptr": "*fp32", "y_ptr": "*fp32",
    "M": "i32", "N": "i32", "KW": "i32", "NG": "i32", "words_per_split": "i32",
    "stride_xm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32", "stride_ys": "i32",
    "out_ptr": "*bf16", "cnt_ptr": "*i32",
}  # fmt: skip


def _compile(fn, args: dict, const: dict, cfg: LaunchConfig, arch: int):
    """(compiled kernel, its TTGIR, the TTGIR of its K loop) for `fn` with pointer / integer arguments `args` and
    constants `const`, as a launch of `cfg` would build it."""
    sig = {**args, **{k: "constexpr" for k in const}}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(args) if n != "M"}
    kernel = triton.compile(
        ASTSource(fn, sig, constexprs=const, attrs=attrs),
        target=GPUTarget("cuda", arch, 128),
        options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages},
    )
    ttgir = kernel.asm["ttgir"]
    loop = ttgir[ttgir.index("scf.for") :]
    return kernel, ttgir, loop[: loop.index("scf.yield")]


def compile_variant(cfg: LaunchConfig, tw: TritonWeight, arch: int) -> dict:
    """Compile one configuration of `jit.mma_t_kernel` for weight `tw` with the constants a launch passes."""
    const = {
        **mma_t_constexprs(tw, cfg),
        "DOT_F32": False,
        "PDL": False,
        "FIXUP": cfg.fixup,
        "TMA": False,  # thread loads: a TMA launch passes a tensor descriptor, not a pointer
    }
    scales = "*fp16" if tw.scales.dtype == torch.float16 else "*fp32"
    args = {**SIGNATURE, "s_ptr": scales, "z_ptr": scales}
    kernel, ttgir, loop = _compile(jit.mma_t_kernel, args, const, cfg, arch)
    waits = re.findall(r"pendings = (\d+)", loop)
    return {
        "drain waits": sum(w == "0" for w in waits),
        "overlap waits": sum(w != "0" for w in waits),
        "smem weight": len(re.findall(r"ttg\.local_alloc %\S+ : \(tensor<\d+x\d+xbf16", loop))
        - len(re.findall(r"local_alloc %xt", loop)),
        "async loads": ttgir.count("ttg.async_copy_global_to_local"),
        "sass": _sass_instructions(kernel.asm["cubin"]),
        **_resources(kernel.asm["cubin"]),
    }


W4A8_SIGNATURE = {
    "xq_ptr": "*i8", "xs_ptr": "*fp32", "wb_ptr": "*i8", "s_ptr": "*fp16", "y_ptr": "*fp32",
    "M": "i32", "N": "i32", "KW": "i32", "words_per_split": "i32",
    "stride_xm": "i32", "stride_xsm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32",
    "stride_ys": "i32", "out_ptr": "*bf16", "cnt_ptr": "*i32",
}  # fmt: skip


def compile_w4a8(cfg: LaunchConfig, arch: int) -> dict:
    """Compile one `w4a8.mma_kernel` tile (sym_int4 g128, whole tiles) as a launch of `cfg` would."""
    from xpullm.kernels.triton import w4a8

    const = {
        "GROUP_WORDS": 16, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "DOTS": cfg.block_kb // 4,
        "USE_WS": cfg.split_k > 1, "EVEN": True, "DOT_I32": False, "PDL": False, "FIXUP": cfg.fixup,
        "PREFETCH": cfg.prefetch,
    }  # fmt: skip
    kernel, ttgir, loop = _compile(w4a8.mma_kernel, W4A8_SIGNATURE, const, cfg, arch)
    return {
        "tensor-core dots": kernel.asm["ptx"].count("wgmma.mma_async") + kernel.asm["ptx"].count("mma.sync"),
        "smem weight": len(re.findall(r"ttg\.local_alloc %\S+ : \(tensor<\d+x\d+xi8", loop)),
        "async loads": ttgir.count("ttg.async_copy_global_to_local"),
        **_resources(kernel.asm["cubin"]),
    }


W8A8_T_SIGNATURE = {
    "xq_ptr": "*i8", "xs_ptr": "*fp32", "w_ptr": "*i8", "sw_ptr": "*fp16", "y_ptr": "*fp32",
    "M": "i32", "N": "i32", "KX": "i32", "NB": "i32", "blocks_per_split": "i32",
    "stride_xm": "i32", "stride_xsm": "i32", "stride_wn": "i32", "stride_sn": "i32", "stride_ym": "i32",
    "stride_ys": "i32", "out_ptr": "*bf16", "cnt_ptr": "*i32",
}  # fmt: skip


def compile_w8a8_t(cfg: LaunchConfig, fmt: str, arch: int) -> dict:
    """Compile one `w8a8_tile.tile_kernel` tile (whole tiles) for weights of `fmt` as a launch of `cfg` would."""
    from xpullm.kernels.triton import w8a8_tile
    from xpullm.kernels.triton.w8a8 import FORMATS

    block = w8a8_tile.act_block(fmt)
    const = {
        "B": block, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "DOTS": cfg.block_kb * 16 // block,
        "INT8": fmt == "sym_int8", "USE_WS": cfg.split_k > 1, "EVEN": True, "EMULATE": False, "PDL": False,
        "FIXUP": cfg.fixup, "TILE_QUANTIZES": cfg.tile_quantizes, "QMAX": FORMATS[fmt][1], "SCALE_FACTOR": FORMATS[fmt][2],
        "TMA": False,
    }  # fmt: skip
    byte = "*i8" if fmt == "sym_int8" else "*fp8e4nv"
    args = {**W8A8_T_SIGNATURE, "xq_ptr": "*bf16" if cfg.tile_quantizes else byte, "w_ptr": byte}
    kernel, ttgir, loop = _compile(w8a8_tile.tile_kernel, args, const, cfg, arch)
    waits = re.findall(r"pendings = (\d+)", loop)
    return {
        "tensor-core dots": kernel.asm["ptx"].count("wgmma.mma_async") + kernel.asm["ptx"].count("mma.sync"),
        "drain waits": sum(w == "0" for w in waits),
        "async loads": ttgir.count("ttg.async_copy_global_to_local"),
        "smem stores": loop.count("ttg.local_store") + loop.count("ttg.local_alloc %"),
        **_resources(kernel.asm["cubin"]),
    }


def _cuobjdump(cubin: bytes, flag: str) -> str:
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True).stdout


def _resources(cubin: bytes) -> dict:
    found = dict(re.findall(r"(REG|LOCAL):(\d+)", _cuobjdump(cubin, "-res-usage")))
    return {"regs": int(found.get("REG", -1)), "spill bytes": int(found.get("LOCAL", -1))}


def _sass_instructions(cubin: bytes) -> int:
    """SASS instructions in the kernel (prologue and epilogue included; the K loop dominates)."""
    return len(re.findall(r"/\*[0-9a-f]{4}\*/\s+[A-Z]", _cuobjdump(cubin, "-sass")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", default="sym_int4", choices=sorted(FORMAT_CODES))
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--rows", type=int, default=16, help="BLOCK_M (activation rows per program)")
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: Hopper)")
    p.add_argument("--path", choices=("mma_t", "w4a8", "w8a8_t"), default="mma_t")
    args = p.parse_args()
    if args.path == "w8a8_t":
        from xpullm.kernels.triton.configs import CONFIG_TABLES

        print(f"w8a8_t, {args.rows} rows, sm_{args.arch}, Triton {triton.__version__}")
        print(
            "| format | tile | tensor-core dots | drain waits | async loads | smem stores | regs | spill bytes |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for fmt in ("fp8_e4m3", "sym_int8"):
            for cfg in CONFIG_TABLES["cuda"]["w8a8_t"]:
                r = compile_w8a8_t(replace(cfg, block_m=args.rows), fmt, args.arch)
                name = f"{cfg.block_n} rows x {cfg.block_kb * 16} bytes s{cfg.split_k} w{cfg.num_warps} st{cfg.num_stages}"
                name += " tq" * cfg.tile_quantizes
                print(f"| {fmt} | {name} | {r['tensor-core dots']} | {r['drain waits']} | {r['async loads']} "
                      f"| {r['smem stores']} | {r['regs']} | {r['spill bytes']} |")  # fmt: skip
        return
    if args.path == "w4a8":
        from xpullm.kernels.triton.configs import CONFIG_TABLES

        print(f"w4a8, sym_int4 g128, {args.rows} rows, sm_{args.arch}, Triton {triton.__version__}")
        print("| tile | tensor-core dots | smem weight | async loads | regs | spill bytes |")
        print("|---|---:|---:|---:|---:|---:|")
        for cfg in CONFIG_TABLES["cuda"]["w4a8"]:
            r = compile_w4a8(replace(cfg, block_m=args.rows), args.arch)
            name = f"{cfg.block_n} rows x {cfg.block_kb // 4} groups s{cfg.split_k} w{cfg.num_warps}"
            name += f" st{cfg.num_stages}" + " prefetch" * cfg.prefetch
            print(f"| {name} | {r['tensor-core dots']} | {r['smem weight']} | {r['async loads']} | {r['regs']} "
                  f"| {r['spill bytes']} |")  # fmt: skip
        return
    print(
        f"mma_t, {args.format} g{args.group_size}, {args.rows} rows, sm_{args.arch}, Triton {triton.__version__}"
    )
    print(
        "| variant | drain waits / step | overlap waits | smem weight | async loads | SASS instructions | regs "
        "| spill bytes |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    weight = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0)) * 0.02
    tw = pack_weight(get_format(args.format).quantize(weight, args.group_size), "cpu")
    for name, cfg in VARIANTS.items():
        if not valid(replace(cfg, block_m=args.rows), tw, torch.bfloat16):
            continue  # e.g. pairs outside sym_int4 / nf4 / fp4, fold where a step spans several groups
        r = compile_variant(replace(cfg, block_m=args.rows), tw, args.arch)
        print(f"| {name} | {r['drain waits']} | {r['overlap waits']} | {r['smem weight']} | {r['async loads']} "
              f"| {r['sass']} | {r['regs']} | {r['spill bytes']} |")  # fmt: skip


if __name__ == "__main__":
    main()
