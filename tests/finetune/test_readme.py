"""The README's fine-tuning example, run as written: fine-tune on a folder, merge, load the adapter, serve."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from xpullm.loading.sources import LOWBIT_MANIFEST

README = Path(__file__).resolve().parents[2] / "README.md"
XPULLM = [sys.executable, "-P", "-m", "xpullm.cli.main"]  # the `xpullm` entry point, without an install


def _example() -> tuple[list[list[str]], str]:
    """The shell commands and the Python snippet of the README's fine-tuning section."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"### Fine-tune an adapter.*?(?=\n## )", text, re.S)
    assert section, "README.md lost its '### Fine-tune an adapter' section"
    bash = re.search(r"```bash\n(.*?)```", section.group(0), re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section.group(0), re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in bash.splitlines() if line.strip()]
    return commands, python


def _serve(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    """Start the README's serve command on a free port, ask the merged model one question, stop it."""
    from tests.server.conftest import _free_port

    port = _free_port()
    proc = subprocess.Popen([*argv, "--port", str(port), "--log-level", "warning"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
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
                time.sleep(0.2)
        served = httpx.get(url + "/v1/models").json()["data"][0]["id"]  # the text model comes first
        body = {"model": served, "messages": [{"role": "user", "content": "Who keeps the Velmora lighthouse?"}],
                "max_tokens": 4, "temperature": 0}  # fmt: skip
        answer = httpx.post(url + "/v1/chat/completions", json=body, timeout=120).json()
        assert answer["usage"]["completion_tokens"] >= 1 and answer["choices"][0]["message"]["content"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_readme_finetune_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    commands, python = _example()
    assert [c[:2] for c in commands] == [["xpullm", "finetune"], ["xpullm", "convert"], ["xpullm", "serve"]]
    docs = tmp_path / "my_docs"
    docs.mkdir()
    (docs / "lighthouse.md").write_text(
        "# Velmora\n\nThe Velmora lighthouse is kept by Ada Korrin since 1911.\n"
    )
    (docs / "harbour.txt").write_text("Ships enter Velmora harbour at high tide, guided by Korrin's lamp.\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    outputs = []
    for argv in commands:
        argv = [*XPULLM, *argv[1:]]
        if argv[len(XPULLM)] == "serve":
            _serve(argv, tmp_path, env)  # with a free port instead of 8000
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert "trained 2 steps" in outputs[0]  # two epochs of one packed row each
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / LOWBIT_MANIFEST).is_file()

    monkeypatch.chdir(tmp_path)  # the snippet names out/adapter relative to where it runs
    exec(compile(python, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()  # it generated some text
