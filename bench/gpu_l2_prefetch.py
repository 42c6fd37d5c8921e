"""The batched tiles with and without their L2 prefetch (`kernels/triton/l2.py`), side by side on a GPU.

For each format, Llama-3-8B layer shape and row count: the tile the tuned table picks (`select_config`; run with
XPULLM_TRITON_AUTOTUNE=0 to time exactly the shipped records), timed with XPULLM_L2_PREFETCH=0 and =1 in
alternating rounds (median of 30 L2-flushed calls per round, `time_cold`), beside bf16 cuBLAS on the same shape.
Printed: one JSON line per shape (medians over the rounds, ranges), then per format and row count the layer
sums (the four shapes) and the ratio.

    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_l2_prefetch.py [--formats sym_int4:128,fp8_e4m3]
        [--rows 8,16,32] [--rounds 3]
    python -P bench/gpu_l2_prefetch.py --summarize LOG   # the layer table from a run's printed lines
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def summarize(lines: list[str]) -> str:
    """Per format and row count: layer sums (us) off / on, the ratio, bf16 and both against bf16."""
    recs = [json.loads(line) for line in lines if line.startswith("{")]
    layer: dict[tuple[str, int], list[float]] = {}
    for r in recs:
        acc = layer.setdefault((r["fmt"], r["m"]), [0.0, 0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += r["off_us"]
        acc[2] += r["on_us"]
        acc[3] += r["bf16_us"]
    out = [
        "| format | rows | shapes | tiles, prefetch off (us) | prefetch on (us) | on / off | bf16 cuBLAS (us) "
        "| off vs bf16 | on vs bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (fmt, m), (n, off, on, bf16) in layer.items():
        out.append(
            f"| {fmt} | {m} | {n:.0f} | {off:.1f} | {on:.1f} | {on / off:.3f} | {bf16:.1f} | {bf16 / off:.2f}x "
            f"| {bf16 / on:.2f}x |"
        )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="sym_int4:128,nf4:64,fp8_e4m3,sym_int8")
    ap.add_argument("--rows", default="8,16,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating off / on rounds per shape")
    ap.add_argument("--summarize", type=Path, default=None, help="no GPU: the layer table of a run's output")
    args = ap.parse_args()
    if args.summarize:
        print(summarize(args.summarize.read_text().splitlines()))
        return 0
    if not torch.cuda.is_available():
        print("gpu_l2_prefetch.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.formats import get_format
    from xpullm.kernels.triton import pack_weight, run, select_config, time_cold
    from xpullm.kernels.triton.launch import _prepare_x

    dev = torch.device("cuda")
    printed = []
    for item in args.formats.split(","):
        name, _, gs = item.partition(":")
        for n, k in SHAPES:
            weight = torch.randn(n, k) * 0.02
            tw = pack_weight(get_format(name).quantize(weight, int(gs) if gs else 0), dev)
            dense = weight.to(dev, torch.bfloat16)
            for m in (int(r) for r in args.rows.split(",")):
                x = _prepare_x(torch.randn(m, k, device=dev, dtype=torch.bfloat16), tw)
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                cfg = select_config(tw, m, torch.bfloat16)
                times: dict[str, list[float]] = {"0": [], "1": []}
                for r in range(args.rounds):
                    for flag in ("0", "1") if r % 2 == 0 else ("1", "0"):
                        os.environ["XPULLM_L2_PREFETCH"] = flag
                        times[flag].append(1e3 * time_cold(functools.partial(run, x, tw, cfg, out), dev))
                os.environ.pop("XPULLM_L2_PREFETCH")
                x16 = x[:, :k]
                bf16 = 1e3 * time_cold(functools.partial(F.linear, x16, dense), dev)
                rec = {
                    "fmt": item,
                    "shape": f"{n}x{k}",
                    "m": m,
                    "cfg": str(cfg),
                    "off_us": statistics.median(times["0"]),
                    "on_us": statistics.median(times["1"]),
                    "off_range": [min(times["0"]), max(times["0"])],
                    "on_range": [min(times["1"]), max(times["1"])],
                    "bf16_us": bf16,
                }
                line = json.dumps(rec)
                printed.append(line)
                print(line, flush=True)
    print(summarize(printed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
