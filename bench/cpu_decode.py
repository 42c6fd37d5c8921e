"""CPU decode speed: xpullm (each format) vs transformers eager (fp32, bf16) vs llama.cpp (xllamacpp), same GGUF.

Every engine runs in its own subprocess (clean peak RSS, same thread count), batch 1, greedy, a 128-token prompt
and 128 generated tokens. Rounds are interleaved (A B C, A B C, ...) so load from other processes on a shared
machine hits every engine alike; the best round per engine is reported. Writes docs/benchmarks-engine.md.

    .venv/bin/python bench/cpu_decode.py --threads 2 --rounds 3 [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks-engine.md"
PLOT = ROOT / "docs" / "img" / "bench-cpu-decode.png"
ENGINES = (
    "llama.cpp",
    "xpullm:asym_int4",
    "xpullm:sym_int4",
    "xpullm:sym_int8",
    "transformers:bf16",
    "transformers:fp32",
)


def _prompt_ids(tokenizer, n: int) -> list[int]:
    base = "The history of science is the study of how people came to understand the natural world. "
    return tokenizer(base * (n // 8 + 2), add_special_tokens=False)["input_ids"][:n]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_xpullm(fmt: str, prompt_n: int, new_n: int, threads: int, speculative: bool = True) -> dict:
    import torch

    torch.set_num_threads(threads)
    from xpullm.engine import LLM

    # The engine's own loader: the packaged Q4_1 GGUF converted once to `fmt` (cached), as a user gets it.
    llm = LLM(low_bit=fmt)
    prompt = llm.tokenizer.decode(_prompt_ids(llm.tokenizer, prompt_n))
    # Warm up on other text: the measured prompt must not hit the engine's prefix cache (llama.cpp's run sets
    # cache_prompt off), or its first-token time would skip the prefill.
    llm.generate("A short request about something else, to warm the engine up.", max_new_tokens=8)
    # Never stop early: a stop set is not needed; EOS could end it, so report the count actually generated.
    out = llm.generate(prompt, max_new_tokens=new_n, speculative=speculative)
    return {
        "first_token_s": out.first_token_s,
        "decode_tok_s": out.decode_tok_s,
        "new_tokens": out.completion_tokens,
        "prompt_tokens": out.prompt_tokens,
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_transformers(dtype_name: str, prompt_n: int, new_n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from xpullm.loading import AutoModelForCausalLM, load_tokenizer
    from xpullm.models import default_llm_gguf

    gguf = str(default_llm_gguf())
    # Dense weights (the GGUF dequantized) run by transformers' own eager generate loop.
    model = AutoModelForCausalLM.from_pretrained(
        gguf, load_in_low_bit=dtype_name, device="cpu", progress=False
    )
    tok = load_tokenizer(gguf)
    ids = torch.tensor([_prompt_ids(tok, prompt_n)])
    model.generate(ids, max_new_tokens=4, do_sample=False)
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=1, do_sample=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new_n, min_new_tokens=new_n, do_sample=False)
    total = time.perf_counter() - t0
    n = out.shape[1] - ids.shape[1]
    return {
        "first_token_s": first,
        "decode_tok_s": (n - 1) / max(total - first, 1e-9),
        "new_tokens": n,
        "prompt_tokens": ids.shape[1],
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_llamacpp(prompt_n: int, new_n: int, threads: int) -> dict:
    import xllamacpp as xlc

    from xpullm.loading import load_tokenizer
    from xpullm.models import default_llm_gguf

    gguf = str(default_llm_gguf())
    tok = load_tokenizer(gguf)
    params = xlc.CommonParams()
    params.model.path = gguf
    params.n_ctx = prompt_n + new_n + 16
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    request = {
        "prompt": _prompt_ids(tok, prompt_n),
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
    }
    server.handle_completions({**request, "n_predict": 8})
    res = server.handle_completions({**request, "n_predict": new_n})
    res = json.loads(res) if isinstance(res, str) else res
    t = res["timings"]
    return {
        "first_token_s": (t["prompt_ms"] + t["predicted_per_token_ms"]) / 1000,
        "decode_tok_s": t["predicted_per_second"],
        "new_tokens": t["predicted_n"],
        "prompt_tokens": t["prompt_n"],
        "peak_rss_mib": _peak_rss_mib(),
    }


def run_one(engine: str, prompt_n: int, new_n: int, threads: int) -> dict:
    kind, _, fmt = engine.partition(":")
    if kind == "llama.cpp":
        return run_llamacpp(prompt_n, new_n, threads)
    if kind == "transformers":
        return run_transformers(fmt, prompt_n, new_n, threads)
    # `xpullm-plain:FMT`: one token per step (speculation off), like llama.cpp; `xpullm:FMT`: the engine's default,
    # which drafts by prompt lookup (this benchmark's repetitive prompt makes most drafts hit).
    return run_xpullm(fmt, prompt_n, new_n, threads, speculative=kind != "xpullm-plain")


def profile_step(threads: int, steps: int = 64) -> str:
    """Where one decode step's time goes in xpullm (default model), as a markdown table of the top ops."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(threads)
    from xpullm.engine import LLM
    from xpullm.kernels import cpu_native

    # Native calls are not ATen ops: name them for the profiler (before the decoder binds its norm function).
    def named(name: str, fn):
        def run(*args, **kwargs):
            with record_function(name):
                return fn(*args, **kwargs)

        return run

    cpu_native.rms_norm = named("xpullm::rms_norm (native)", cpu_native.rms_norm)
    cpu_native.decode_attention = named("xpullm::decode_attention (native)", cpu_native.decode_attention)
    kernel = cpu_native.CpuNativeInt4Kernel
    kernel.matmul = named("xpullm::int4_linear (native)", kernel.matmul)
    llm = LLM()
    llm.generate("warm up", max_new_tokens=2)
    dec, tok = llm._decoder, llm.tokenizer
    ids = torch.tensor([_prompt_ids(tok, 128)])
    dec.start(ids, torch.zeros(1, dtype=torch.long), 128 + steps + 8)
    nxt = torch.tensor([42])
    for _ in range(4):
        dec.step(nxt)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            dec.step(nxt)
    wall = (time.perf_counter() - t0) / steps * 1e3
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    lines = [
        f"Profiled decode step (under the profiler): {wall:.2f} ms/token; self CPU time by op:",
        "",
        "| op | calls/token | self ms/token | share |",
        "|---|---:|---:|---:|",
    ]
    for e in rows:
        lines.append(
            f"| `{e.key}` | {e.count / steps:.0f} | {e.self_cpu_time_total / steps / 1e3:.3f} | "
            f"{100 * e.self_cpu_time_total / total:.1f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--profile", action="store_true", help="add a per-op profile of xpullm's decode step")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child-process mode
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.prompt_tokens, args.new_tokens, args.threads)), flush=True)
        # Exit at once: the engine's daemon thread may still be finishing its last step inside torch, and an
        # interpreter shutdown under it aborts the process ("terminate called without an active exception").
        os._exit(0)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    best: dict[str, dict] = {}
    engines = args.engines.split(",")
    for r in range(args.rounds):
        for engine in engines:
            cmd = [sys.executable, __file__, "--one", engine, "--threads", str(args.threads)]
            cmd += ["--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{engine} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"round {r} {engine}: {res}", flush=True)
            if engine not in best or res["decode_tok_s"] > best[engine]["decode_tok_s"]:
                best[engine] = res
    write_doc(best, args, profile_step(args.threads) if args.profile else "")


def plot(best: dict[str, dict], threads: int) -> bool:
    """Bar chart of decode tok/s (and first-token latency) per engine into PLOT; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(best.items(), key=lambda kv: kv[1]["decode_tok_s"])
    names = [name for name, _ in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.4), sharey=True)
    colours = ["#1f77b4" if n.startswith("xpullm") else "#7f7f7f" for n in names]
    left.barh(names, [r["decode_tok_s"] for _, r in rows], color=colours)
    left.set_xlabel("decode tokens/s (higher is better)")
    right.barh(names, [r["first_token_s"] for _, r in rows], color=colours)
    right.set_xlabel("first token, s (lower is better)")
    fig.suptitle(f"SmolLM2-135M, batch 1, {threads} thread(s), same machine and run")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return True


def write_doc(best: dict[str, dict], args: argparse.Namespace, profile_md: str) -> None:
    import platform

    import torch

    ref = best.get("llama.cpp", {}).get("decode_tok_s")
    lines = [
        "## CPU decode speed (engine)",
        "",
        f"Default model (SmolLM2-135M-Instruct, Q4_1 GGUF), batch 1, greedy, {args.prompt_tokens}-token prompt, "
        f"{args.new_tokens} new tokens, {args.threads} threads, best of {args.rounds} interleaved rounds; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}. "
        "Produced by `bench/cpu_decode.py`.",
        "",
        "| engine | decode tok/s | vs llama.cpp | first token (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for engine, r in sorted(best.items(), key=lambda kv: -kv[1]["decode_tok_s"]):
        ratio = f"{r['decode_tok_s'] / ref:.2f}x" if ref else "-"
        lines.append(
            f"| {engine} | {r['decode_tok_s']:.1f} | {ratio} | {r['first_token_s']:.3f} | {r['peak_rss_mib']:.0f} |"
        )
    if plot(best, args.threads):
        lines += ["", f"![CPU decode tok/s](img/{PLOT.name})"]
    if profile_md:
        lines += ["", profile_md]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    marker = "<!-- measured table above; analysis below is hand-written -->"
    notes = ""
    if DOC.exists() and marker in DOC.read_text():
        notes = DOC.read_text().split(marker, 1)[1]
    DOC.write_text("\n".join(lines) + "\n\n" + marker + notes)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
