"""`xpullm graphrag init|index|update|query`: the CLI plug-in of the GraphRAG pipeline (see docs/graphrag.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from xpullm.graphrag.query import METHODS
from xpullm.scaleout.cli import add_executor_arguments, executor_from_args

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the `graphrag` command and its subcommands (init, index, update, delete, query) to the xpullm CLI."""
    parser = subparsers.add_parser("graphrag", help="GraphRAG indexing and queries on a local model")
    sub = parser.add_subparsers(dest="graphrag_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--root", default=".", help="project folder (holds settings.yaml, cache/, output/)")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model", default=None, help="LLM: HF folder, GGUF file or hub id (default: packaged model)"
        )
        p.add_argument("--low-bit", default="sym_int4", help="weight format of the LLM")
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | xpu")
        p.add_argument(
            "--embedder", default=None, help="embedding model folder or hub id (default: packaged)"
        )
        p.add_argument(
            "--transcript", default=None, help="JSONL transcript to replay (answers taken from it)"
        )

    p = sub.add_parser("init", help="create ROOT/settings.yaml and ROOT/input/")
    common(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing settings.yaml")
    p.set_defaults(func=_init)

    for name, helptext in (
        ("index", "index documents (default: ROOT/input)"),
        ("update", "add new documents"),
    ):
        p = sub.add_parser(name, help=helptext)
        common(p)
        model_args(p)
        p.add_argument("inputs", nargs="*", help="files, folders or raw texts (default: ROOT/input)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        add_executor_arguments(p)
        p.set_defaults(func=_index if name == "index" else _update)

    p = sub.add_parser("delete", help="remove indexed documents (by path, title or id)")
    common(p)
    model_args(p)
    p.add_argument("documents", nargs="+", help="source paths, titles or ids of indexed documents")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_delete)

    p = sub.add_parser("query", help="answer a question from the index")
    common(p)
    model_args(p)
    p.add_argument("question")
    p.add_argument("--method", default="local", choices=METHODS)
    p.add_argument("--community-level", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    p.add_argument("--json", action="store_true", help="print the answer and its context records as JSON")
    p.set_defaults(func=_query)


def _project(args: argparse.Namespace) -> Any:
    from xpullm.graphrag.project import GraphRAG

    llm = embedder = None
    if getattr(args, "transcript", None):
        from xpullm.graphrag.transcript import TranscriptLLM

        llm = TranscriptLLM(args.transcript)
    elif args.model is not None or args.low_bit != "sym_int4" or args.device != "auto":
        from xpullm.engine import LLM

        llm = LLM(model=args.model, low_bit=args.low_bit, device=args.device)
    if args.embedder is not None:
        from xpullm.embeddings import Embedder

        embedder = Embedder(model=args.embedder, device=args.device)
    rag = GraphRAG(args.root, llm=llm, embedder=embedder)
    if getattr(args, "no_progress", False):
        rag.config = rag.config.replace(progress=False)
    return rag


def _init(args: argparse.Namespace) -> int:
    from xpullm.graphrag.project import init_project

    path = init_project(args.root, overwrite=args.force)
    print(
        f"wrote {path}; put documents in {path.parent / 'input'} and run `xpullm graphrag index --root {args.root}`"
    )
    return 0


# Counters that report what a run did, not a problem it handled: printed as facts, not under "handled problems".
_FACTS = {  # counters of stats.json as a sentence reads them (others print under their own key)
    "embeddings.vectors_embedded": "vectors embedded",
    "embeddings.vectors_reused": "vectors reused",
    "update.documents_already_indexed": "documents already indexed",
    "update.documents_replaced": "documents replaced",
    "update.documents_deleted": "documents deleted",
    "community_reports.reused": "community reports reused",
}


def _run_index(args: argparse.Namespace, update: bool) -> int:
    rag = _project(args)
    inputs = args.inputs or None
    executor = executor_from_args(args)
    try:
        result = rag.update(inputs, executor) if update else rag.index(inputs, executor)
    finally:
        if executor is not None:
            executor.close()
    _report(result, "updated" if update else "indexed")
    rag.close()
    return 0


def _delete(args: argparse.Namespace) -> int:
    rag = _project(args)
    _report(rag.delete(args.documents), "kept")
    rag.close()
    return 0


def _report(result: Any, verb: str) -> None:
    from xpullm.units import human_duration

    totals = result.stats["totals"]
    print(
        f"{verb} {result.documents} documents: {result.text_units} text units "
        f"({result.new_text_units} new), {result.entities} entities, {result.relationships} relationships, "
        f"{result.communities} communities, {result.community_reports} reports in {human_duration(totals['seconds'])}"
    )
    print(
        f"LLM calls: {totals['llm_calls']:,} ({totals['cache_hits']:,} answered from the cache), "
        f"{totals['prompt_tokens']:,} prompt + {totals['completion_tokens']:,} completion tokens"
    )
    print(f"extraction method: {result.stats['info'].get('extraction_method_reason', '?')}")
    counters = result.stats.get("counters", {})
    if counters:
        print("also: " + ", ".join(f"{v:,} {_FACTS.get(k, k)}" for k, v in counters.items()))
    if result.stats["issues"]:
        print(
            "handled problems (details in stats.json): "
            + ", ".join(f"{k}={v}" for k, v in sorted(result.stats["issues"].items()))
        )


def _index(args: argparse.Namespace) -> int:
    return _run_index(args, update=False)


def _update(args: argparse.Namespace) -> int:
    return _run_index(args, update=True)


def _query(args: argparse.Namespace) -> int:
    rag = _project(args)
    result = rag.query(
        args.question, method=args.method, community_level=args.community_level, stream=args.stream
    )
    if args.stream:
        for piece in result:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        answer = result.answer
    else:
        answer = result
        if not args.json:
            print(answer.text)
    if args.json:
        print(
            json.dumps(
                {
                    "text": answer.text,
                    "method": answer.method,
                    "context": [vars(r) for r in answer.context],
                    "details": answer.details,
                },
                indent=2,
                default=str,
            )
        )
    rag.close()
    return 0
