"""Batched low-bit matmul on a GPU: the `mma` tiles per row bucket vs dequantize + cuBLAS vs cuBLAS bf16.

For each format and the four Llama-3-8B layer shapes (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down
4096x14336) and each row count M, times (median of 30 calls, L2 flushed before each) every `mma` candidate of
the CUDA table (block_m from the row bucket; `w8a8`: 8-bit per-channel weights x per-token 8-bit activations on
cuBLAS), the dequantize + cuBLAS path, cuBLAS bf16 and, for sym_int4 g128
at M = 1, the packaged table's decode GEMV (`gemv_q8`). The winner's TMA twin (`tma=True`, Hopper+) is timed head to
head after the pool, as the tuner does. Reported per M: the sum over the four shapes (one layer's projections), so
"layer us" x 32 is the projection part of a Llama-3-8B step; and the prefill crossover (mma vs dequant).
Writes the winners as tuning records (`--tuned`), to ship in `kernels/triton/tuned_<device>.json`.

    python3 bench/gpu_batched.py --out $OUT/batched.md --tuned $OUT/tuned_batched.json
        [--formats sym_int4:128,nf4:64] [--rows 1,8,16,32,64,256,1024] [--warm-only]

`--warm-only` runs every candidate once (compiles into the Triton cache) without timing: start several such
processes in parallel (one per format) before the timed run to spend the machine's cores on compiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
LM_HEAD = (128256, 4096)  # tuned and recorded too (`--lm-head`), not part of the layer sums
FORMATS = [("sym_int4", 128), ("asym_int4", 128), ("nf4", 64), ("fp4", 64), ("sym_int8", 0), ("fp8_e4m3", 0)]
ROWS = [1, 8, 16, 32, 64, 256, 1024]


FAMILIES = ("one_dot", "natural", "planes", "fold", "accs", "w4a8", "w8a8", "w8a8_t", "mma")


def _family(cfg) -> str:
    """The tile family of a candidate, for `--drop`."""
    if cfg.path in ("w4a8", "w8a8", "w8a8_t", "mma"):
        return cfg.path
    if cfg.fold:
        return "fold"
    if cfg.accs > 1:
        return "accs"
    if cfg.natural:
        return "natural"
    return "planes" if cfg.plane_dots else "one_dot"


def _shortlist(log: Path, keep: int) -> dict[tuple[str, int], list[dict]]:
    """(format label, rows) -> the `keep` fastest configurations (as dicts) among an `--all` log's timings."""
    timed: dict[tuple[str, int], list[tuple[float, dict]]] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if "us" in rec:
            cfg = {k: v for k, v in rec.items() if k not in ("fmt", "shape", "m", "us")}
            timed.setdefault((rec["fmt"], rec["m"]), []).append((rec["us"], cfg))
    return {key: [cfg for _, cfg in sorted(runs, key=lambda r: r[0])[:keep]] for key, runs in timed.items()}


def _deepened(listed: list[dict], count: int, config: type) -> list:
    """The `count` fastest shortlisted tiles (dicts, fastest first) one and two pipeline stages deeper, as
    `config` objects, leaving out the listed ones and repeats."""
    seen = list(listed)
    out = []
    for c in listed[:count]:
        for extra in (1, 2):
            deeper = {**c, "num_stages": c["num_stages"] + extra}
            if deeper not in seen:
                seen.append(deeper)
                out.append(config(**deeper))
    return out


