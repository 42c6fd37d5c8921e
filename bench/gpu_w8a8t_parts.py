"""The `w8a8_t` path's two launches timed apart on a GPU: the activation quantizer, the tile alone, and both.

Per 8-bit format, Llama-3-8B layer shape and row count: median of 30 L2-flushed calls (`time_cold`) of
`w8a8_tile.quantize`, of the tile over codes quantized beforehand (`launch.w8a8_t_launch`), and of the whole
`run`; the tile's configuration is the tuning record of a sweep (`--tuned`, e.g. gpu_batched.py's records) or a
default 16-64 x 64 tile with 4 K splits. `tile GB/s`: the weight's bytes over the tile's time.

    bash bench/gpu_run.sh py bench/gpu_w8a8t_parts.py [--tuned bench/results/tuned_w8a8t_h100_2026-12-06.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tuned", default=None, help="tuning records (JSON) whose w8a8_t tiles to time")
    ap.add_argument("--formats", default="fp8_e4m3,sym_int8")
    ap.add_argument("--rows", default="8,16,32")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_w8a8t_parts.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.formats import get_format
    from xpullm.kernels.triton import LaunchConfig, pack_weight, run, time_cold, w8a8_tile
    from xpullm.kernels.triton.configs import m_bucket, mma_block_m
    from xpullm.kernels.triton.launch import _prepare_x, w8a8_t_launch

    dev = torch.device("cuda")
    records = json.loads(Path(args.tuned).read_text()) if args.tuned else []
    for fmt in args.formats.split(","):
        for n, k in SHAPES:
            tw = pack_weight(get_format(fmt).quantize(torch.randn(n, k) * 0.02, 0), dev)
            for m in (int(r) for r in args.rows.split(",")):
                found = [
                    r["config"]
                    for r in records
                    if (r["format"], r["n"], r["kw"], r["m_bucket"]) == (fmt, n, tw.kw, m_bucket(m))
                    and r["config"]["path"] == "w8a8_t"
                ]
                cfg = (
                    LaunchConfig(**found[0])
                    if found
                    else LaunchConfig("w8a8_t", mma_block_m(m_bucket(m)), 64, 16, 4, 4, 3, fixup=True)
                )
                x = _prepare_x(torch.randn(m, k, device=dev, dtype=torch.bfloat16), tw)
                out = torch.empty((m, n), dtype=torch.bfloat16, device=dev)
                xq, xs = (x, tw.scales) if cfg.tile_quantizes else w8a8_tile.quantize(x, tw)
                row = {
                    "fmt": fmt,
                    "shape": f"{n}x{k}",
                    "m": m,
                    "quant_us": time_cold(lambda x=x, tw=tw: w8a8_tile.quantize(x, tw), dev) * 1e3,
                    "tile_us": time_cold(
                        lambda xq=xq, xs=xs, tw=tw, cfg=cfg, out=out: w8a8_t_launch(xq, xs, tw, cfg, out), dev
                    )
                    * 1e3,
                    "both_us": time_cold(lambda x=x, tw=tw, cfg=cfg: run(x, tw, cfg), dev) * 1e3,
                    "cfg": str(cfg),
                }
                row["tile_gbs"] = tw.words.numel() * 4 / row["tile_us"] / 1e3
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
