"""Serving benchmark: `xpullm serve` vs llama.cpp's server (xllamacpp), same GGUF, prompts and concurrency sweep.

Two load generators, same table:
- `--client guidellm` (default): the standard serving benchmark `guidellm` (vLLM project), run offline: synthetic
  prompts (`synthetic_text`, Faker text, `--prompt-tokens` / `--output-tokens`, the same seeded sequence for both
  servers), the tokenizer read from the converted packaged model's folder, `concurrent` profile over the levels,
  `--seconds` per level. guidellm lives in its own venv (its pins differ from ours); pass its executable with
  `--guidellm` (default `.venv-guidellm/bin/guidellm`, made by
  `uv venv .venv-guidellm && uv pip install --python .venv-guidellm/bin/python guidellm==0.8.1`).
- `--client own`: this script's asyncio client (no extra dependency): the 8 chat prompts below, greedy,
  `--output-tokens` tokens with `ignore_eos` (vLLM's field, which both servers honour), max(--requests,
  2 x concurrency) requests per level.

Per level: aggregate output tokens/s, TTFT p50 (from sending, so queueing counts) and ITL p50 ((last token - first
token) / (tokens - 1) per request, independent of how tokens are grouped into chunks) and the completion tokens of
every finished request, as the server's `usage` reports them and as the tokenizer counts the returned text (so a
server that stops early, or miscounts, shows). The sweep runs `--rounds`
times; within a round both servers run the whole sweep back to back, the one that goes first alternating between
rounds, so machine noise hits both. Cells: median over rounds [min-max], plus the median per-round throughput ratio.

python -P bench/serve_compare.py [--client guidellm|own] [--levels 1,2,4,8,16] [--rounds 3]
    # writes docs/benchmarks-serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROMPTS = [
    "Explain what a knowledge graph is in two sentences.",
    "List three fruits and their colors.",
    "Write a haiku about the sea.",
    "What is the capital of France, and why is it famous?",
    "Give two tips for writing clean Python code.",
    "Describe a cat to someone who has never seen one.",
    "Why is the sky blue?",
    "Summarize the plot of a heist movie in one paragraph.",
]
XPULLM, LLAMACPP = "xpullm serve", "llama.cpp server"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_xpullm(threads: int, max_running: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-P", "-m", "xpullm.cli.main", "serve", "--port", str(port), "--no-embedder"]
    cmd += ["--max-queue", "256", "--max-running", str(max_running), "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, "--model-name", "smollm2"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, "xpullm serve exited while loading"
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("xpullm serve did not become ready")


def start_llamacpp(threads: int, parallel: int) -> tuple[object, str]:
    import xllamacpp as xlc

    from xpullm.models import default_llm_gguf

    params = xlc.CommonParams()
    params.model.path = str(default_llm_gguf())
    params.n_ctx = 2048 * parallel  # 2048 per slot: prompts + max_tokens fit with room
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    return server, server.listening_address


async def one(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # every request generates max_tokens on both servers
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    text = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            pieces = [(c.get("delta") or {}).get("content") for c in chunk.get("choices") or []]
            if any(pieces):
                text += [piece for piece in pieces if piece]
                last = time.perf_counter()
                first = first or last
    itl = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return {"ttft": (first or time.perf_counter()) - t0, "itl": itl, "tokens": tokens, "text": "".join(text)}


async def level(url: str, concurrency: int, requests: int, max_tokens: int, offset: int) -> dict:
    # No keep-alive: llama.cpp's server drops idle connections after a few seconds, which a pool would reuse.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await one(http, PROMPTS[0], 4)  # warm-up
        sem = asyncio.Semaphore(concurrency)

        async def task(i: int) -> dict:
            async with sem:
                return await one(http, PROMPTS[(i + offset) % len(PROMPTS)], max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    itls = [r["itl"] for r in results if r["itl"] is not None]
    return {
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft": statistics.median(r["ttft"] for r in results),
        "itl_ms": 1000 * statistics.median(itls) if itls else float("nan"),
        "out_tokens": statistics.median(r["tokens"] for r in results),
        "done": len(results),
        "errors": 0,  # a failed request raises
        "per_request": [r["tokens"] for r in results],
        "retokenized": [retokenized(r["text"]) for r in results],
    }


def own_sweep(url: str, levels: list[int], args: argparse.Namespace, rnd: int, label: str) -> dict[int, dict]:
    """This script's client: every level in turn."""
    return {c: asyncio.run(level(url, c, max(args.requests, 2 * c), args.output_tokens, rnd)) for c in levels}


