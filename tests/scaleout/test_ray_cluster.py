"""GraphRAG indexing and KB ingestion on a real two-node Ray cluster (`ray start --head` + `ray start --address`).

Both nodes run on this machine with one CPU and 100 MB of object store each, so the executor's two workers land one
per node. LLM answers are replayed from the recorded GraphRAG transcript (exact); the embedder is the real packaged
model in float32. Workers are SIGKILLed mid-job, and a driver is SIGKILLed mid-index, to check that nothing is
repeated or duplicated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install 'xpullm[ray]' (make venv installs it)"
)

from xpullm.graphrag import GraphRAG, GraphRAGConfig, TranscriptLLM  # noqa: E402
from xpullm.rag import KBConfig, KnowledgeBase  # noqa: E402
from xpullm.scaleout.ray_cluster import RayExecutor  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "graphrag" / "data"
TRANSCRIPT = DATA / "transcript.jsonl"
TABLES = ("documents", "text_units", "entities", "relationships", "communities", "community_reports")
CLOCK_COLUMNS = ("creation_date", "period")  # the day the index ran


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args() -> list[str]:
    # Every port picked free, so this cluster never collides with another one on the machine.
    ports = ("dashboard-agent-listen", "dashboard-agent-grpc", "runtime-env-agent", "metrics-export")
    ports += ("node-manager", "object-manager")
    return [
        "--block",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        *[f"--{p}-port={_free_port()}" for p in ports],
    ]


# Token authentication off: a token file another Ray left in ~/.ray must not split the nodes and the driver.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _start(args: list[str], log: Path, folder: Path) -> subprocess.Popen:
    env = {**os.environ, **RAY_ENV, "PYTHONSAFEPATH": "1"}
    ray_cli = Path(sys.executable).parent / "ray"
    return subprocess.Popen(
        [str(ray_cli), "start", *args],
        cwd=folder,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown stops exactly what it started
    )


def _wait_started(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in log.read_text():
        assert proc.poll() is None, f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"ray start did not come up:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster():
    """(address, executor): a head and a second node, and a driver connection with one worker per node."""
    # Ray's unix sockets live under --temp-dir and must stay under 107 bytes: a short folder, removed afterwards.
    folder = Path(tempfile.mkdtemp(prefix="xpr-"))
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # the driver (this process) and the drivers it starts
    port = _free_port()
    head_log, node_log = folder / "head.log", folder / "node.log"
    head = _start(
        [
            "--head",
            f"--port={port}",
            f"--temp-dir={folder / 't'}",
            "--include-dashboard=false",
            *_node_args(),
        ],
        head_log,
        folder,
    )
    procs = [head]
    executor = None
    try:
        _wait_started(head, head_log)
        address = f"127.0.0.1:{port}"
        node = _start([f"--address={address}", *_node_args()], node_log, folder)
        procs.append(node)
        _wait_started(node, node_log)
        executor = RayExecutor(address, workers=2, num_cpus=0.5)  # half the cluster: a second driver fits
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(0.3)
        yield address, executor
    finally:
        if executor is not None:
            executor.close()
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def embedder():
    from xpullm.embeddings import Embedder

    return Embedder(device="cpu", dtype="float32")  # float32: vectors agree across batchings to ~1e-7


@pytest.fixture(scope="module")
def config():
    return GraphRAGConfig.from_yaml(DATA / "settings.yaml")


@pytest.fixture(scope="module")
def local_index(tmp_path_factory, embedder, config):
    """The recorded corpus indexed in this process: what every distributed run must reproduce."""
    rag = GraphRAG(
        tmp_path_factory.mktemp("local"), llm=TranscriptLLM(TRANSCRIPT), embedder=embedder, config=config
    )
    result = rag.index(DATA / "corpus")
    yield rag, result
    rag.close()


def _tables(rag: GraphRAG) -> dict[str, list[dict]]:
    return {
        name: [{k: v for k, v in row.items() if k not in CLOCK_COLUMNS} for row in rag.store.read(name)]
        for name in TABLES
    }


def _cache(rag: GraphRAG) -> dict[str, object]:
    return {e.key: e for e in rag.cache.entries()}


def _assert_same_index(rag: GraphRAG, local: GraphRAG) -> None:
    import numpy as np

    assert _tables(rag) == _tables(local)
    assert _cache(rag) == _cache(local)
    for target in local.config.embeddings.targets:
        ours = {r["id"]: r["vector"] for r in rag.store.read_internal(f"vectors.{target}")}
        theirs = {r["id"]: r["vector"] for r in local.store.read_internal(f"vectors.{target}")}
        assert ours.keys() == theirs.keys()
        for key, vector in theirs.items():  # batch padding differs: float32 rounding only
            np.testing.assert_allclose(ours[key], vector, atol=2e-6)


def test_two_nodes_one_worker_each(cluster):
    _, executor = cluster
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2 and executor.workers == 2
    assert len(set(executor.worker_pids())) == 2


def test_graphrag_index_on_ray_equals_local(cluster, tmp_path, embedder, config, local_index):
    local, local_result = local_index
    _, executor = cluster
    rag = GraphRAG(tmp_path / "ray", llm=TranscriptLLM(TRANSCRIPT), embedder=embedder, config=config)
    result = rag.index(DATA / "corpus", executor=executor)
    assert (
        (result.entities, result.relationships)
        == (local_result.entities, local_result.relationships)
        == (14, 19)
    )
    assert result.stats["totals"]["llm_calls"] == local_result.stats["totals"]["llm_calls"] > 0
    assert result.stats["info"]["executor"].startswith("RayExecutor(")
    _assert_same_index(rag, local)
    rag.close()


def test_graphrag_worker_sigkilled_mid_index_is_retried(cluster, tmp_path, embedder, config, local_index):
    local, _ = local_index
    _, executor = cluster
    log = tmp_path / "engine.log"
    llm = TranscriptLLM(TRANSCRIPT, delay_s=0.05, log_path=log)  # slow enough to be killed mid-extraction
    victim = executor.worker_pids()[0]
    killed = threading.Event()

    def kill_after_some_calls() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().split()) >= 8:
                os.kill(victim, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_some_calls, daemon=True)
    killer.start()
    rag = GraphRAG(tmp_path / "ray", llm=llm, embedder=embedder, config=config)
    result = rag.index(DATA / "corpus", executor=executor)
    killer.join(timeout=5)
    assert killed.is_set()
    assert victim not in executor.worker_pids()  # Ray restarted that worker in a new process
    assert result.stats["status"] == "done"
    assert result.stats["totals"]["llm_calls"] == len(rag.cache)  # each call stored once
    _assert_same_index(rag, local)
    rag.close()


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from xpullm.graphrag import GraphRAG, GraphRAGConfig, TranscriptLLM
    from xpullm.scaleout.ray_cluster import RayExecutor
    data, root, address = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    llm = TranscriptLLM(data / "transcript.jsonl", delay_s=0.1)
    rag = GraphRAG(root, llm=llm, config=GraphRAGConfig.from_yaml(data / "settings.yaml"))
    rag.index(data / "corpus", executor=RayExecutor(address, workers=2, num_cpus=0.5))
    """
)


