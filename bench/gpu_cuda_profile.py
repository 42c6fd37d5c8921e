"""Run chosen CUDA low-bit kernel launches for a profiler (issue 29): one build, a few (shape, rows, tile) cases.

Each case runs twice (the first loads the weight); under Nsight Compute, profile the kernels by name:

    ncu --clock-control none -k regex:lowbit_mma --launch-skip 0 --section SpeedOfLight ... \
        python3 bench/gpu_cuda_profile.py --variant old=v/old.so.gz --cases 28672x4096:32:1:8:1

A case is NxK:ROWS:TILES:WARPS:SPLIT (`--fmt`: the weight format and group, as in gpu_narrow.py).
"""

from __future__ import annotations

import argparse
import ctypes
import gzip
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch


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
    from xpullm.formats import get_format
    from xpullm.kernels import cuda
    from xpullm.kernels.triton import pack_weight, run
    from xpullm.kernels.triton.configs import CONFIG_TABLES
    from xpullm.kernels.triton.launch import _prepare_x

    if args.variant:
        path = Path(args.variant.partition("=")[2])
        if path.suffix == ".gz":
            plain = Path(tempfile.mkdtemp()) / path.stem
            plain.write_bytes(gzip.decompress(path.read_bytes()))
            path = plain
        lib = cuda.bind(ctypes.CDLL(str(path)))
        cuda._library = lambda arch: lib
    dev = torch.device("cuda")
    name, _, gs = args.fmt.partition(":")
    base = CONFIG_TABLES["cuda"]["cuda_mma"][0]
    for case in args.cases.split(","):
        shape, m, tiles, warps, split = case.split(":")
        n, k = (int(v) for v in shape.split("x"))
        weight = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)) * 0.02
        tw = pack_weight(get_format(name).quantize(weight, int(gs) if gs else 0), dev)
        x = _prepare_x(torch.randn(int(m), k, device=dev, dtype=torch.bfloat16), tw)
        cfg = replace(base, block_m=int(m), tiles=int(tiles), num_warps=int(warps), split_k=int(split))
        cfg = replace(cfg, block_n=16 * cfg.tiles * cfg.num_warps)
        for _ in range(2):
            run(x, tw, cfg)
        torch.cuda.synchronize()
        print(case, cfg, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
