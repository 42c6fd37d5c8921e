"""A `xpullm finetune` process SIGKILLed mid-training resumes from its checkpoint and ends where an unbroken run does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from xpullm.finetune import FinetuneConfig, finetune

from .conftest import load_base

STEPS, EVERY = 6, 2


def _cli(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-P", "-m", "xpullm.cli.main", "finetune", str(data), str(out), "--max-steps", str(STEPS),
            "--save-every", str(EVERY), "--batch-size", "2", "--seq-len", "32", "--rank", "4", "--threads", "1",
            "--no-gradient-checkpointing", "--quiet"]  # fmt: skip


def _checkpoint_step(out: Path) -> int:
    state = out / "checkpoint" / "trainer_state.json"
    try:
        return json.loads(state.read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_killed_run_resumes_from_its_checkpoint(
    base_path: Path, tokenizer, wiki_paragraphs, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in wiki_paragraphs[:12]))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(data, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _checkpoint_step(out) < EVERY and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpoint_step(out)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    assert EVERY <= killed_at < STEPS
    assert not (out / "adapter").exists()

    done = subprocess.run(_cli(data, out), env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"trained {STEPS} steps (resumed at step {killed_at})" in done.stdout

    # the same run without a kill, in this process: identical adapter weights
    # malloc_mmap_threshold=None: leave this (pytest) process's allocator as it was; it changes no numbers
    config = FinetuneConfig(r=4, seq_len=32, batch_size=2, max_steps=STEPS, save_every=EVERY,
                            gradient_checkpointing=False, malloc_mmap_threshold=None)  # fmt: skip
    ref = finetune(load_base(base_path), data, tmp_path / "ref", config, tokenizer=tokenizer, progress=False)
    assert ref.steps == STEPS and ref.resumed_from == 0
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    unbroken = load_file(str(ref.adapter_path / "adapter_model.safetensors"))
    assert resumed.keys() == unbroken.keys() and len(resumed) == 2 * 7 * 30
    for key, value in unbroken.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
