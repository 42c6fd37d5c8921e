"""Serving benchmark: `xpullm serve` vs llama.cpp's server (xllamacpp), same GGUF, prompts and concurrency sweep.

Both servers get the same streamed /v1/chat/completions requests (greedy, fixed max_tokens) from one asyncio
client; per request it records time to first content token (TTFT) and the gaps between content chunks
(inter-token latency, ITL); per level, aggregate completion tokens/s over the level's wall time (usage counts).
Levels run interleaved (xpullm, llama.cpp, xpullm, ...) so machine noise hits both.

python -P bench/serve_compare.py [--levels 1,2,4,8] [--requests 8] [--max-tokens 32]   # writes docs/benchmarks-serve.md
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

DOCS = Path(__file__).resolve().parent.parent / "docs"
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_xpullm(threads: int, max_running: int) -> tuple[subprocess.Popen, str, str]:
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONSAFEPATH": "1"}
    cmd = [sys.executable, "-P", "-m", "xpullm.cli.main", "serve", "--port", str(port), "--no-embedder"]
    cmd += ["--max-queue", "256", "--max-running", str(max_running), "--log-level", "warning"]
    proc = subprocess.Popen([*cmd, "--model-name", "smollm2"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url, "smollm2"
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("xpullm serve did not become ready")


def start_llamacpp(threads: int, parallel: int) -> tuple[object, str, str]:
    import xllamacpp as xlc

    from xpullm.models import default_llm_gguf

    params = xlc.CommonParams()
    params.model.path = str(default_llm_gguf())
    params.n_ctx = 2048 * parallel
    params.n_parallel = parallel
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    return server, server.listening_address, "smollm2"


async def one(http: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    t0 = time.perf_counter()
    stamps: list[float] = []
    tokens = 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices") or []:
                if (c.get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    return {"ttft": stamps[0] - t0 if stamps else float("nan"), "gaps": gaps, "tokens": tokens}


async def level(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    # No keep-alive: llama.cpp's server drops idle connections after a few seconds, which a pool would reuse.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await one(http, model, PROMPTS[0], 4)  # warm-up
        sem = asyncio.Semaphore(concurrency)

        async def task(i: int) -> dict:
            async with sem:
                return await one(http, model, PROMPTS[i % len(PROMPTS)], max_tokens)

        t0 = time.perf_counter()
        results = await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    gaps = [g for r in results for g in r["gaps"]]
    return {
        "tok_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))],
        "itl_ms": 1000 * statistics.mean(gaps) if gaps else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=8, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(DOCS / "benchmarks-serve.md"))
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    proc, x_url, x_model = start_xpullm(args.threads, max(levels))
    server, l_url, l_model = start_llamacpp(args.threads, max(levels))
    rows = []
    try:
        for c in levels:
            for name, url, model in (("xpullm serve", x_url, x_model), ("llama.cpp server", l_url, l_model)):
                r = asyncio.run(level(url, model, c, max(args.requests, c), args.max_tokens))
                rows.append((c, name, r))
                print(c, name, {k: round(v, 3) for k, v in r.items()}, flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
        del server
    engine = (
        "continuous-batching engine: running requests share steps"
        if importlib.util.find_spec("xpullm.engine.core")
        else "serialized engine: running requests take turns on the model"
    )
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = names[0] if names else cpu
    lines = [
        "## Serving: xpullm serve vs llama.cpp's server (`bench/serve_compare.py`)",
        "",
        "Script: `bench/serve_compare.py` "
        f"(`--levels {args.levels} --requests {args.requests} --max-tokens {args.max_tokens}`). Machine: {cpu}, "
        f"{os.cpu_count()} vCPU, {args.threads} thread(s) per server, shared with other jobs (noisy: compare rows "
        "of one run, not runs). Packaged "
        f"SmolLM2-135M-Instruct Q4_1 GGUF: xpullm loads it as sym_int4 with `--max-running` = the highest level "
        f"({engine}); llama.cpp's server gets `n_parallel` = the highest level (continuous batching). "
        "Streamed greedy chat completions; TTFT includes queueing; ITL is the mean gap between content chunks. "
        "The 8 prompts repeat across requests: llama.cpp's server reuses cached prompts (`cache_prompt`), and so does "
        "the continuous-batching engine (prefix blocks), so repeated prompts reach their first token sooner.",
        "",
        "| concurrency | server | tokens/s (aggregate) | TTFT p50 (s) | TTFT p99 (s) | ITL (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c, name, r in rows:
        lines.append(
            f"| {c} | {name} | {r['tok_s']:.1f} | {r['ttft_p50']:.3f} | {r['ttft_p99']:.3f} | {r['itl_ms']:.1f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
