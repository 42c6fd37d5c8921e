"""CPU engines side by side, medians of interleaved rounds with their ranges: decode tok/s, first token, peak RSS.

Each engine runs in its own subprocess through `cpu_decode.py --one` (the same code paths as that script), rounds
interleaved (A B C, A B C, ...) so a shared machine's load hits every engine alike. Prints a markdown table
(ratios against llama.cpp within the run); nothing is written to docs.

    .venv/bin/python -P bench/cpu_xeon.py --threads 1 --prompt-tokens 128 --rounds 3 \\
        --engines llama.cpp,xpullm:sym_int4,xpullm:nf4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

DECODE = Path(__file__).with_name("cpu_decode.py")
ENGINES = (
    "llama.cpp,xpullm:sym_int4,xpullm:asym_int4,xpullm:nf4,xpullm:fp4,xpullm:sym_int8,xpullm:fp8_e4m3,"
    "xpullm:fp8_e5m2,transformers:bf16"
)


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _cell(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    return f"{mid:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})" if len(values) > 1 else f"{mid:{fmt}}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--engines", default=ENGINES)
    args = ap.parse_args()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONWARNINGS": "ignore",
        "PYTHONSAFEPATH": "1",
    }
    runs: dict[str, list[dict]] = {}
    engines = args.engines.split(",")
    for r in range(args.rounds):
        for engine in engines:
            cmd = [sys.executable, "-P", str(DECODE), "--one", engine, "--threads", str(args.threads)]
            cmd += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{engine} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"round {r} {engine}: {res}", file=sys.stderr, flush=True)
            runs.setdefault(engine, []).append(res)
    ref = statistics.median(
        x["decode_tok_s"] for x in runs.get("llama.cpp", [{"decode_tok_s": float("nan")}])
    )
    ref_ft = statistics.median(
        x["first_token_s"] for x in runs.get("llama.cpp", [{"first_token_s": float("nan")}])
    )
    print(f"\n{_cpu_name()}, {os.cpu_count()} vCPU, {args.threads} thread(s); prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new; median (min-max) of {args.rounds} interleaved rounds\n")  # fmt: skip
    print("| engine | decode tok/s | vs llama.cpp | first token (s) | llama.cpp / it | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for engine, res in sorted(
        runs.items(), key=lambda kv: -statistics.median(x["decode_tok_s"] for x in kv[1])
    ):
        tok = [x["decode_tok_s"] for x in res]
        ft = [x["first_token_s"] for x in res]
        rss = [x["peak_rss_mib"] for x in res]
        print(f"| {engine} | {_cell(tok, '.1f')} | {statistics.median(tok) / ref:.2f}x | {_cell(ft, '.3f')} | "
              f"{ref_ft / statistics.median(ft):.2f}x | {statistics.median(rss):.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
