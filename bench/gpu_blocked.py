"""Does the weight stream's address pattern bound the batched tiles? The tuned tile over the row-major layout vs
the same tile over a copy of the weight stored tile by tile (each K step's [BLOCK_N, step] tile one contiguous
run: the `BLOCKED` constexpr of `jit.mma_t_kernel` and `w8a8_tile.tile_kernel`), side by side on a GPU.

In the row-major layout a 64-row tile's K step reads 64 runs of 64-128 bytes, one per weight row, 2-4 KiB
apart; blocked, it reads one run of 4-8 KiB. Same bytes, same arithmetic, same order: the products must be
equal bit for bit (checked), and any time difference is the memory system's.

    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_blocked.py [--formats sym_int4:128,fp8_e4m3]
        [--rows 8,16,32] [--rounds 3]
    TRITON_INTERPRET=1 python -P bench/gpu_blocked.py --check   # the indexing on small shapes, on the CPU
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


class _WithBlocked:
    """A jitted kernel whose launches all pass BLOCKED=True."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *args, **kwargs: launch(*args, **kwargs, BLOCKED=True)


@contextmanager
def blocked_launches():
    from xpullm.kernels.triton import jit, w8a8_tile

    saved = jit.mma_t_kernel, w8a8_tile.tile_kernel
    jit.mma_t_kernel, w8a8_tile.tile_kernel = _WithBlocked(saved[0]), _WithBlocked(saved[1])
    try:
        yield
    finally:
        jit.mma_t_kernel, w8a8_tile.tile_kernel = saved


def blocked_weight(tw, cfg):
    """`tw` with its words stored tile by tile for `cfg`'s tiles, or None where the tiles are not whole."""
    if cfg.path == "mma_t":
        rows, step = cfg.block_n, cfg.block_kb * 4  # words
        words = tw.words
    elif cfg.path == "w8a8_t":
        from xpullm.kernels.triton import w8a8_tile

        rows, step = cfg.block_n, w8a8_tile.act_block(tw.format)  # bytes
        words = tw.words.view(torch.int8)
    else:
        return None
    n, width = words.shape
    if n % rows or width % step or n != tw.n:
        return None
    tiles = words.view(n // rows, rows, width // step, step).permute(0, 2, 1, 3).contiguous()
    return replace(tw, words=tiles.view(n, width).view(torch.int32))


def check() -> int:
    """Interpreter: blocked == row-major, bit for bit, on small whole-tile shapes."""
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
        with blocked_launches():
            tiled = run(x, blocked_weight(tw, cfg), cfg)
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
        print("gpu_blocked.py needs a CUDA GPU", file=sys.stderr)
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
                tiled = blocked_weight(tw, cfg)
                if tiled is None:
                    print(
                        json.dumps({"fmt": item, "shape": f"{n}x{k}", "m": m, "skipped": str(cfg)}),
                        flush=True,
                    )
                    continue
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                times: dict[str, list[float]] = {"rows": [], "blocked": []}
                plain = run(x, tw, cfg).clone()
                with blocked_launches():
                    same = torch.equal(plain, run(x, tiled, cfg))
                for r in range(args.rounds):
                    for kind in ("rows", "blocked") if r % 2 == 0 else ("blocked", "rows"):
                        if kind == "blocked":
                            with blocked_launches():
                                t = time_cold(functools.partial(run, x, tiled, cfg, out), dev)
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
                    "blocked_us": statistics.median(times["blocked"]),
                    "rows_range": [min(times["rows"]), max(times["rows"])],
                    "blocked_range": [min(times["blocked"]), max(times["blocked"])],
                    "bf16_us": bf16,
                }
                print(json.dumps(rec), flush=True)
                acc = layer.setdefault((item, m), [0.0, 0.0, 0.0, 0.0])
                acc[0] += 1
                acc[1] += rec["rows_us"]
                acc[2] += rec["blocked_us"]
                acc[3] += bf16
    print("| format | rows | shapes | row-major (us) | blocked (us) | blocked / row-major | bf16 cuBLAS (us) "
          "| row-major vs bf16 | blocked vs bf16 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (fmt, m), (cnt, plain_us, tiled_us, bf16_us) in layer.items():
        print(f"| {fmt} | {m} | {cnt:.0f} | {plain_us:.1f} | {tiled_us:.1f} | {tiled_us / plain_us:.3f} | "
              f"{bf16_us:.1f} | {bf16_us / plain_us:.2f}x | {bf16_us / tiled_us:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
