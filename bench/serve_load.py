"""Load test of `xpullm serve`: N concurrent streaming clients for a bounded time, some leaving mid-stream.

Starts the real CLI server (`xpullm serve`, packaged SmolLM2-135M, no embedder) and runs `--clients` asyncio clients
for `--seconds`; each sends streamed greedy chat completions back to back. Every 10th admitted request (10%)
disconnects after its first content token. Reports: outcomes (done / left / 429 / errors), TTFT p50/p99 (from
sending to the first content token, queueing included), aggregate completion tokens/s (usage counts of finished
streams over the wall time), the server's RSS before and after, and whether /metrics shows every slot free at the
end (no leaked running or queued requests).

python -P bench/serve_load.py [--clients 32] [--seconds 30] [--max-running 8] [--max-queue 16]
    # writes docs/benchmarks-serve-load.md
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

DOCS = Path(__file__).resolve().parent.parent / "docs"
PROMPTS = ["Count to ten.", "Name three colours.", "Say hello to a friend.", "What is two plus two?"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-P", "-m", "xpullm.cli.main", "serve", "--port", str(port), "--no-embedder"]
    cmd += ["--model-name", "smollm2", "--log-level", "warning"]
    cmd += ["--max-running", str(args.max_running), "--max-queue", str(args.max_queue)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONSAFEPATH": "1"}
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("xpullm serve did not become ready")


async def client(i: int, url: str, deadline: float, max_tokens: int, out: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        n = 0
        while time.monotonic() < deadline:
            body = {
                "model": "smollm2",
                "messages": [{"role": "user", "content": PROMPTS[(i + n) % len(PROMPTS)]}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            n += 1
            t0 = time.perf_counter()
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code == 429:
                        out["429"] += 1
                        await asyncio.sleep(0.2)
                        continue
                    if r.status_code != 200:
                        out["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    out["admitted"] += 1
                    leave = out["admitted"] % 10 == 0
                    first, last = True, ""
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        last = line
                        if line == "data: [DONE]":
                            break
                        chunk = json.loads(line[6:])
                        if "error" in chunk:
                            out["errors"].append(str(chunk["error"])[:200])
                            break
                        if chunk.get("usage"):
                            out["tokens"] += chunk["usage"]["completion_tokens"]
                        if first and any((c.get("delta") or {}).get("content") for c in chunk["choices"]):
                            first = False
                            out["ttft"].append(time.perf_counter() - t0)
                            if leave:
                                break
                    if leave:
                        out["left"] += 1
                    elif last == "data: [DONE]":
                        out["done"] += 1
                    else:
                        out["errors"].append(f"stream ended without [DONE]: {last[:120]!r}")
            except httpx.HTTPError as exc:
                out["errors"].append(f"{type(exc).__name__}: {exc}")


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-running", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(DOCS / "benchmarks-serve-load.md"))
    args = ap.parse_args()
    proc, url = start_server(args)
    server = psutil.Process(proc.pid)
    try:
        # One request first, so the "before" RSS is the warm server's, not the half-initialised one's.
        httpx.post(url + "/v1/chat/completions", timeout=120, json={"model": "smollm2", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
        rss_before = server.memory_info().rss / 2**20
        out: dict = {"429": 0, "admitted": 0, "done": 0, "left": 0, "tokens": 0, "ttft": [], "errors": []}

        async def run() -> None:
            deadline = time.monotonic() + args.seconds
            await asyncio.gather(
                *(client(i, url, deadline, args.max_tokens, out) for i in range(args.clients))
            )

        t0 = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - t0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # cancelled streams stop after their current token
            text = httpx.get(url + "/metrics").text
            if metric(text, "xpullm_running_requests") == 0 and metric(text, "xpullm_queue_length") == 0:
                break
            time.sleep(0.2)
        rss_after = server.memory_info().rss / 2**20
    finally:
        proc.terminate()
        proc.wait(60)
    ttft = sorted(out["ttft"])
    p50 = statistics.median(ttft) if ttft else float("nan")
    p99 = ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))] if ttft else float("nan")
    running, queued = metric(text, "xpullm_running_requests"), metric(text, "xpullm_queue_length")
    engine = (
        "continuous-batching engine"
        if importlib.util.find_spec("xpullm.engine.core")
        else "serialized engine"
    )
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    print(
        json.dumps(
            {**{k: v for k, v in out.items() if k not in ("ttft", "errors")}, "errors": len(out["errors"])}
        )
    )
    for e in out["errors"][:5]:
        print("error:", e)
    lines = [
        "## Load: xpullm serve under 32 streaming clients (`bench/serve_load.py`)",
        "",
        f"Script: `bench/serve_load.py --clients {args.clients} --seconds {args.seconds:g} --max-tokens "
        f"{args.max_tokens} --max-running {args.max_running} --max-queue {args.max_queue}`. Machine: {cpu}, "
        f"{os.cpu_count()} vCPU, shared with other jobs (noisy). Packaged SmolLM2-135M-Instruct; {engine}. "
        "Every 10th admitted request disconnects after its first token; rejected clients (429) retry after 0.2 s.",
        "",
        "| clients | wall (s) | finished | left mid-stream | 429 | errors | TTFT p50 (s) | TTFT p99 (s) | "
        "tokens/s (aggregate) | RSS before / after (MiB) | running / queued after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {args.clients} | {wall:.1f} | {out['done']} | {out['left']} | {out['429']} | {len(out['errors'])} | "
        f"{p50:.2f} | {p99:.2f} | {out['tokens'] / wall:.1f} | {rss_before:.0f} / {rss_after:.0f} | "
        f"{running:.0f} / {queued:.0f} |",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-3:]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
