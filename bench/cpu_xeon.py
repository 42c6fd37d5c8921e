"""CPU engines side by side, medians of interleaved rounds with their ranges: decode tok/s, first token, peak RSS.

Each engine runs in its own subprocess through `cpu_decode.py --one` (the same code paths as that script), rounds
interleaved (A B C, A B C, ...) so a shared machine's load hits every engine alike; peak RSS is the child's own
(wait4). `ipex-llm:FMT` runs IPEX-LLM 2.2.0 in its own virtualenv through `../shared/bench/ipex_llm_cpu_peer.py`
(set up as that file says, with `prepare ... $PEER/model<prompt tokens>` for each prompt length). `before:ENGINE`
runs ENGINE under `--before-python` (another checkout's venv, e.g. main's), so a change is measured against the
code before it in the same interleaved rounds. `xpullm-plain:FMT` decodes one token per step (speculation off, as
llama.cpp runs); `xpullm:FMT` is the engine's default (prompt-lookup drafts, which this benchmark's repetitive
prompt makes hit often). Prints a markdown table (ratios against llama.cpp within the run); nothing is written to
docs.

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
import tempfile
from pathlib import Path

DECODE = Path(__file__).with_name("cpu_decode.py")
# The shared peer script sits beside the checkout (../shared) or beside the worktrees' parent (../../shared).
PEER_SCRIPT = next(
    (p / "shared" / "bench" / "ipex_llm_cpu_peer.py" for p in Path(__file__).resolve().parents[1:4]
     if (p / "shared" / "bench" / "ipex_llm_cpu_peer.py").exists()),
    Path(__file__).resolve().parents[2] / "shared" / "bench" / "ipex_llm_cpu_peer.py",
)  # fmt: skip
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


def _command(engine: str, args: argparse.Namespace) -> list[str]:
    kind, _, fmt = engine.partition(":")
    if kind == "ipex-llm":
        peer = Path(args.peer).expanduser()
        return [str(peer / "venv" / "bin" / "python"), str(Path(args.peer_script).resolve()), "run",
                str(peer / f"model{args.prompt_tokens}"), "--low-bit", fmt, "--threads", str(args.threads),
                "--new-tokens", str(args.new_tokens), "--rounds", "1"]  # fmt: skip
    python = sys.executable
    if kind == "before":  # `before:ENGINE`: ENGINE under another checkout's interpreter (its own xpullm)
        python, engine = args.before_python, fmt
    cmd = [python, "-P", str(DECODE), "--one", engine, "--threads", str(args.threads)]
    return [*cmd, "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    """(exit status, stdout, stderr tail, the child's peak RSS in MiB)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=tempfile.gettempdir())
        out = proc.stdout.read().decode()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, out, err.read().decode()[-1500:], usage.ru_maxrss / 1024


def _result(engine: str, out: str) -> dict:
    if engine.startswith("ipex-llm:"):
        return json.loads(next(ln for ln in out.splitlines() if ln.startswith("RESULT "))[7:])
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--engines", default=ENGINES)
    ap.add_argument("--peer", default="~/.cache/ipex-llm-peer", help="IPEX-LLM peer folder (venv, model<N>)")
    ap.add_argument("--peer-script", default=str(PEER_SCRIPT))
    ap.add_argument(
        "--before-python",
        default=None,
        help="interpreter of another checkout's venv: engines named before:ENGINE run this script's ENGINE with "
        "it (that checkout's xpullm), for before/after rows in one interleaved run",
    )
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
            code, out, err, rss = _run(_command(engine, args), env)
            if code != 0:
                print(f"{engine} failed:\n{err}", file=sys.stderr)
                continue
            res = {**_result(engine, out), "peak_rss_mib": rss}
            print(f"round {r} {engine}: {res}", file=sys.stderr, flush=True)
            runs.setdefault(engine, []).append(res)
    ref = statistics.median(
        x["decode_tok_s"] for x in runs.get("llama.cpp", [{"decode_tok_s": float("nan")}])
    )
    ref_ft = statistics.median(
        x["first_token_s"] for x in runs.get("llama.cpp", [{"first_token_s": float("nan")}])
    )
    print(f"\n{_cpu_name()}, {os.cpu_count()} vCPU, {args.threads} thread(s); prompt {args.prompt_tokens} tokens, "
          f"{args.new_tokens} new; median (min-max) of {args.rounds} interleaved rounds; "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")  # fmt: skip
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