def test_driver_sigkilled_then_rerun_repeats_no_stored_call(cluster, tmp_path, embedder, config, local_index):
    local, _ = local_index
    address, executor = cluster
    root = tmp_path / "project"
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", DRIVER, str(DATA), str(root), address],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    stats = root / "output" / "stats.json"
    deadline = time.monotonic() + 180
    while not (stats.exists() and json.loads(stats.read_text())["totals"]["llm_calls"] >= 8):
        assert child.poll() is None, child.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the driver never got through 8 LLM calls"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    with sqlite3.connect(root / "cache" / "llm.sqlite") as db:
        stored = {k for (k,) in db.execute("SELECT key FROM calls")}
    assert len(stored) >= 8

    log = tmp_path / "rerun.log"
    rag = GraphRAG(root, llm=TranscriptLLM(TRANSCRIPT, log_path=log), embedder=embedder, config=config)
    result = rag.index(DATA / "corpus", executor=executor)
    asked = set(log.read_text().split())
    assert not asked & stored, "a call stored before the kill reached the engine again"
    assert result.stats["totals"]["cache_hits"] >= len(stored)
    _assert_same_index(rag, local)
    rag.close()


def _kb_files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "docs"
    folder.mkdir()
    for src in [*sorted((DATA / "articles").glob("*.txt")), *sorted((DATA / "corpus").glob("*.txt"))]:
        shutil.copy(src, folder / src.name)
    return sorted(folder.iterdir())


