"""One batched low-bit matmul on one layer shape, run a few times: the program to put under Nsight Compute.

The tile is what the tuner picks for the shape (the shipped table's record where one exists), or `--config` (a
JSON `LaunchConfig`). Prints the tile and its median time (CUDA events, L2 flushed before each call), then runs
it `--calls` more times; `--profile` skips the timing, so the profiler's launch count starts at those calls:

    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        --section SchedulerStats --section ComputeWorkloadAnalysis -k regex:mma_t --launch-skip 2 \\
        --launch-count 1 python3 bench/gpu_tile_profile.py --profile --format sym_int4:128 --shape 28672x4096
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--format", default="sym_int4:128", help="FORMAT[:GROUP]")
    ap.add_argument("--shape", default="28672x4096", help="NxK of the weight")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--config", default=None, help="a LaunchConfig as JSON (default: the tuner's choice)")
    ap.add_argument("--calls", type=int, default=5, help="untimed calls after the timing, for the profiler")
    ap.add_argument("--profile", action="store_true", help="no timing: only the untimed calls")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_tile_profile.py needs a CUDA GPU", file=sys.stderr)
        return 2

    from xpullm.formats import get_format
    from xpullm.kernels.triton import LaunchConfig, pack_weight, run, select_config, time_cold
    from xpullm.kernels.triton.launch import _prepare_x

    name, _, group = args.format.partition(":")
    n, k = (int(v) for v in args.shape.split("x"))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    w = torch.randn(n, k, device=dev) * 0.02
    tw = pack_weight(get_format(name).quantize(w, int(group) if group else 0), dev)
    x = _prepare_x(torch.randn(args.rows, k, device=dev, dtype=torch.bfloat16), tw)
    cfg = LaunchConfig(**json.loads(args.config)) if args.config else select_config(tw, args.rows, x.dtype)
    us = float("nan") if args.profile else time_cold(lambda: run(x, tw, cfg), dev) * 1e3
    print(
        json.dumps(
            {"format": args.format, "shape": args.shape, "rows": args.rows, "us": us, "config": str(cfg)}
        )
    )
    for _ in range(args.calls):
        run(x, tw, cfg)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
