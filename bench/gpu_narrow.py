"""Narrow `mma.sync` tiles against the tuned tables' tiles, per Llama-3-8B layer shape, on a GPU (issue 29).

Every batched tile of the tables runs on four or eight warps, which Triton compiles to Hopper's warpgroup `wgmma`:
with the decoded weight as the register operand it waits for each dot to drain before the next one. Under four
warps Triton issues per-warp `mma.sync` dots instead, and many small programs share an SM as the one-row GEMV's
do. `configs.NARROW_MMA_T` (4-bit pair formats) and `configs.NARROW_W8A8_T` (8-bit weights x 8-bit activation
blocks) list such tiles; at one row of nf4 / fp4 the GEMV tiles that decode the codebook by byte permutes join them. For each format, shape and row count this times the tile the tuned table picks
(`select_config`; run with XPULLM_TRITON_AUTOTUNE=0 to time exactly the shipped records) against every narrow
candidate once, then the table's tile against the `--keep` fastest in alternating rounds (median of 30
L2-flushed calls each), beside bf16 cuBLAS; the narrow winner's output is checked against the table tile's. For
nf4 / fp4 the narrow tiles decode four codes per byte-permute gather (`quads`), and the table's own tile is timed
with that decode too (`table_quads_us`: the same tile and values, the decode alone differs).

    # compile in parallel first (one process per shard), then time
    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_narrow.py --warm-only --shard 3/14
    XPULLM_TRITON_AUTOTUNE=0 bash bench/gpu_run.sh py bench/gpu_narrow.py [--formats sym_int4:128,nf4:64,fp8_e4m3]
        [--rows 8,16,32] [--rounds 3] [--tuned narrow.json]

`--tuned` writes a tuning record for every shape whose narrow winner beat the table's tile by `--margin` or more
in every round (load it with XPULLM_TRITON_TUNED to run the engine on it).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))  # run with -P: the script's folder is not on sys.path

from gpu_layer_cases import layer_cases

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]


def deep_pool() -> list:
    """Around session 17's winners (two warps, 16-64 rows): deeper pipelines, wider K steps and up to 8 K splits -
    more weight bytes in flight per SM, which the tall-K shapes (4096 x 14336) lacked at ~1 TB/s. Split counts are
    runtime values, so only the tile shapes and stage counts compile."""
    from xpullm.kernels.triton.configs import pair_tiles

    shapes = ((32, 2, 4, 4), (64, 2, 4, 2), (32, 2, 8, 1), (32, 2, 8, 2), (64, 2, 8, 2), (64, 4, 4, 4), (128, 4, 4, 2))  # fmt: skip
    return pair_tiles(shapes, splits=(1, 2, 4, 8), stages=(3, 4, 5, 6))


# The 4-bit candidates: configs.NARROW_MMA_T, `deep_pool`, or the CUDA C++ tiles (`cuda_mma`: run with
# XPULLM_CUDA_KERNELS=1, else none of them is valid).
POOLS = ("narrow", "deep", "cuda")


def candidates(tw, m: int, pool_name: str = "narrow") -> list:
    """The narrow tiles that can run weight `tw` for `m` bf16 rows, with the row bucket's M tile; for one row of
    a codebook format (nf4, fp4) also the GEMV tiles that decode the levels by byte permutes (`pairs`)."""
    from xpullm.kernels.triton.configs import (
        CODEBOOK_FORMATS,
        CONFIG_TABLES,
        GEMV_PERMUTES,
        NARROW_MMA_T,
        NARROW_W8A8_T,
        m_bucket,
        mma_block_m,
        valid,
    )

    block_m = mma_block_m(m_bucket(m))
    if pool_name == "cuda":  # `cuda_mma` (4-bit formats): its M tile is the row bucket itself
        pool = [replace(c, block_m=m_bucket(m)) for c in CONFIG_TABLES["cuda"]["cuda_mma"]]
        return [c for c in pool if valid(c, tw, torch.bfloat16)]
    if tw.format in ("fp8_e4m3", "sym_int8"):
        pool = NARROW_W8A8_T
    else:
        pool = deep_pool() if pool_name == "deep" else NARROW_MMA_T
    quads = tw.format in CODEBOOK_FORMATS  # nf4 / fp4 tiles decode four codes per gather
    pool = [replace(c, block_m=block_m, quads=quads and c.pairs) for c in pool]
    if m == 1:
        pool += GEMV_PERMUTES
    return [c for c in pool if valid(c, tw, torch.bfloat16)]


def _table(layer: dict[tuple[str, int], list[float]]) -> str:
    lines = [
        "| format | rows | shapes | table tiles (us) | with narrow winners (us) | ratio | bf16 cuBLAS (us) "
        "| table vs bf16 | with narrow vs bf16 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (fmt, m), (cnt, table_us, best_us, bf16_us) in layer.items():
        lines.append(
            f"| {fmt} | {m} | {cnt:.0f} | {table_us:.1f} | {best_us:.1f} | {best_us / table_us:.3f} | "
            f"{bf16_us:.1f} | {bf16_us / table_us:.2f}x | {bf16_us / best_us:.2f}x |"
        )
    return "\n".join(lines)


def _layers(recs: list[dict]) -> str:
    """The layer table: per format and row count, sums over the shapes measured."""
    layer: dict[tuple[str, int], list[float]] = {}
    for r in recs:
        acc = layer.setdefault((r["fmt"], r["m"]), [0.0, 0.0, 0.0, 0.0])
        for i, v in enumerate((1.0, r["table_us"], min(r["table_us"], r["narrow_us"]), r["bf16_us"])):
            acc[i] += v
    return _table(layer)


def summarize(text: str) -> str:
    """The layer table from a run's printed JSON lines."""
    return _layers([json.loads(line) for line in text.splitlines() if line.startswith("{")])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="sym_int4:128,nf4:64,fp8_e4m3")
    ap.add_argument("--rows", default="8,16,32")
    ap.add_argument(
        "--shapes",
        default=",".join(f"{n}x{k}" for n, k in SHAPES),
        help="NxK weight shapes (e.g. + 128256x4096)",
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the table tile vs the kept ones"
    )
    ap.add_argument("--keep", type=int, default=3, help="narrow tiles kept after the first round")
    ap.add_argument("--pool", choices=POOLS, default="narrow", help="the 4-bit candidates timed")
    ap.add_argument(
        "--warm-only", action="store_true", help="compile (run once) this shard's tiles, time nothing"
    )
    ap.add_argument(
        "--shard", default="0/1", help="I/N: with --warm-only, every N-th candidate from the I-th"
    )
    ap.add_argument("--tuned", default=None, help="write the narrow winners as tuning records (JSON) here")
    ap.add_argument(
        "--margin", type=float, default=0.03, help="how much faster a winner must be in every round"
    )
    ap.add_argument(
        "--summarize", default=None, help="no GPU: the layer table from an earlier run's printed lines"
    )
    args = ap.parse_args()
    if args.summarize:
        print(summarize(Path(args.summarize).read_text()))
        return 0
    if not torch.cuda.is_available():
        print("gpu_narrow.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from xpullm.kernels.triton import run, select_config, time_cold
    from xpullm.kernels.triton.configs import m_bucket, valid
    from xpullm.kernels.triton.launch import _FIELDS, _key

    dev = torch.device("cuda")
    shard, shards = (int(v) for v in args.shard.split("/"))
    rows, records = [], []
    for item, n, k, m, tw, dense, x, out in layer_cases(args.formats, args.shapes, args.rows, dev):
        table = select_config(tw, m, torch.bfloat16)
        pool = candidates(tw, m, args.pool)
        twin = replace(table, quads=True)  # a codebook pair tile with the quad decode
        twins = [twin] if valid(twin, tw, torch.bfloat16) and not table.quads else []
        if args.warm_only:
            for i, cfg in enumerate([table, *twins, *pool]):
                if i % shards == shard:
                    run(x, tw, cfg, out)
            torch.cuda.synchronize()
            continue
        timed = functools.partial(time_cold, device=dev)
        first = {c: 1e3 * timed(functools.partial(run, x, tw, c, out)) for c in pool}
        # the table's own tile (a tuned record may be one of the pool's) is timed once a round
        kept = [c for c in sorted(pool, key=first.__getitem__) if c != table][: args.keep] + twins
        times: dict = {c: [] for c in [table, *kept]}
        for r in range(args.rounds):
            order = [table, *kept] if r % 2 == 0 else [*kept[::-1], table]
            for c in order:
                times[c].append(1e3 * timed(functools.partial(run, x, tw, c, out)))
        med = {c: statistics.median(v) for c, v in times.items()}
        best = min(kept, key=med.__getitem__)
        ref = run(x, tw, table).float()
        got = run(x, tw, best).float()
        err = ((ref - got).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
        bf16 = 1e3 * timed(functools.partial(F.linear, x[:, :k], dense))
        wins_every_round = all(
            b < (1 - args.margin) * t for b, t in zip(times[best], times[table], strict=True)
        )
        rec = {
            "fmt": item,
            "shape": f"{n}x{k}",
            "m": m,
            "table_cfg": str(table),
            "narrow_cfg": str(best),
            "table_us": med[table],
            "narrow_us": med[best],
            "table_range": [min(times[table]), max(times[table])],
            "narrow_range": [min(times[best]), max(times[best])],
            "first_round_best5": sorted(first.values())[:5],
            "table_quads_us": med.get(twin),
            "table_quads_range": [min(times[twin]), max(times[twin])] if twin in times else None,
            "rel_diff": err,
            "bf16_us": bf16,
            "wins": wins_every_round,
        }
        print(json.dumps(rec), flush=True)
        rows.append(rec)
        if wins_every_round and m_bucket(m) == m:
            key = dict(zip(_FIELDS, _key(tw, m, torch.bfloat16), strict=True))
            records.append({**key, "config": asdict(best)})
    if args.warm_only:
        return 0
    print(_layers(rows))
    if args.tuned:
        with open(args.tuned, "w") as f:
            json.dump(records, f, indent=1)
        print(f"wrote {len(records)} records to {args.tuned}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