def summarize(log: Path) -> str:
    """The layer and per-shape tables from a run's printed lines (one line per format, shape and row count, and
    with --all one per candidate): what a run cut short still measured. Layer sums count the shapes present."""
    recs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    w8a8 = {(r["fmt"], r["shape"], r["m"]): r["us"] for r in recs if r.get("path") == "w8a8"}
    layer: dict[tuple[str, int], dict[str, float]] = {}
    lines = [
        f"From {log.name}: per format and row count, sums over the layer shapes measured (us).",
        "",
        "| format | M | shapes | best tile us | GB/s | w8a8 us | dequant+cuBLAS us | bf16 cuBLAS us | best vs bf16 "
        "| best / dequant |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_shape = [
        "",
        "| format | M | shape | best us | GB/s | bf16 us | vs bf16 | dequant+cuBLAS us | tile |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in (r for r in recs if "mma_us" in r):
        acc = layer.setdefault(
            (r["fmt"], r["m"]), dict.fromkeys(("n", "best", "bytes", "w8a8", "dq", "bf16"), 0.0)
        )
        acc["n"] += 1
        acc["best"] += r["mma_us"]
        acc["bytes"] += r["weight_bytes"]
        acc["w8a8"] += w8a8.get((r["fmt"], r["shape"], r["m"]), float("nan"))
        acc["dq"] += r["dequant_us"]
        acc["bf16"] += r["bf16_us"]
        per_shape.append(
            f"| {r['fmt']} | {r['m']} | {r['shape']} | {r['mma_us']:.1f} | {r['weight_bytes'] / r['mma_us'] / 1e3:.0f}"
            f" | {r['bf16_us']:.1f} | {r['bf16_us'] / r['mma_us']:.2f}x | {r['dequant_us']:.1f} | {r['cfg']} |"
        )
    for (fmt, m), a in layer.items():
        lines.append(
            f"| {fmt} | {m} | {a['n']:.0f} | {a['best']:.1f} | {a['bytes'] / a['best'] / 1e3:.0f} | {a['w8a8']:.1f} "
            f"| {a['dq']:.1f} | {a['bf16']:.1f} | {a['bf16'] / a['best']:.2f}x | {a['best'] / a['dq']:.2f} |"
        )
    return "\n".join(lines + per_shape) + "\n"


def records_from_log(log: Path, device: str) -> list[dict]:
    """Tuning records for `device` chosen from an `--all` log's timings under the current switches (what the
    tuner may pick: `switched_on`), each against the shape's dequantize + cuBLAS time; one per format, shape and
    row bucket that a row count measured exactly (batch 1 keeps the GEMVs' tuning). For a run whose switches
    were off when it recorded, or tiles whose GPU tests passed after it."""
    from xpullm.formats import get_format
    from xpullm.kernels.triton import LaunchConfig, pack_weight
    from xpullm.kernels.triton.configs import m_bucket, switched_on

    best: dict[tuple[str, str, int], tuple[float, LaunchConfig]] = {}
    dequant: dict[tuple[str, str, int], float] = {}
    packed: dict[tuple[str, int], object] = {}
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        key = (rec["fmt"], rec["shape"], rec["m"])
        if "dequant_us" in rec:
            dequant[key] = rec["dequant_us"]
            continue
        fmt, gs = _parse_label(rec["fmt"])
        n, k = (int(v) for v in rec["shape"].split("x"))
        # the layout's group words and width depend on the format and K only
        if (rec["fmt"], k) not in packed:
            packed[(rec["fmt"], k)] = pack_weight(get_format(fmt).quantize(torch.zeros(16, k), gs), "cpu")
        tw = replace(packed[(rec["fmt"], k)], n=n)
        cfg = LaunchConfig(**{f: v for f, v in rec.items() if f not in ("fmt", "shape", "m", "us")})
        if switched_on(cfg, tw) and rec["us"] < best.get(key, (float("inf"), None))[0]:
            best[key] = (rec["us"], cfg)
    records = []
    for (label, shape, m), (us, cfg) in best.items():
        if m == 1 or m_bucket(m) != m or (label, shape, m) not in dequant:
            continue
        n, k = (int(v) for v in shape.split("x"))
        tw = replace(packed[(label, k)], n=n)
        winner = cfg if us <= dequant[(label, shape, m)] else LaunchConfig("dequant")
        key = (device, tw.format, tw.group_words, tw.n, tw.kw, m, str(torch.bfloat16))
        records.append({**dict(zip(_FIELDS, key, strict=True)), "config": asdict(winner)})
    return records


def _label(fmt: str, group: int) -> str:
    """A format's label in the printed lines and tables: "sym_int4 g128", "fp8_e4m3 per-row"."""
    return f"{fmt} g{group}" if group else f"{fmt} per-row"


def _parse_label(label: str) -> tuple[str, int]:
    """(format, group size; 0 = one scale per row) back from `_label`."""
    fmt, _, rest = label.partition(" ")
    return fmt, int(rest[1:]) if rest.startswith("g") else 0


def _parse_formats(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        name, _, gs = item.partition(":")
        out.append((name.strip(), int(gs) if gs else 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="markdown report to write")
    ap.add_argument("--tuned", type=Path, default=None, help="tuning records of the winners (JSON)")
    ap.add_argument("--formats", default=None)
    ap.add_argument("--rows", default=",".join(map(str, ROWS)))
    ap.add_argument("--lm-head", action="store_true", help="also tune the 128256x4096 output projection")
    ap.add_argument("--warm-only", action="store_true", help="compile every candidate, time nothing")
    ap.add_argument("--paths", default="mma,mma_t,w8a8", help="families to time (CONFIG_TABLES['cuda'] keys)")
    ap.add_argument(
        "--drop",
        default="",
        help="tile families to leave out, comma-separated: " + ", ".join(FAMILIES) + " (a shorter sweep)",
    )
    ap.add_argument(
        "--shortlist",
        type=Path,
        default=None,
        help="an earlier run's --all output: time only its KEEP fastest candidates per format and row count",
    )
    ap.add_argument(
        "--keep", type=int, default=8, help="candidates kept per format and row count (--shortlist)"
    )
    ap.add_argument(
        "--deepen",
        type=int,
        default=0,
        help="with --shortlist: also time its DEEPEN fastest tiles one and two pipeline stages deeper "
        "(more weight bytes in flight per program than the table's 3-stage pair tiles)",
    )
    ap.add_argument(
        "--summarize",
        type=Path,
        default=None,
        help="no GPU: the tables from an earlier run's printed lines (e.g. a run cut at its time limit); with "
        "--tuned, the tuning records its timings choose under the current switches",
    )
    ap.add_argument(
        "--all", action="store_true", help="print every candidate's time (JSON lines), not only the best"
    )
    ap.add_argument(
        "--device-name",
        default=None,
        help="with --summarize and --tuned: the GPU's name, as torch reports it (the records' device)",
    )
    args = ap.parse_args(argv)
    if args.summarize:
        text = summarize(args.summarize)
        print(text)
        if args.out:
            args.out.write_text(text)
        if args.tuned:
            if not args.device_name:
                ap.error("--summarize with --tuned needs --device-name (the GPU the log was measured on)")
            args.tuned.write_text(json.dumps(records_from_log(args.summarize, args.device_name), indent=1))
        return 0
    if not torch.cuda.is_available():
        print("gpu_batched.py needs a CUDA GPU", file=sys.stderr)
        return 2

    from xpullm.formats import get_format
    from xpullm.kernels.triton import LaunchConfig, pack_weight, run, run_q8, select_config, time_cold
    from xpullm.kernels.triton.configs import (
        CONFIG_TABLES,
        Q8_FORMATS,
        Q8_ROWS_MAX,
        m_bucket,
        mma_block_m,
        switched_on,
        tma_twin,
        valid,
    )
    from xpullm.kernels.triton.launch import _key, _prepare_x, quantize_activations

    dev = torch.device("cuda")
    formats = _parse_formats(args.formats) if args.formats else FORMATS
    row_counts = [int(v) for v in args.rows.split(",")]
    paths = [p for p in args.paths.split(",") if p]
    dropped = {f for f in args.drop.split(",") if f}
    shortlist = _shortlist(args.shortlist, args.keep) if args.shortlist else {}
    if dropped - set(FAMILIES):
        ap.error(
            f"--drop: unknown families {sorted(dropped - set(FAMILIES))}; choose from {', '.join(FAMILIES)}"
        )

    def timed(fn) -> float:
        if args.warm_only:
            fn()
            return float("nan")
        return time_cold(fn, dev) * 1e3  # us

    torch.manual_seed(0)
    results: dict = {}  # (fmt label, m) -> {"mma": us, "dequant": us, "bf16": us, ...}
    records: list[dict] = []
    bf16_us: dict = {}
    shapes: list[
        tuple
    ] = []  # (fmt label, m, "NxK", best us, bf16 us, weight bytes, best config) per layer shape
    for n, k in SHAPES + ([LM_HEAD] if args.lm_head else []):
        in_layer = (n, k) in SHAPES
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        for m in row_counts:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            bf16_us[(n, k, m)] = timed(lambda x=x, w=w: F.linear(x, w))
        for fmt, gs in formats:
            label = _label(fmt, gs)
            tw = pack_weight(get_format(fmt).quantize(w.float(), gs), dev)
            # rows the shortlist lacks take the nearest listed count's tiles
            listed = {m2: cfgs for (lab, m2), cfgs in sorted(shortlist.items()) if lab == label}
            for m in row_counts:
                if listed and m not in listed:  # the nearest listed count's tiles (block_m follows the rows)
                    near = min(listed, key=lambda k, m=m: (abs(k - m), k))
                    listed[m] = [{**c, "block_m": mma_block_m(m_bucket(m))} for c in listed[near]]
                x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
                x2 = _prepare_x(x, tw)
                fresh = {"best": 0.0, "dequant": 0.0, "bf16": 0.0, **{p: 0.0 for p in paths}}
                row = results.setdefault((label, m), fresh) if in_layer else fresh  # lm_head: not summed
                row["bf16"] += bf16_us[(n, k, m)]
                best, best_us = None, float("inf")
                kept, kept_us = None, float("inf")  # the best the tuner may pick as switched
                best_mma = None  # the int8-activation timing below runs the `mma` family only
                deeper = _deepened(listed.get(m, []), args.deepen, LaunchConfig)
                q8_best: dict[str, float] = {}  # gemv_q8 families on int8-fed rows
                for path in paths:
                    path_best = float("inf")
                    for cfg in [*CONFIG_TABLES["cuda"][path], *(c for c in deeper if c.path == path)]:
                        if path == "gemv_q8_multi":  # `gemv_q8_kernel`'s ROWS: up to 8 rows per program
                            cfg = replace(cfg, block_m=min(m_bucket(m), Q8_ROWS_MAX))
                        elif path == "gemv_q8_rows":
                            cfg = replace(cfg, block_m=m_bucket(m))
                        elif cfg.path != "w8a8":
                            cfg = replace(cfg, block_m=mma_block_m(m_bucket(m)))
                        if not valid(cfg, tw, x.dtype) or _family(cfg) in dropped:
                            continue  # e.g. w8a8 for a 4-bit or grouped weight
                        listed_m = listed.get(m, [asdict(cfg)])
                        if cfg.path in ("mma", "mma_t") and asdict(cfg) not in listed_m and cfg not in deeper:
                            continue  # not among an earlier run's fastest (the shortlist lists these families)
                        try:
                            us = timed(lambda cfg=cfg, x2=x2, tw=tw: run(x2, tw, cfg))
                        except Exception as exc:  # a tile this Triton cannot build: say so, time the rest
                            print(
                                f"# {label} {n}x{k} m={m} {cfg}: {type(exc).__name__}: {exc}"[:300],
                                flush=True,
                            )
                            continue
                        if cfg.path == "gemv_q8" and m <= Q8_ROWS_MAX:
                            # the engine's int8-fed rows (`matmul_q8`: the norm / SwiGLU quantize them), the
                            # quantizer launch `run` adds left out
                            act = quantize_activations(x)
                            us_q8 = timed(lambda cfg=cfg, act=act, tw=tw: run_q8(act, tw, cfg))
                            q8_best[path] = min(q8_best.get(path, float("inf")), us_q8)
                        if args.all:
                            print(
                                json.dumps(
                                    {"fmt": label, "shape": f"{n}x{k}", "m": m, "us": us, **asdict(cfg)}
                                )
                            )
                        if path == "mma" and us < path_best:
                            best_mma = cfg
                        path_best = min(path_best, us)
                        if us < best_us or best is None:
                            best, best_us = cfg, us
                        if us < kept_us and switched_on(cfg, tw):
                            kept, kept_us = cfg, us
                    row[path] += path_best  # inf where the family does not take the format
                    if path in q8_best:
                        row[f"{path}_int8"] = row.get(f"{path}_int8", 0.0) + q8_best[path]
                twin = tma_twin(kept, tw, x.dtype) if kept is not None else None
                if twin is not None:  # the winner's TMA twin, head to head, as the tuner times it
                    us = timed(lambda cfg=twin, x2=x2, tw=tw: run(x2, tw, cfg))
                    if args.all:
                        print(
                            json.dumps({"fmt": label, "shape": f"{n}x{k}", "m": m, "us": us, **asdict(twin)})
                        )
                    if us < kept_us:
                        kept, kept_us = twin, us
                    if us < best_us:
                        best, best_us = twin, us
                if best is None:
                    print(f"# {label} {n}x{k} m={m}: no candidate ran", flush=True)
                    continue
                row["best"] += best_us
                row.setdefault("cfgs", []).append(
                    "w8a8 (cuBLAS)"
                    if best.path == "w8a8"
                    else f"{best.path} {best.block_m}x{best.block_n}x{best.block_kb} s{best.split_k} "
                    f"w{best.num_warps} st{best.num_stages}{' planes' if best.plane_dots else ''}"
                    f"{' pairs' if best.pairs else ''}{f' join{best.join}' if best.join > 1 else ''}"
                    f"{' fixup' if best.fixup else ''}{' tq' if best.tile_quantizes else ''}"
                    f"{' tma' if best.tma else ''}"
                )
                dq_us = timed(lambda x2=x2, tw=tw: run(x2, tw, LaunchConfig("dequant")))
                row["dequant"] += dq_us
                if m == 1 and (fmt, gs) == ("sym_int4", 128):  # the shipped batch-1 GEMV, for the step ratio
                    cfg1 = select_config(tw, 1, x.dtype)
                    row["gemv"] = row.get("gemv", 0.0) + timed(lambda c=cfg1, x2=x2, tw=tw: run(x2, tw, c))
                if m > 1 and not args.warm_only:  # batch 1 keeps the GEMVs' tuning
                    winner = kept if not dq_us < kept_us else LaunchConfig("dequant")
                    key = _key(tw, m, x.dtype)
                    records.append({**dict(zip(_FIELDS, key, strict=True)), "config": asdict(winner)})
                if (
                    fmt in Q8_FORMATS and 1 < m <= 8 and best_mma is not None
                ):  # the engine feeds these int8 rows (`matmul_q8`)
                    act = quantize_activations(x)
                    row["mma_q8"] = row.get("mma_q8", 0.0) + timed(
                        lambda act=act, tw=tw, best=best_mma: run_q8(act, tw, best)
                    )
                    # no tuning record: the engine's int8 rows also have the gemv_q8 paths, which this script does
                    # not time (a record of the best `mma` tile forced it over them: 12 ms steps at 8 streams)
                # one line per shape and row count, with everything the tables need: a run cut short keeps it
                print(
                    json.dumps(
                        {
                            "fmt": label,
                            "shape": f"{n}x{k}",
                            "m": m,
                            "mma_us": best_us,
                            "cfg": row["cfgs"][-1],
                            "bf16_us": bf16_us[(n, k, m)],
                            "dequant_us": dq_us,
                            "weight_bytes": tw.nbytes,
                            **{f"{p}_int8_us": v for p, v in q8_best.items()},
                        }
                    ),
                    flush=True,
                )
                if in_layer:
                    shapes.append(
                        (label, m, f"{n}x{k}", best_us, bf16_us[(n, k, m)], tw.nbytes, row["cfgs"][-1])
                    )
        del w
        torch.cuda.empty_cache()
    if args.warm_only:
        return 0
    # the gemv_q8 families' int8-fed timings (`matmul_q8`, the engine's quantized rows), where they ran
    int8_cols = [f"{p}_int8" for p in paths if any(f"{p}_int8" in r for r in results.values())]
    lines = [
        "# Batched low-bit matmul (one Llama-3-8B layer's projections)",
        "",
        f"Device: {torch.cuda.get_device_name(dev)}; torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Sum over qkv 6144x4096, o 4096x4096, "
        "gate_up 28672x4096, down 4096x14336 of the median of 30 L2-flushed calls (us). best tile = the best "
        "candidate of the tile families (`mma`: activations x decoded weight; `mma_t`: decoded weight as the left "
        "operand); crossover = best tile / dequant (< 1: tiles faster).",
        "",
        "| format | M | best tile us | "
        + " | ".join(f"{p} us" for p in [*paths, *int8_cols])
        + " | mma (int8 act) us | batch-1 GEMV us | dequant+cuBLAS us | bf16 cuBLAS us | "
        "best vs bf16 | best / dequant | tiles (per shape) |",
        "|---|---|---|" + "---|" * (len(paths) + len(int8_cols)) + "---|---|---|---|---|---|---|",
    ]
    for (label, m), r in results.items():
        lines.append(
            f"| {label} | {m} | {r['best']:.1f} | "
            + "".join(f"{r.get(p, float('nan')):.1f} | " for p in [*paths, *int8_cols])
            + f"{r.get('mma_q8', float('nan')):.1f} | "
            f"{r.get('gemv', float('nan')):.1f} | {r['dequant']:.1f} | "
            f"{r['bf16']:.1f} | {r['bf16'] / r['best']:.2f}x | "
            f"{r['best'] / r['dequant']:.2f} | {'; '.join(r['cfgs'])} |"
        )
    lines += [
        "",
        "Per shape (the weight's bytes - codes and scales - over the best tile's time: the bandwidth it reaches; "
        "bf16 cuBLAS reads 2 bytes per weight):",
        "",
        "| format | M | shape | best us | GB/s | bf16 us | bf16 GB/s | vs bf16 | tile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m, shape, us, b_us, nbytes, cfg in shapes:
        n, k = (int(v) for v in shape.split("x"))
        lines.append(
            f"| {label} | {m} | {shape} | {us:.1f} | {nbytes / us / 1e3:.0f} | {b_us:.1f} | "
            f"{2 * n * k / b_us / 1e3:.0f} | {b_us / us:.2f}x | {cfg} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.tuned:
        args.tuned.write_text(json.dumps(records, indent=1))
    return 0


_FIELDS = ("device", "format", "group_words", "n", "kw", "m_bucket", "dtype")

if __name__ == "__main__":
    raise SystemExit(main())
