"""`xpullm kb create|add|ls|search|ask|resume|rm`: knowledge bases from the command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from xpullm.scaleout.cli import add_executor_arguments, executor_from_args

if TYPE_CHECKING:
    from xpullm.protocols import EmbeddingModel
    from xpullm.rag.kb import KnowledgeBase
    from xpullm.scaleout import Executor

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `kb` command group to the `xpullm` parser."""
    kb = subparsers.add_parser(
        "kb",
        help="knowledge bases: ingest files, hybrid search, grounded answers with citations",
        description="Local knowledge bases (one folder: SQLite + FTS5 + FAISS). Example:\n"
        "  xpullm kb create my_kb\n  xpullm kb add my_kb docs/ --template auto\n"
        '  xpullm kb search my_kb "how do I reset it?"\n  xpullm kb ask my_kb "how do I reset it?"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kb.set_defaults(func=lambda _args: (kb.print_help(), 2)[1])
    sub = kb.add_subparsers(dest="kb_command", metavar="<action>")

    p = sub.add_parser("create", help="create an empty knowledge base folder")
    p.add_argument("path", help="folder to create the base in")
    p.add_argument(
        "--embedder",
        default=None,
        help="embedding model folder or hub id (default: packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("--chunk-tokens", type=int, default=200, help="embedder tokens per chunk (default: 200)")
    p.add_argument(
        "--overlap-tokens", type=int, default=32, help="tokens shared by neighbouring chunks (default: 32)"
    )
    p.set_defaults(func=_guard(_create))

    p = sub.add_parser("add", help="ingest files or folders (re-adding unchanged files is a no-op)")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("files", nargs="+", help="files and/or folders (folders are walked recursively)")
    p.add_argument(
        "--template",
        default="auto",
        help="chunking template: auto, naive, qa, book, manual, table, one (default: auto)",
    )
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata for every document (repeatable)",
    )
    add_executor_arguments(p)
    p.set_defaults(func=_guard(_add))

    p = sub.add_parser("ls", help="list documents (or ingestion jobs)")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("--jobs", action="store_true", help="list ingestion jobs instead of documents")
    p.add_argument(
        "--check", action="store_true", help="print consistency counts (chunks, vectors, FTS rows)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(_ls))

    p = sub.add_parser("search", help="hybrid (BM25 + vector) search")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("query", help="search text")
    _search_args(p, top_k=5)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_guard(_search))

    p = sub.add_parser("ask", help="answer a question from the base, with [n] citations")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("question", help="the question")
    _search_args(p, top_k=4)
    p.add_argument(
        "--model", "-m", default=None, help="LLM folder / .gguf / hub id (default: packaged SmolLM2)"
    )
    p.add_argument(
        "--low-bit", default=None, help="low-bit format of the LLM (default: the checkpoint's own)"
    )
    p.add_argument("--max-new-tokens", "-n", type=int, default=256, help="answer length limit (default: 256)")
    p.add_argument(
        "--no-stream", action="store_true", help="print the answer at the end instead of streaming"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output (implies --no-stream)")
    p.set_defaults(func=_guard(_ask))

    p = sub.add_parser("resume", help="finish interrupted ingestion jobs (or --cancel them)")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("--cancel", action="store_true", help="close interrupted jobs without finishing them")
    add_executor_arguments(p)
    p.set_defaults(func=_guard(_resume))

    p = sub.add_parser("rm", help="remove documents (by id or source path)")
    p.add_argument("path", help="knowledge base folder")
    p.add_argument("documents", nargs="+", help="document ids (see `xpullm kb ls`) or source paths")
    p.set_defaults(func=_guard(_rm))


def _search_args(p: argparse.ArgumentParser, top_k: int) -> None:
    p.add_argument("-k", "--top-k", type=int, default=top_k, help=f"number of chunks (default: {top_k})")
    p.add_argument(
        "--vector-weight", type=float, default=0.5, help="1 = vector only, 0 = keyword only (default: 0.5)"
    )
    p.add_argument("--fusion", default="weighted", choices=["weighted", "rrf"], help="how results are fused")
    p.add_argument(
        "--min-similarity", type=float, default=None, help="drop chunks below this cosine similarity"
    )


_EMBEDDERS: dict[str, EmbeddingModel] = {}


class _StoredEmbedder:
    """The base's embedder as its stored name and dimension; the model loads only if a text is embedded.

    `kb ls` and `kb rm` read or delete stored rows and never embed: loading the model (seconds) is skipped.
    """

    def __init__(self, name: str, dim: int) -> None:
        self._name, self._dim = name, dim

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def _model(self) -> EmbeddingModel:
        from xpullm.embeddings import as_embedding_model
        from xpullm.models import DEFAULT_EMBEDDER_NAME

        if self._name not in _EMBEDDERS:
            _EMBEDDERS[self._name] = as_embedding_model(
                None if self._name == DEFAULT_EMBEDDER_NAME else self._name
            )
        return _EMBEDDERS[self._name]

    def embed_matrix(self, texts: Any, batch_size: int = 32, show_progress: bool | None = None) -> Any:
        return self._model().embed_matrix(texts, batch_size=batch_size, show_progress=show_progress)

    def count_tokens(self, text: str) -> int:
        return self._model().count_tokens(text)


def _open(path: str, read_only: bool = False, embeds: bool = True) -> KnowledgeBase:
    """Open a base, reusing an already loaded embedder of the same model within this process; `embeds=False`
    (a command that embeds nothing) opens it without loading the embedder."""
    from pathlib import Path

    from xpullm.rag import KnowledgeBase
    from xpullm.rag.storage.registry import read_base_meta

    name = KnowledgeBase.stored_embedder(path)
    if name not in _EMBEDDERS and not embeds:
        folder = Path(path).expanduser().absolute()
        _, dim, _ = read_base_meta(folder, f"`xpullm kb create {folder}`")
        return KnowledgeBase.open(path, embedder=_StoredEmbedder(name, dim), read_only=read_only)
    if name not in _EMBEDDERS:
        kb = KnowledgeBase.open(path, read_only=read_only)
        _EMBEDDERS[name] = kb.embedder
        return kb
    return KnowledgeBase.open(path, embedder=_EMBEDDERS[name], read_only=read_only)


def _guard(fn: Any) -> Any:
    """Known errors become one readable line and exit code 1, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from xpullm.errors import XPULLMError

        try:
            return fn(args)
        except (XPULLMError, ValueError, FileNotFoundError, TypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def _create(args: argparse.Namespace) -> int:
    from xpullm.rag import KBConfig, KnowledgeBase

    config = KBConfig(chunk_tokens=args.chunk_tokens, overlap_tokens=args.overlap_tokens)
    from xpullm.models import DEFAULT_EMBEDDER_NAME

    embedder = _EMBEDDERS.get(args.embedder or DEFAULT_EMBEDDER_NAME, args.embedder)
    with KnowledgeBase.create(args.path, embedder=embedder, config=config) as kb:
        _EMBEDDERS.setdefault(KnowledgeBase.stored_embedder(args.path), kb.embedder)
        print(f"created {kb.path} (embedder {kb.embedder.model_name}, {kb.embedder.dim}-d)")
    return 0


def _add(args: argparse.Namespace) -> int:

    meta = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta {item!r} must look like KEY=VALUE")
        meta[key] = value
    with _open(args.path) as kb, _executor(args) as executor:
        report = kb.add(
            args.files, template=args.template, metadata=meta or None, show_progress=True, executor=executor
        )
        left = [j["job_id"] for j in kb.jobs() if j["status"] == "interrupted"]
    print(report)
    if left:
        print(
            f"interrupted jobs {left} still have unfinished files: `xpullm kb resume {args.path}` (or --cancel)"
        )
    return 1 if report.failed and not (report.added or report.replaced or report.skipped) else 0


@contextlib.contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Executor | None]:
    """The executor --ray asks for (None: this process), closed afterwards."""
    executor = executor_from_args(args)
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def _ls(args: argparse.Namespace) -> int:

    with _open(args.path, read_only=True, embeds=False) as kb:
        if args.check:
            print(json.dumps(kb.check()))
            return 0
        if args.jobs:
            rows = kb.jobs()
            if args.json:
                print(json.dumps(rows))
            for j in rows if not args.json else []:
                counts = ", ".join(f"{n} {s}" for s, n in sorted(j["items"].items()))
                print(f"job {j['job_id']}  {j['status']:<11}  {counts}")
            return 0
        docs = kb.documents()
        if args.json:
            print(json.dumps([{**d.__dict__} for d in docs]))
            return 0
        for d in docs:
            print(f"{d.doc_id}  {d.n_chunks:>5} chunks  {d.template:<7}  {d.title}  ({d.source})")
        print(f"{len(docs)} documents, {sum(d.n_chunks for d in docs)} chunks")
    return 0


def _search_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "top_k": args.top_k,
        "vector_weight": args.vector_weight,
        "fusion": args.fusion,
        "min_similarity": args.min_similarity,
    }


def _search(args: argparse.Namespace) -> int:

    with _open(args.path, read_only=True) as kb:
        hits = kb.search(args.query, **_search_kwargs(args))
    if args.json:
        print(json.dumps([h.__dict__ for h in hits]))
        return 0
    if not hits:
        print("no results")
    for i, h in enumerate(hits, start=1):
        where = h.document + (f" > {h.section}" if h.section and h.section != h.document else "")
        print(f"[{i}] {h.score:.3f}  {where}  (chunk {h.chunk_id})\n    {h.text[:300].replace(chr(10), ' ')}")
    return 0


def _ask(args: argparse.Namespace) -> int:

    kwargs = _search_kwargs(args)
    top_k = kwargs.pop("top_k")
    min_sim = kwargs.pop("min_similarity")
    with _open(args.path, read_only=True) as kb:
        llm = _load_llm(args)
        ask_kw: dict[str, Any] = {"llm": llm, "top_k": top_k, "max_new_tokens": args.max_new_tokens, **kwargs}
        if min_sim is not None:
            ask_kw["min_similarity"] = min_sim
        if args.json or args.no_stream:
            answer = kb.ask(args.question, **ask_kw)
        else:
            stream = kb.ask(args.question, stream=True, **ask_kw)
            for delta in stream:
                print(delta, end="", flush=True)
            print()
            answer = stream.result()
            dropped = sum(not s.supported for s in answer.support)
            if dropped:  # the stream showed the model's draft; say what the support check kept
                print(
                    f"answer-support check: {dropped} unsupported sentence(s) dropped; answer: {answer.text}"
                )
    if args.json:
        print(
            json.dumps(
                {
                    "text": answer.text,
                    "citations": {n: c.__dict__ for n, c in answer.citations.items()},
                    "references": {n: c.__dict__ for n, c in answer.references.items()},
                    "grounded": answer.grounded,
                    "refused": answer.refused,
                    "citation_mode": answer.citation_mode,
                    "support": [s.__dict__ for s in answer.support],
                }
            )
        )
        return 0
    if args.no_stream:
        print(answer.text)
    if answer.grounded and not answer.citations and not answer.refused:
        print("sources given (the answer cites none of them):")
    for n, c in answer.references.items():
        print(f"  [{n}] {c.document} (chunk {c.chunk_id}): {c.text[:120].replace(chr(10), ' ')}")
    return 0


def _resume(args: argparse.Namespace) -> int:
    with _open(args.path) as kb:
        if args.cancel:
            closed = kb.cancel_jobs()
            print(f"cancelled jobs {closed}" if closed else "no interrupted jobs")
            return 0
        with _executor(args) as executor:
            reports = kb.resume(executor=executor)
        for report in reports:
            print(report)
        if not reports:
            print("no interrupted jobs")
    return 0


def _load_llm(args: argparse.Namespace) -> Any:
    from xpullm.engine import LLM

    return LLM(model=args.model, low_bit=args.low_bit)


def _rm(args: argparse.Namespace) -> int:

    with _open(args.path, embeds=False) as kb:
        for doc in args.documents:
            n = kb.delete(doc)
            print(f"removed {doc} ({n} chunks)")
    return 0
