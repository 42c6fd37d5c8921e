"""Does the way the weight tiles are loaded bound the batched tiles? Each tuned tile with its per-thread loads
(`cp.async`, pipelined) vs its twin whose K steps bring the weight tile by one TMA tensor copy (`tma=True`,
`jit.mma_t_kernel` / `w8a8_tile.tile_kernel`), side by side on a GPU.

Same bytes, same arithmetic, same order: the products are checked equal bit for bit, so any time difference is
the load path's. For each format, Llama-3-8B layer shape and row count: the tile the tuned table picks
(`select_config`; run with XPULLM_TRITON_AUTOTUNE=0 to time exactly the shipped records, with their `tma` cleared
for the thread-load arm), alternating rounds of the median of 30 L2-flushed calls, beside bf16 cuBLAS. Session
16 timed two other ideas the same way (each program's weight slice prefetched into L2 before its wait; the weight
stored tile by tile): docs/benchmarks-gpu.md.

    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_tma.py [--formats sym_int4:128,fp8_e4m3]
        [--rows 8,16,32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="sym_int4:128,fp8_e4m3,nf4:64")
    ap.add_argument("--rows", default="8,16,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_tma.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.formats import get_format
    from xpullm.kernels.triton import pack_weight, run, select_config, time_cold
    from xpullm.kernels.triton.configs import valid
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
                loads = replace(select_config(tw, m, torch.bfloat16), tma=False)
                copies = replace(loads, tma=True)
                if not valid(copies, tw, x.dtype):
                    print(
                        json.dumps({"fmt": item, "shape": f"{n}x{k}", "m": m, "no tma": str(loads)}),
                        flush=True,
                    )
                    continue
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                same = torch.equal(run(x, tw, loads).clone(), run(x, tw, copies))
                times: dict[bool, list[float]] = {False: [], True: []}
                for r in range(args.rounds):
                    for cfg in (loads, copies) if r % 2 == 0 else (copies, loads):
                        times[cfg.tma].append(1e3 * time_cold(functools.partial(run, x, tw, cfg, out), dev))
                bf16 = 1e3 * time_cold(functools.partial(F.linear, x[:, :k], dense), dev)
                rec = {
                    "fmt": item,
                    "shape": f"{n}x{k}",
                    "m": m,
                    "cfg": str(loads),
                    "equal": same,
                    "rows_us": statistics.median(times[False]),
                    "tma_us": statistics.median(times[True]),
                    "rows_range": [min(times[False]), max(times[False])],
                    "tma_range": [min(times[True]), max(times[True])],
                    "bf16_us": bf16,
                }
                print(json.dumps(rec), flush=True)
                acc = layer.setdefault((item, m), [0.0, 0.0, 0.0, 0.0])
                for i, v in enumerate((1.0, rec["rows_us"], rec["tma_us"], bf16)):
                    acc[i] += v
    print("| format | rows | shapes | thread loads (us) | TMA (us) | TMA / thread loads | bf16 cuBLAS (us) "
          "| thread loads vs bf16 | TMA vs bf16 |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (fmt, m), (cnt, loads_us, tma_us, bf16_us) in layer.items():
        print(f"| {fmt} | {m} | {cnt:.0f} | {loads_us:.1f} | {tma_us:.1f} | {tma_us / loads_us:.3f} | "
              f"{bf16_us:.1f} | {bf16_us / loads_us:.2f}x | {bf16_us / tma_us:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
