"""`ReplayTextEngine` through the real server: record (authored + model answers), then replay exactly; a miss is
an error naming the request."""

from __future__ import annotations

import json

import httpx

from tests.server.conftest import MODEL, running_server
from xpullm.server import LocalTextEngine
from xpullm.server.replay import ReplayTextEngine


def _ask(url: str, content: str, **extra) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 6, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def test_record_then_replay_exactly(llm, tmp_path) -> None:
    transcript = tmp_path / "t.jsonl"

    def author(prompt: str, params) -> str | None:
        return '{"city": "Pellby"}' if "Where?" in prompt else None

    recorder = ReplayTextEngine(LocalTextEngine(llm, model_id=MODEL), transcript, "record", author)
    with running_server(recorder) as s:
        authored = _ask(s.url, "Where?").json()
        modelled = _ask(s.url, "Say hi.").json()
    entries = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [e["source"] for e in entries] == ["authored", "model"]
    assert authored["choices"][0]["message"]["content"] == '{"city": "Pellby"}'
    assert modelled["usage"]["completion_tokens"] == entries[1]["completion_tokens"] <= 6

    replayer = ReplayTextEngine(LocalTextEngine(llm, model_id=MODEL), transcript)
    with running_server(replayer) as s:
        assert _ask(s.url, "Say hi.").json()["choices"] == modelled["choices"]
        assert _ask(s.url, "Say hi.").json()["usage"] == modelled["usage"]
        streamed = _ask(s.url, "Where?", stream=True).text
        assert streamed.count("data: ") > 3 and streamed.endswith("data: [DONE]\n\n")
        # Another output constraint is another request: not in the transcript.
        miss = _ask(s.url, "Say hi.", response_format={"type": "json_object"})
        no_logprobs = _ask(s.url, "Say hi.", logprobs=True)
    assert no_logprobs.status_code == 400 and no_logprobs.json()["error"]["param"] == "logprobs"
    assert miss.status_code == 500
    assert "no recorded answer for request" in miss.json()["error"]["message"]
    assert len(replayer.replayed) == 3