def _kb_content(kb: KnowledgeBase) -> tuple[list, list]:
    docs = sorted((Path(d.source).name, d.content_hash, d.n_chunks, d.title) for d in kb.documents())
    chunks = kb.store.get_chunks(sorted(kb.store.chunk_ids())).values()
    return docs, sorted((c.doc_id, c.ordinal, c.section, c.text) for c in chunks)


def _kb_vectors(kb: KnowledgeBase):
    chunks = sorted(
        kb.store.get_chunks(sorted(kb.store.chunk_ids())).values(), key=lambda c: (c.doc_id, c.ordinal)
    )
    return kb.store.get_vectors([c.chunk_id for c in chunks])


def test_kb_add_on_ray_with_a_worker_sigkilled_equals_local(cluster, tmp_path, embedder):
    import numpy as np

    _, executor = cluster
    files = _kb_files(tmp_path)
    config = KBConfig(chunk_tokens=40, overlap_tokens=8, ingest_batch_chunks=4)  # many commits
    local = KnowledgeBase.create(tmp_path / "local", embedder=embedder, config=config)
    local_report = local.add(files)

    victim = executor.worker_pids()[1]
    kills = []

    def kill_once(progress) -> None:  # after the first committed batch: the job is mid-way
        if not kills:
            os.kill(victim, signal.SIGKILL)
            kills.append(progress.docs_done)

    kb = KnowledgeBase.create(tmp_path / "ray", embedder=embedder, config=config)
    report = kb.add(files, executor=executor, on_progress=kill_once)
    assert kills and kills[0] < len(files)
    assert victim not in executor.worker_pids()
    assert report.chunks == local_report.chunks > len(files)
    assert sorted(report.added) == sorted(local_report.added) and not report.failed
    assert _kb_content(kb) == _kb_content(local)  # nothing lost, nothing twice
    counts = kb.check()
    assert counts == local.check()
    assert (
        counts["chunks"] == counts["vectors"] == counts["fts_rows"] == report.chunks
    )  # store and index agree
    np.testing.assert_allclose(_kb_vectors(kb), _kb_vectors(local), atol=2e-6)
    kb.close()
    local.close()


def test_cli_ray_options_build_a_ray_executor(cluster):
    from xpullm.cli.main import build_parser
    from xpullm.scaleout.cli import executor_from_args

    address, _ = cluster
    args = build_parser().parse_args(["kb", "add", "KB", "a.txt", "--ray"])
    assert args.ray == "auto"
    args = build_parser().parse_args(
        ["graphrag", "index", "--ray", address, "--ray-workers", "1", "--ray-cpus", "0.5"]
    )
    executor = executor_from_args(args)
    assert isinstance(executor, RayExecutor) and executor.address == address
    from xpullm.graphrag.chunking import parse_task  # workers import pieces by name: an installed module's

    pieces = [(b"Ada met Bo.", "a.txt", "a.txt"), (b"Bo left.", "b.txt", "b.txt")]
    docs = sorted(executor.map(parse_task, pieces))
    assert [(i, d.title, d.text) for i, d in docs] == [(0, "a.txt", "Ada met Bo."), (1, "b.txt", "Bo left.")]
    assert executor.workers == 1
    executor.close()