def guidellm_sweep(
    url: str, levels: list[int], args: argparse.Namespace, rnd: int, label: str
) -> dict[int, dict]:
    """One `guidellm run` over every level (offline: synthetic data, local tokenizer)."""
    from xpullm.models import default_llm_path

    raw = ROOT / "bench" / "out" / "serve_compare"  # guidellm's full reports, for a closer look (git-ignored)
    raw.mkdir(parents=True, exist_ok=True)
    out = raw / f"round{rnd + 1}-{label}.json"
    data = f"kind=synthetic_text,prompt_tokens={args.prompt_tokens},output_tokens={args.output_tokens}"
    cmd = [args.guidellm, "run", "--backend", f"kind=openai_http,target={url},model=smollm2"]
    cmd += ["--tokenizer", f"kind=huggingface_auto,model={default_llm_path()}", "--data", data]
    cmd += ["--profile", "kind=concurrent", "--override", "profile.streams", ",".join(map(str, levels))]
    cmd += ["--constraint", f"kind=max_duration,seconds={args.seconds}"]
    cmd += ["--output", f"kind=json,path={out}", "--disable-console"]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # Its own session: guidellm runs worker processes, which a stopped sweep must take down with it.
    proc = subprocess.Popen(cmd, env={**os.environ, **offline}, start_new_session=True)
    try:
        if proc.wait() != 0:
            raise RuntimeError(f"guidellm exited with {proc.returncode}: {' '.join(cmd)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    report = json.loads(out.read_text())
    results = {}
    for bench in report["benchmarks"]:
        m = bench["metrics"]
        done = m["request_totals"]["successful"]
        nan = float("nan")
        results[int(bench["config"]["strategy"]["streams"])] = {
            # output tokens of every request (finished or cut off at the end) over the level's duration
            "tok_s": m["output_tokens_per_second"]["total"]["mean"],
            "ttft": m["time_to_first_token_ms"]["successful"]["median"] / 1000 if done else nan,
            "itl_ms": m["inter_token_latency_ms"]["successful"]["median"] if done else nan,
            "out_tokens": m["output_token_count"]["successful"]["median"] if done else nan,
            "done": done,
            "errors": m["request_totals"]["errored"],
            # every finished request: the server's usage.completion_tokens, and its returned text re-tokenized
            "per_request": [r["output_metrics"]["text_tokens"] for r in bench["requests"]["successful"]],
            "retokenized": [retokenized(r["output"] or "") for r in bench["requests"]["successful"]],
        }
    return results


_TOKENIZER = []


def retokenized(text: str) -> int:
    """Tokens of a returned text under the packaged model's tokenizer (an independent check of `usage`; re-encoding
    decoded text can merge a token pair or two differently, so expect max_tokens give or take a little)."""
    if not _TOKENIZER:
        from tokenizers import Tokenizer

        from xpullm.models import default_llm_path

        _TOKENIZER.append(Tokenizer.from_file(str(default_llm_path() / "tokenizer.json")))
    return len(_TOKENIZER[0].encode(text, add_special_tokens=False).ids)


def _tokens_cell(rs: list[dict], max_tokens: int) -> str:
    """min-max of the completion tokens over every finished request of every round, and how many hit max_tokens."""
    counts = [n for r in rs for n in r["per_request"]]
    if not counts:
        return "-"
    return f"{min(counts)}-{max(counts)} ({sum(n == max_tokens for n in counts)}/{len(counts)})"


def _cpu() -> str:
    fields: dict[str, str] = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    flags = fields.get("flags", "").split()
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-512" if "avx512f" in flags else "AVX2"
    return f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, {isa})"


