"""Does the way the weight tiles are loaded bound the batched tiles? The tuned tile with its per-thread loads
(`cp.async`, pipelined) vs the same tile with each K step's weight tile brought by one TMA bulk tensor copy (the
`TMA` constexpr of `jit.mma_t_kernel` and `w8a8_tile.tile_kernel`), side by side on a GPU.

Same bytes, same arithmetic, same order: the products must be equal bit for bit (checked), and any time
difference is the load path's. (Session 16 timed two other ideas the same way: each program's weight slice
prefetched into L2 before its wait, and the weight stored tile by tile; docs/benchmarks-gpu.md.)

    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_tma.py [--formats sym_int4:128,fp8_e4m3]
        [--rows 8,16,32] [--rounds 3]
    TRITON_INTERPRET=1 python -P bench/gpu_tma.py --check   # the descriptor indexing on small shapes, on the CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


class _WithTMA:
    """A jitted tile kernel whose launches get a tensor descriptor for the weight (positional argument `arg`,
    blocks of [BLOCK_N, step]) and TMA=True."""

    def __init__(self, kernel, arg: int, step: str) -> None:
        self.kernel, self.arg, self.step = kernel, arg, step

    def __getitem__(self, grid):
        from triton.tools.tensor_descriptor import TensorDescriptor

        launch = self.kernel[grid]

        def run(*args, **kwargs):
            w = args[self.arg]
            block = [kwargs["BLOCK_N"], kwargs[self.step]]
            desc = TensorDescriptor(w, list(w.shape), [w.stride(0), 1], block)
            return launch(*args[: self.arg], desc, *args[self.arg + 1 :], **kwargs, TMA=True)

        return run


@contextmanager
def tma_launches():
    from xpullm.kernels.triton import jit, w8a8_tile

    saved = jit.mma_t_kernel, w8a8_tile.tile_kernel
    jit.mma_t_kernel = _WithTMA(saved[0], 1, "BKW")
    w8a8_tile.tile_kernel = _WithTMA(saved[1], 2, "B")
    try:
        yield
    finally:
        jit.mma_t_kernel, w8a8_tile.tile_kernel = saved


def whole_tiles(tw, cfg) -> bool:
    """Whether `cfg`'s tiles cover `tw` exactly (the kernels take TMA only unmasked)."""
    from xpullm.kernels.triton import w8a8_tile

    if cfg.path == "mma_t":
        step = cfg.block_kb * 4
        per = -(-tw.kw // cfg.split_k)
        return tw.n % cfg.block_n == 0 and tw.kw % step == 0 and per % step == 0
    if cfg.path == "w8a8_t":
        block = w8a8_tile.act_block(tw.format)
        nb = tw.kx // block
        dots = cfg.block_kb * 16 // block
        return tw.n % cfg.block_n == 0 and tw.kx % block == 0 and nb % (cfg.split_k * dots) == 0
    return False


def check() -> int:
    """Interpreter: TMA == thread loads, bit for bit, on small whole-tile shapes."""
    from xpullm.formats import get_format
    from xpullm.kernels.triton import LaunchConfig, pack_weight, run
    from xpullm.kernels.triton.launch import _prepare_x

    cases = [
        ("sym_int4", 128, LaunchConfig("mma_t", 16, 64, 4, 2, 4, 3, plane_dots=True, pairs=True, join=4)),
        ("nf4", 64, LaunchConfig("mma_t", 16, 32, 4, 1, 4, 3, plane_dots=True, pairs=True)),
        ("fp8_e4m3", 0, LaunchConfig("mma_t", 16, 32, 4, 2, 4, 3, plane_dots=True)),
        ("fp8_e4m3", 0, LaunchConfig("w8a8_t", 16, 64, 16, 2, 4, 3)),
    ]
    for fmt, gs, cfg in cases:
        tw = pack_weight(get_format(fmt).quantize(torch.randn(128, 512) * 0.02, gs), "cpu")
        x = _prepare_x(torch.randn(5, 512, dtype=torch.bfloat16), tw)
        plain = run(x, tw, cfg)
        with tma_launches():
            tiled = run(x, tw, cfg)
        print(fmt, cfg.path, "equal" if torch.equal(plain, tiled) else "DIFFERENT")
        if not torch.equal(plain, tiled):
            return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="sym_int4:128,fp8_e4m3,nf4:64")
    ap.add_argument("--rows", default="8,16,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    ap.add_argument("--check", action="store_true", help="the indexing in the Triton interpreter (CPU)")
    args = ap.parse_args()
    if args.check:
        return check()
    if not torch.cuda.is_available():
        print("gpu_tma.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.formats import get_format
    from xpullm.kernels.triton import pack_weight, run, select_config, time_cold
    from xpullm.kernels.triton.launch import _prepare_x

    dev = torch.device("cuda")
    layer: dict[tuple[str, int], list[float]] = {}
    for item in args.formats.split(","):
        name, _, gs = item.partition(":")
        for n, k in SHAPES:
            weight = torch.randn(n, k) * 0.02
            tw = pack_weight(get_format(name).quantize(weight, int(gs) if gs else 0), dev)
            dense = weight.to(dev, torch.bfloat16)
            for m in (int(r) for r in args.rows.split(",")):
                x = _prepare_x(torch.randn(m, k, device=dev, dtype=torch.bfloat16), tw)
                cfg = select_config(tw, m, torch.bfloat16)
                if not whole_tiles(tw, cfg):
                    print(
                        json.dumps({"fmt": item, "shape": f"{n}x{k}", "m": m, "skipped": str(cfg)}),
                        flush=True,
                    )
                    continue
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                times: dict[str, list[float]] = {"rows": [], "tma": []}
                plain = run(x, tw, cfg).clone()
                with tma_launches():
                    same = torch.equal(plain, run(x, tw, cfg))
                for r in range(args.rounds):
                    for kind in ("rows", "tma") if r % 2 == 0 else ("tma", "rows"):
                        if kind == "tma":
                            with tma_launches():
                                t = time_cold(functools.partial(run, x, tw, cfg, out), dev)
                        else:
                            t = time_cold(functools.partial(run, x, tw, cfg, out), dev)
                        times[kind].append(1e3 * t)
                bf16 = 1e3 * time_cold(functools.partial(F.linear, x[:, :k], dense), dev)
                rec = {
                    "fmt": item,
                    "shape": f"{n}x{k}",
                    "m": m,
                    "cfg": str(cfg),
                    "equal": same,
                    "rows_us": statistics.median(times["rows"]),
                    "tma_us": statistics.median(times["tma"]),
                    "rows_range": [min(times["rows"]), max(times["rows"])],
                    "tma_range": [min(times["tma"]), max(times["tma"])],
                    "bf16_us": bf16,
                }
                print(json.dumps(rec), flush=True)
                acc = layer.setdefault((item, m), [0.0, 0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += rec["rows_us"]
                acc[2] += rec["tma_us"]
                acc[3] += bf16
    print("| format | rows | shapes | thread loads (us) | TMA (us) | TMA / thread loads | bf16 cuBLAS (us) "
          "| thread loads vs bf16 | TMA vs bf16 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (fmt, m), (cnt, plain_us, tiled_us, bf16_us) in layer.items():  # tiled: TMA
        print(f"| {fmt} | {m} | {cnt:.0f} | {plain_us:.1f} | {tiled_us:.1f} | {tiled_us / plain_us:.3f} | "
              f"{bf16_us:.1f} | {bf16_us / plain_us:.2f}x | {bf16_us / tiled_us:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
