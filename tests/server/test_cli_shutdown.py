"""`xpullm serve` in a subprocess: SIGTERM lets a running stream finish, then the process exits; SIGTERM while
the model loads leaves no half-written cache."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.server.conftest import _free_port
from xpullm.loading.sources import LOWBIT_MANIFEST


def test_sigterm_drains_the_running_stream(tmp_path) -> None:
    port = _free_port()
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[serve]\nport = {port}\nmodel-name = "tiny"\nno_embedder = true\nmax_queue = 4\ndefault_max_tokens = 3\n'
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "xpullm.cli.main",
            "serve",
            "--config",
            str(config),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny"]
        # No max_tokens in the request: the config's default_max_tokens caps it.
        plain = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Tell a story."}],
            "temperature": 0,
        }
        answer = httpx.post(url + "/v1/chat/completions", json=plain, timeout=120).json()
        assert answer["usage"]["completion_tokens"] == 3 and answer["choices"][0]["finish_reason"] == "length"
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Count to twenty."}],
            "max_tokens": 40,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            assert '"role": "assistant"' in next(lines)
            proc.send_signal(signal.SIGTERM)
            rest = [x for x in lines if x]
        assert rest[-1] == "data: [DONE]"
        assert '"finish_reason": "length"' in rest[-2] or '"finish_reason": "stop"' in rest[-2]
        # uvicorn re-raises the signal once it has drained, so the exit status says "ended by SIGTERM".
        assert proc.wait(60) == -signal.SIGTERM
        assert "Traceback" not in proc.stdout.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_while_loading_leaves_a_whole_model_cache_or_none(tmp_path) -> None:
    """The server answers (503) while it converts the packaged GGUF into an empty cache; SIGTERM then exits cleanly
    (after waiting up to --graceful-timeout-s for the load) and the cache holds the finished conversion or nothing:
    never a partial folder or a leftover temporary one."""
    cache = tmp_path / "cache"
    cache.mkdir()
    native = Path(os.environ["XPULLM_CACHE"]) / "native"
    if native.is_dir():  # reuse the built CPU kernels: only the model cache starts empty
        (cache / "native").symlink_to(native)
    port = _free_port()
    cmd = [sys.executable, "-P", "-m", "xpullm.cli.main", "serve", "--port", str(port), "--no-embedder"]
    # A short drain: the test is about what a stop in the middle of loading leaves behind, not about waiting.
    cmd += ["--graceful-timeout-s", "3"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "XPULLM_CACHE": str(cache)},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "server did not answer"
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/health").status_code
                break
            except httpx.TransportError:
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(180) == -signal.SIGTERM
        assert "Traceback" not in proc.stdout.read().decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    models = cache / "models"
    entries = sorted(p.name for p in models.iterdir()) if models.is_dir() else []
    assert not [e for e in entries if e.startswith(".")], entries  # no temporary or half-renamed folder
    for name in entries:  # a folder that exists is complete: its manifest is written last
        assert json.loads((models / name / LOWBIT_MANIFEST).read_text())
    print(f"/health was {status} at SIGTERM; cache entries after exit: {entries}")
