"""Run chosen CUDA low-bit kernel launches for a profiler (issue 29): one build, a few (shape, rows, tile) cases.

Each case runs twice (the first loads the weight); under Nsight Compute, profile the kernels by name, as the
`profile` step of bench/cuda_mma_session.sh does (PROFILE_CASES):

    ncu --clock-control none -k regex:lowbit_mma --section SpeedOfLight ... \
        bash bench/gpu_run.sh py bench/gpu_cuda_profile.py [--variant old=v/old.so.gz] --cases 28672x4096:32:1:8:1

A case is NxK:ROWS:TILES:WARPS:SPLIT (`--fmt`: the weight format, NAME or NAME:GROUP).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

from gpu_cuda_builds import load_build
from gpu_layer_cases import layer_cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--variant", default=None, help="NAME=PATH of a build (.so or .so.gz); default: the cached one"
    )
    ap.add_argument("--fmt", default="sym_int4:128")
    ap.add_argument("--cases", required=True, help="comma-separated NxK:ROWS:TILES:WARPS:SPLIT")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_cuda_profile.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.kernels import cuda
    from xpullm.kernels.triton import run
    from xpullm.kernels.triton.configs import CONFIG_TABLES

    if args.variant:
        lib = load_build(Path(args.variant.partition("=")[2]), Path(tempfile.mkdtemp()))
        cuda._library = lambda arch: lib
    dev = torch.device("cuda")
    base = CONFIG_TABLES["cuda"]["cuda_mma"][0]
    for case in args.cases.split(","):
        shape, m, tiles, warps, split = case.split(":")
        layer = next(layer_cases(args.fmt, shape, m, dev))
        cfg = replace(base, block_m=int(m), tiles=int(tiles), num_warps=int(warps), split_k=int(split))
        cfg = replace(cfg, block_n=16 * cfg.tiles * cfg.num_warps)
        for _ in range(2):
            run(layer.x, layer.tw, cfg)
        torch.cuda.synchronize()
        print(case, cfg, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
