"""One demo app per session, launched on 127.0.0.1 with the real packaged models, shared by every test here.

GraphRAG replays the recorded transcript of tests/graphrag (a 135M model cannot write those answers); the chat,
knowledge base and speed tabs run the real SmolLM2-135M and all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Several test processes share two cores: more than one intra-op thread each makes everything far slower.
torch.set_num_threads(1)

GRAPHRAG_DATA = Path(__file__).parents[1] / "graphrag" / "data"
ROOT = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    from xpullm.apps.demo import DemoConfig, launch
    from xpullm.apps.demo.config import DEMO_LOW_BIT
    from xpullm.embeddings import Embedder
    from xpullm.engine import LLM
    from xpullm.models import default_llm_gguf

    llm = LLM(low_bit=DEMO_LOW_BIT, device="cpu")
    llm.tokenizer  # noqa: B018  (load now, not inside the first request)
    embedder = Embedder(device="cpu", dtype="float32")
    models = tmp_path_factory.mktemp("models")
    (models / "team").mkdir()
    (models / "team" / "smol-copy.gguf").symlink_to(default_llm_gguf())  # a GGUF file the picker must list
    hf_cache = tmp_path_factory.mktemp("hf-cache")
    snapshot = hf_cache / "models--acme--tiny-chat" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llama"}')  # cached, but its weights are missing
    config = DemoConfig(
        low_bit=DEMO_LOW_BIT,
        device="cpu",
        data_dir=tmp_path_factory.mktemp("demo"),
        max_upload_mb=1,
        max_new_tokens=16,
        preload=False,
        sample_articles=2,
        graphrag_transcript=GRAPHRAG_DATA / "transcript.jsonl",
        graphrag_settings=GRAPHRAG_DATA / "settings.yaml",
        ppl_tokens=64,
        bench_new_tokens=8,
        concurrent_answers=2,
        model_dirs=(models,),
        hf_cache=hf_cache,
    )
    demo, url = launch(config, port=_free_port(), block=False, quiet=True, llm=llm, embedder=embedder)
    yield SimpleNamespace(demo=demo, url=url, config=config, llm=llm, ctx=demo.xpullm_context)
    demo.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """Where the browser tests save their screenshots: a temporary folder, so a test run leaves the checkout
    unchanged; `make screenshots` sets XPULLM_SCREENSHOTS=docs/img to re-take the README's pictures."""
    target = os.environ.get("XPULLM_SCREENSHOTS")
    if not target:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(target) if Path(target).is_absolute() else ROOT / target
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory) -> Path:
    """A tiny corpus with facts no model knows, plus a file type no parser reads."""
    d = tmp_path_factory.mktemp("docs")
    (d / "zorblat.txt").write_text(
        "The Zorblat Lighthouse\n\nThe Zorblat Lighthouse stands on Kerrow Point. It was built in 1873 by the "
        "engineer Alma Fenwick. Its lamp is painted cobalt blue and can be seen from 19 nautical miles.\n"
    )
    (d / "quillon.md").write_text(
        "# Quillon Bakery\n\nThe Quillon Bakery in Mardale sells rye bread every Tuesday. It was founded by "
        "Tomas Quill in 1990.\n"
    )
    (d / "malware.exe").write_bytes(b"MZ\x90\x00not a document")
    return d
