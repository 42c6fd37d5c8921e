"""Bounded load: 32 concurrent streaming clients, 10% leaving mid-stream; only 429s fail and no slot leaks."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import psutil

from tests.server.conftest import MODEL, running_server
from xpullm.server import LocalTextEngine

CLIENTS = 32
SECONDS = 6.0
BODY = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Count to ten."}],
    "max_tokens": 6,
    "temperature": 0,
    "stream": True,
    "stream_options": {"include_usage": True},
}


async def _client(i: int, url: str, deadline: float, out: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            async with http.stream("POST", "/v1/chat/completions", json=BODY) as r:
                if r.status_code == 429:
                    out["429"] += 1
                    await asyncio.sleep(0.05)
                    continue
                assert r.status_code == 200, await r.aread()
                out["admitted"] += 1
                leave = out["admitted"] % 10 == 0  # every 10th admitted request leaves after its first token
                last, first = "", True
                async for line in r.aiter_lines():
                    if not line:
                        continue
                    last = line
                    if first and '"content": "' in line and '"content": ""' not in line:
                        out["ttft"].append(time.perf_counter() - t0)
                        first = False
                        if leave:
                            break
                    if line.startswith("data: {") and '"usage": {' in line:
                        out["tokens"] += json.loads(line[6:])["usage"]["completion_tokens"]
                if leave:
                    out["left"] += 1
                else:
                    assert last == "data: [DONE]", last
                    out["done"] += 1


def test_32_streaming_clients_with_disconnects(llm) -> None:
    engine = LocalTextEngine(llm, model_id=MODEL, max_queue=12, max_running=4)
    rss = psutil.Process().memory_info().rss
    with running_server(engine) as s:
        out = {"429": 0, "admitted": 0, "done": 0, "left": 0, "tokens": 0, "ttft": []}

        async def run() -> None:
            deadline = time.monotonic() + SECONDS
            await asyncio.gather(*(_client(i, s.url, deadline, out) for i in range(CLIENTS)))

        t0 = time.perf_counter()
        asyncio.run(run())
        wall = time.perf_counter() - t0
        for _ in range(500):
            if engine.stats().queued == 0 and engine.stats().running == 0 and engine.threads == 0:
                break
            time.sleep(0.01)
        stats = engine.stats()
        metrics = httpx.get(s.url + "/metrics").text
    grown = (psutil.Process().memory_info().rss - rss) / 2**20
    ttft = sorted(out["ttft"])
    p50, p99 = statistics.median(ttft), ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]
    print(
        f"\nload: {CLIENTS} clients {wall:.1f}s: {out['done']} done, {out['left']} left mid-stream, "
        f"{out['429']} x 429; TTFT p50 {p50:.3f}s p99 {p99:.3f}s; {out['tokens'] / wall:.1f} tok/s; RSS +{grown:.0f} MiB"
    )
    assert stats.queued == 0 and stats.running == 0 and engine.threads == 0
    assert "xpullm_queue_length 0" in metrics and "xpullm_running_requests 0" in metrics
    assert out["done"] > 0 and out["left"] > 0
    assert grown < 200, f"RSS grew {grown:.0f} MiB under load"
