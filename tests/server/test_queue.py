"""The bounded queue: 429 when full, and a client that goes away frees its slot at once (queued or running)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time

import httpx
import pytest

from tests.server.conftest import MODEL, running_server
from xpullm.server import LocalTextEngine

LONG = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 2000}


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture()
def small(llm):
    """A server whose queue holds one waiting request."""
    with running_server(LocalTextEngine(llm, model_id=MODEL, max_queue=1)) as s:
        yield s


class _Stream:
    """An open SSE response and its line iterator (dropping the iterator would close the connection)."""

    def __init__(self, client: httpx.Client, body: dict) -> None:
        request = client.build_request("POST", "/v1/chat/completions", json={**body, "stream": True})
        self.response = client.send(request, stream=True)
        assert self.response.status_code == 200
        self.lines = self.response.iter_lines()
        assert '"role": "assistant"' in next(self.lines)

    def close(self) -> None:
        self.lines.close()
        self.response.close()


def test_full_queue_is_429_and_disconnects_free_slots_at_once(small) -> None:
    engine = small.text
    with httpx.Client(base_url=small.url, timeout=30) as a, httpx.Client(base_url=small.url, timeout=30) as b:
        running = _Stream(a, LONG)
        assert _wait_for(lambda: engine.stats().running == 1)
        queued = _Stream(b, LONG)
        assert engine.stats().queued == 1
        full = httpx.post(small.url + "/v1/chat/completions", json=LONG)
        assert full.status_code == 429
        assert (
            full.json()["error"]["code"] == "queue_full"
            and full.json()["error"]["type"] == "rate_limit_error"
        )
        # The waiting client leaves: its place in the queue is free at once, and a new request gets in.
        queued.close()
        assert _wait_for(lambda: engine.stats().queued == 0, 2.0)
        with httpx.Client(base_url=small.url, timeout=30) as c:
            again = _Stream(c, LONG)
            assert engine.stats().queued == 1
            # The running client leaves: generation stops after its current token and the next one starts.
            running.close()
            assert _wait_for(lambda: engine.stats().queued == 0 and engine.stats().running == 1, 5.0)
            again.close()
        assert _wait_for(lambda: engine.stats().running == 0, 5.0)
    metrics = httpx.get(small.url + "/metrics").text
    assert "xpullm_queue_length 0" in metrics and "xpullm_running_requests 0" in metrics
    assert 'xpullm_requests_total{outcome="rejected"} 1' in metrics
    assert 'xpullm_requests_total{outcome="cancelled"} 3' in metrics


def test_a_plain_request_that_times_out_leaves_the_queue(small) -> None:
    engine = small.text
    with httpx.Client(base_url=small.url, timeout=30) as a:
        running = _Stream(a, LONG)
        assert _wait_for(lambda: engine.stats().running == 1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(small.url + "/v1/chat/completions", json=LONG, timeout=0.5)
        assert _wait_for(lambda: engine.stats().queued == 0, 2.0)
        running.close()
    assert _wait_for(lambda: engine.stats().running == 0, 5.0)


def test_running_slots_fill_first_and_a_cancelled_running_request_frees_its_slot_at_once(llm) -> None:
    engine = LocalTextEngine(llm, model_id=MODEL, max_queue=1, max_running=2)
    with running_server(engine) as s, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(httpx.Client(base_url=s.url, timeout=30)) for _ in range(3)]
        a, b = _Stream(clients[0], LONG), _Stream(clients[1], LONG)
        assert _wait_for(lambda: engine.stats().running == 2)
        c = _Stream(clients[2], LONG)
        assert engine.stats().queued == 1
        assert httpx.post(s.url + "/v1/chat/completions", json=LONG).status_code == 429
        a.close()
        # The slot is given back when the client leaves, not when its generation thread ends.
        assert _wait_for(lambda: engine.stats().queued == 0 and engine.stats().running == 2, 2.0)
        metrics = httpx.get(s.url + "/metrics").text
        assert "xpullm_running_requests 2" in metrics and "xpullm_queue_length 0" in metrics
        b.close()
        c.close()
        assert _wait_for(lambda: engine.stats().running == 0 and engine.threads == 0, 10.0)


def test_concurrent_requests_keep_exact_usage_and_greedy_text(llm) -> None:
    questions = ["Name a colour.", "What is 2 + 2?", "Say hello."]
    alone = [llm.chat([{"role": "user", "content": q}], max_new_tokens=8) for q in questions]
    engine = LocalTextEngine(llm, model_id=MODEL, max_queue=4, max_running=3)
    with running_server(engine) as s:

        def ask(q: str) -> dict:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": q}],
                "max_tokens": 8,
                "temperature": 0,
            }
            return httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60).json()

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(ask, questions))
    for got, want in zip(answers, alone, strict=True):
        assert got["choices"][0]["message"]["content"] == want.text
        assert got["usage"] == {
            "prompt_tokens": want.prompt_tokens,
            "completion_tokens": want.completion_tokens,
            "total_tokens": want.prompt_tokens + want.completion_tokens,
        }