def _cell(values: list[float], fmt: str) -> str:
    values = [v for v in values if v == v]  # a round where no request finished has no latency
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def _range(values: list[int]) -> str:
    return f"{min(values)}-{max(values)}" if values else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", choices=("guidellm", "own"), default="guidellm")
    ap.add_argument("--guidellm", default=str(ROOT / ".venv-guidellm" / "bin" / "guidellm"))
    ap.add_argument("--levels", default="1,2,4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=15, help="guidellm: seconds per level")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="guidellm: synthetic prompt length")
    ap.add_argument(
        "--requests", type=int, default=8, help="own client: requests per level (>= 2 x concurrency)"
    )
    ap.add_argument("--output-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="threads per server (default: all cores but one, which the load generator needs)",
    )
    ap.add_argument("--note", default="", help="a sentence about the machine's state, e.g. 'quiet machine'")
    ap.add_argument("--out", default=str(DOCS / "benchmarks-serve.md"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    if args.client == "guidellm" and not Path(args.guidellm).is_file():
        sys.exit(
            f"guidellm not found at {args.guidellm}: create its venv with `uv venv .venv-guidellm && uv pip install "
            "--python .venv-guidellm/bin/python guidellm==0.8.1`, pass --guidellm PATH, or use --client own"
        )
    sweep = guidellm_sweep if args.client == "guidellm" else own_sweep
    # A SIGTERM (timeout, kill) unwinds through the finally below, so the xpullm server never outlives the script.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.perf_counter()
    proc, x_url = start_xpullm(args.threads, max(levels))
    server, l_url = start_llamacpp(args.threads, max(levels))
    urls = {XPULLM: x_url, LLAMACPP: l_url}
    runs: dict[tuple[int, str], list[dict]] = {}
    try:
        for rnd in range(args.rounds):
            order = [XPULLM, LLAMACPP] if rnd % 2 == 0 else [LLAMACPP, XPULLM]
            for name in order:
                label = "xpullm" if name == XPULLM else "llamacpp"
                for c, r in sweep(urls[name], levels, args, rnd, label).items():
                    runs.setdefault((c, name), []).append(r)
                    scalars = ", ".join(f"{k}={v:.3f}" for k, v in r.items() if not isinstance(v, list))
                    lengths = sorted(set(r["per_request"]))
                    print(
                        f"round {rnd + 1} c={c} {name}: {scalars}, completion token counts {lengths}",
                        flush=True,
                    )
    finally:
        proc.terminate()
        proc.wait(60)
        del server
    minutes = (time.perf_counter() - started) / 60
    command = f"bench/serve_compare.py --client {args.client} --levels {args.levels} --rounds {args.rounds} "
    if args.client == "guidellm":
        command += f"--seconds {args.seconds} --prompt-tokens {args.prompt_tokens} "
        load = (
            f"Load: guidellm 0.8.1 (`guidellm run`, `concurrent` profile, {args.seconds} s per level), synthetic "
            f"prompts of {args.prompt_tokens} tokens (Faker text; the same seeded sequence for both servers), "
            f"streamed chat completions with `max_completion_tokens` {args.output_tokens} and guidellm's "
            "`ignore_eos: true`, which both servers honour (the completion-tokens columns show what each produced)."
        )
    else:
        command += f"--requests {args.requests} "
        load = (
            "Load: this script's asyncio client, 8 short chat prompts (repeated: both servers reuse cached prefixes), "
            f"greedy, `max_tokens` {args.output_tokens} with `ignore_eos: true`, max({args.requests}, 2 x "
            "concurrency) requests per level."
        )
    command += f"--output-tokens {args.output_tokens} --threads {args.threads}"
    lines = [
        "## Serving: xpullm serve vs llama.cpp's server (`bench/serve_compare.py`)",
        "",
        f"Script: `{command}` ({minutes:.0f} min), {datetime.date.today().isoformat()}. Machine: {_cpu()}, "
        f"{os.cpu_count()} vCPU, {args.threads} thread(s) per server{'; ' + args.note if args.note else ''}. "
        "Packaged SmolLM2-135M-Instruct Q4_1 GGUF on both: xpullm loads it in the checkpoint's own format "
        "(asym_int4) on its continuous-batching engine with `--max-running` = the highest level; llama.cpp's "
        "server (xllamacpp) gets `n_parallel` = the highest level (its continuous batching), 2048 tokens of context "
        f"per slot. {load} TTFT: median over a level's requests, from sending (queueing counts). ITL: median over "
        "requests of (last token - first token) / (tokens - 1). Completion tokens per request: min-max over every "
        "finished request of every round of the server's `usage.completion_tokens` (in brackets: how many were "
        "exactly max_tokens / finished), and of its returned text re-tokenized with the model's tokenizer (a check "
        "that does not trust `usage`; re-encoding decoded text may merge a pair differently). Other cells: median "
        "over the rounds [min-max]; the server that goes first alternates between rounds.",
        "",
        "| concurrency | server | output tokens/s (aggregate) | TTFT p50 (s) | ITL p50 (ms) | completion tokens "
        "per request, usage (at max / finished) | re-tokenized text | requests finished (all rounds) | errors "
        "| xpullm / llama.cpp tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in levels:
        x, ll = runs[(c, XPULLM)], runs[(c, LLAMACPP)]
        ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(x, ll, strict=True) if b["tok_s"] > 0]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
        for name, rs in ((XPULLM, x), (LLAMACPP, ll)):
            lines.append(
                f"| {c} | {name} | {_cell([r['tok_s'] for r in rs], '.1f')} | {_cell([r['ttft'] for r in rs], '.3f')} "
                f"| {_cell([r['itl_ms'] for r in rs], '.1f')} | {_tokens_cell(rs, args.output_tokens)} "
                f"| {_range([n for r in rs for n in r['retokenized']])} "
                f"| {sum(r['done'] for r in rs)} | {sum(r['errors'] for r in rs)} | {ratio if name == XPULLM else ''} |"
            )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} after {minutes:.1f} min")


if __name__ == "__main__":
    main()
