"""`GraphRAG`: one project folder (settings, cache, output) with `index`, `update` and `query`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from xpullm.answers import AnswerStream
from xpullm.graphrag.cache import LLMCache
from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.chunking import load_inputs
from xpullm.graphrag.config import GraphRAGConfig
from xpullm.graphrag.errors import ConfigError, IndexNotFound
from xpullm.graphrag.index import IndexResult, run_index
from xpullm.graphrag.query import GraphAnswer, QueryEngine
from xpullm.graphrag.stats import IndexStats, read_stats
from xpullm.graphrag.tables import TableStore
from xpullm.protocols import EmbeddingModel, TextEngine
from xpullm.scaleout import Executor, make_executor

__all__ = ["GraphRAG", "init_project"]

SETTINGS = "settings.yaml"


def init_project(root: str | Path, config: GraphRAGConfig | None = None, overwrite: bool = False) -> Path:
    """Create ROOT with `settings.yaml` and an empty `input/` folder; returns the settings path."""
    root = Path(root)
    settings = root / SETTINGS
    if settings.exists() and not overwrite:
        raise ConfigError(
            f"{str(settings)!r} already exists; pass overwrite=True (CLI: --force) to replace it"
        )
    (root / "input").mkdir(parents=True, exist_ok=True)
    (config or GraphRAGConfig()).to_yaml(settings)
    return settings


class GraphRAG:
    """A GraphRAG project rooted at `root`.

    llm / embedder: objects following the engine contract (`xpullm.LLM`, `xpullm.Embedder` or your own); None loads
    the packaged defaults on first use. config: None reads `ROOT/settings.yaml` when it exists, else defaults.
    transcript: a JSONL transcript whose answers are put in front of the cache (replay a recorded job).
    """

    def __init__(
        self,
        root: str | Path,
        llm: TextEngine | None = None,
        embedder: EmbeddingModel | None = None,
        config: GraphRAGConfig | None = None,
        transcript: str | Path | None = None,
    ) -> None:
        self.root = Path(root)
        if config is None:
            settings = self.root / SETTINGS
            config = GraphRAGConfig.from_yaml(settings) if settings.exists() else GraphRAGConfig()
        self.config = config
        self._llm = llm
        self._embedder = embedder
        self.store = TableStore(self.root / "output")
        cache_path = None if config.cache.mode == "off" else self.root / config.cache.path
        self.cache = LLMCache(cache_path, mode=config.cache.mode, transcript=transcript)
        self.query_stats = IndexStats()  # query calls are counted here, not in the index's stats.json

    @property
    def llm(self) -> TextEngine:
        """The engine object (the packaged default `xpullm.LLM()` is loaded on first use)."""
        if self._llm is None:
            from xpullm.engine import LLM

            self._llm = LLM()
        return self._llm

    @property
    def embedder(self) -> EmbeddingModel:
        """The embedder object (the packaged default `xpullm.Embedder()` is loaded on first use)."""
        if self._embedder is None:
            from xpullm.embeddings import Embedder

            self._embedder = Embedder()
        return self._embedder

    def _caller(self, stats: IndexStats, executor: Executor | None = None) -> LLMCaller:
        return LLMCaller(
            self.llm, self.cache, stats, self.config.llm, progress=self.config.progress, executor=executor
        )

    def _run(
        self,
        inputs: str | Path | Iterable[str | Path] | None,
        executor: Executor | str | None,
        update: bool,
    ) -> IndexResult:
        runner = make_executor(executor)
        try:
            docs = self._inputs(inputs, runner)
            stats = IndexStats(path=self.store.dir / "stats.json")
            stats.info["executor"] = repr(runner)
            caller = self._caller(stats, runner)
            return run_index(docs, caller, self.embedder, self.store, self.config, stats, update=update)
        finally:
            if runner is not executor:  # made here from a name: ours to close
                runner.close()

    def _inputs(self, inputs: str | Path | Iterable[str | Path] | None, executor: Executor) -> list[Any]:
        if inputs is None:
            folder = self.root / "input"
            if not folder.is_dir():
                raise ConfigError(
                    f"no inputs given and {str(folder)!r} does not exist; pass files, folders or texts"
                )
            inputs = folder
        return load_inputs(inputs, executor)

    def index(
        self,
        inputs: str | Path | Iterable[str | Path] | None = None,
        executor: Executor | str | None = None,
    ) -> IndexResult:
        """Index documents (paths, folders or raw texts; None: ROOT/input), replacing any earlier index.

        executor: where parsing, chunking, LLM calls and embeddings run: None (this process), "ray" (the Ray
        cluster Ray finds; CLI `--ray`), "ray:HOST:PORT", or an `xpullm.scaleout.Executor`. This process stays the
        only writer of the tables, the LLM cache and stats.json (docs/scale-out.md).
        """
        return self._run(inputs, executor, update=False)

    def update(
        self,
        new_inputs: str | Path | Iterable[str | Path] | None = None,
        executor: Executor | str | None = None,
    ) -> IndexResult:
        """Add documents to an existing index: only new text units are extracted, unchanged reports are kept.

        A document already indexed from the same path (or under the same title) with other text is replaced.
        executor: as for `index`."""
        if not self.store.exists():
            raise IndexNotFound(
                f"no index under {str(self.store.dir)!r}; run index() (CLI: `xpullm graphrag index`) first"
            )
        return self._run(new_inputs, executor, update=True)

    def delete(self, documents: str | Iterable[str]) -> IndexResult:
        """Remove indexed documents (named by source path, title or id) with their text units, and every entity,
        relationship and report that only they supported; the rest of the index is kept (cache hits)."""
        if not self.store.exists():
            raise IndexNotFound(
                f"no index under {str(self.store.dir)!r}; run index() (CLI: `xpullm graphrag index`) first"
            )
        names = [documents] if isinstance(documents, str) else [str(d) for d in documents]
        stats = IndexStats(path=self.store.dir / "stats.json")
        return run_index(
            [], self._caller(stats), self.embedder, self.store, self.config, stats, update=True, remove=names
        )

    def query(
        self, question: str, method: str = "local", community_level: int | None = None, stream: bool = False
    ) -> GraphAnswer | AnswerStream[GraphAnswer]:
        """Answer `question` with method "local" | "global" | "basic" | "drift" (see docs/graphrag.md)."""
        if not self.store.exists():
            raise IndexNotFound(
                f"no index under {str(self.store.dir)!r}; run index() (CLI: `xpullm graphrag index`) first"
            )
        engine = QueryEngine(
            self.store, self._caller(self.query_stats), lambda: self.embedder, self.config.query
        )
        return engine.query(question, method=method, community_level=community_level, stream=stream)

    def table(self, name: str) -> Any:
        """An output table as a pandas DataFrame (e.g. "entities", "community_reports")."""
        return self.store.read_frame(name)

    def stats(self) -> dict[str, Any]:
        """The last index/update run's stats.json."""
        path = self.store.dir / "stats.json"
        if not path.exists():
            raise IndexNotFound(f"{str(path)!r} does not exist; run index() first")
        return read_stats(path)

    def close(self) -> None:
        """Close the cache file."""
        self.cache.close()
