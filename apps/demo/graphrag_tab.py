"""The GraphRAG tab: index the sample or uploaded documents with per-stage progress, query with a method selector,
see the entity graph coloured by community, and read the community reports.

Public API endpoints: `/graphrag_index` (project, source, files) and `/graphrag_query` (project, question, method).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from xpullm.apps.demo.context import LLM_QUEUE, DemoContext
from xpullm.apps.demo.errors import UserFacingError, friendly
from xpullm.apps.demo.samples import sample_articles, write_articles
from xpullm.apps.demo.streaming import stream_in_thread
from xpullm.graphrag.query import METHODS
from xpullm.graphrag.stats import STAGES

if TYPE_CHECKING:
    from xpullm.graphrag import GraphRAG

__all__ = ["STAGES", "GraphProjects", "build_graphrag_tab"]

SOURCES = ("sample corpus", "uploaded files")
REPORT_HEADERS = ["community", "level", "title", "rating", "summary"]
CONTEXT_HEADERS = ["kind", "id", "text"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TEXT_TYPES = (".txt", ".md")


def demo_graphrag_config() -> Any:
    """Settings that let a 135M model index a few articles on a laptop CPU in minutes (small units, no gleaning)."""
    from xpullm.graphrag import GraphRAGConfig

    return GraphRAGConfig().replace(
        chunks={"size": 300, "overlap": 30},
        extract_graph={"max_gleanings": 0, "max_new_tokens": 400},
        summarize_descriptions={"max_new_tokens": 120},
        community_reports={"max_new_tokens": 400},
        query={"max_new_tokens": 256, "max_context_tokens": 1500},
        progress=False,
    )


class GraphProjects:
    """GraphRAG projects under DATA_DIR/graphrag; each call opens a fresh `GraphRAG` on the current model."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self.root = ctx.config.data_dir / "graphrag"

    def folder(self, name: str | None) -> Path:
        name = (name or "").strip()
        if not _NAME.match(name):
            raise UserFacingError(
                f"project name {name!r} is not valid; use 1-64 letters, digits, '-', '_' or '.'"
            )
        return self.root / name

    def open(self, name: str | None) -> Any:
        """A `GraphRAG` for project `name` (replaying the configured transcript, if any)."""
        from xpullm.graphrag import GraphRAG, GraphRAGConfig

        cfg = self.ctx.config
        folder = self.folder(name)
        if cfg.graphrag_transcript is not None:
            from xpullm.graphrag import TranscriptLLM

            settings = (
                GraphRAGConfig.from_yaml(cfg.graphrag_settings) if cfg.graphrag_settings else GraphRAGConfig()
            )
            return GraphRAG(
                folder,
                llm=TranscriptLLM(cfg.graphrag_transcript),
                embedder=self.ctx.embedder,
                config=settings.replace(cache={"mode": "replay"}, progress=False),
                transcript=cfg.graphrag_transcript,
            )
        settings = (
            GraphRAGConfig.from_yaml(cfg.graphrag_settings)
            if cfg.graphrag_settings
            else demo_graphrag_config()
        )
        llm = self.ctx.models.get().llm
        return GraphRAG(folder, llm=llm, embedder=self.ctx.embedder, config=settings.replace(progress=False))


def _stage_table(done: dict[str, float], running: str | None) -> str:
    lines = ["| stage | state |", "|---|---|"]
    for s in STAGES:
        if s in done:
            state = f"done, {done[s]:.1f} s"
        elif s == running:
            state = "running…"
        else:
            state = "·"
        lines.append(f"| {s} | {state} |")
    return "\n".join(lines)


def _read_stats(path: Path, since: float) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if data.get("started", 0) >= since else None  # an older run's file is not this run's progress


def _reports_rows(rag: GraphRAG) -> list[list[Any]]:
    rows = sorted(rag.store.read("community_reports"), key=lambda r: (r["level"], r["community"]))
    return [[r["community"], r["level"], r["title"], r["rank"], r["summary"]] for r in rows]


def graph_html(rag: GraphRAG) -> str:
    """The interactive entity graph of an indexed project (self-contained HTML)."""
    from xpullm.apps.demo.plots import graph_figure, plot_iframe

    entities = rag.store.read("entities")
    if not entities:
        return "<p>The index holds no entities yet.</p>"
    fig = graph_figure(entities, rag.store.read("relationships"), rag.store.read("communities"))
    return plot_iframe(fig, height=560, title="entity graph")


def build_graphrag_tab(ctx: DemoContext) -> dict[str, Any]:
    """Lay out the GraphRAG tab and wire its events."""
    projects = GraphProjects(ctx)
    with gr.Row():
        project = gr.Textbox(value="sample", label="Project", scale=1, elem_id="gr-project")
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Index", scale=2, elem_id="gr-source")
        files = gr.File(
            label="Documents to index (.txt / .md)", file_count="multiple", scale=2, elem_id="gr-upload"
        )
    index_btn = gr.Button("Build the graph index", variant="primary", elem_id="gr-index")
    with gr.Row():
        stages = gr.Markdown(_stage_table({}, None), elem_id="gr-stages")
        progress_md = gr.Markdown("", elem_id="gr-progress")
    with gr.Row():
        question = gr.Textbox(label="Question", scale=4, elem_id="gr-question")
        method = gr.Radio(list(METHODS), value="local", label="Search method", scale=2, elem_id="gr-method")
        ask = gr.Button("Ask", variant="primary", scale=1, elem_id="gr-ask")
    with gr.Row():
        answer_md = gr.Markdown("", elem_id="gr-answer")
        context = gr.Dataframe(
            headers=CONTEXT_HEADERS, label="Context the model saw", interactive=False, elem_id="gr-context"
        )
    with gr.Row():
        show = gr.Button("Show the graph", size="sm")
    graph = gr.HTML("", elem_id="gr-graph")
    reports = gr.Dataframe(
        headers=REPORT_HEADERS, label="Community reports", interactive=False, wrap=True, elem_id="gr-reports"
    )

    def inputs_for(name: str, kind: str, uploaded: list[str] | None) -> tuple[Path, str]:
        folder = projects.folder(name) / "input"
        if kind == SOURCES[1]:
            if not uploaded:
                raise UserFacingError(
                    "no files selected; upload .txt or .md files, or index the sample corpus"
                )
            paths = [Path(p if isinstance(p, str) else p.name) for p in uploaded]
            bad = [p.name for p in paths if p.suffix.lower() not in _TEXT_TYPES]
            if bad:
                raise UserFacingError(f"GraphRAG indexes .txt and .md files; cannot index: {', '.join(bad)}")
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for p in paths:
                shutil.copyfile(p, folder / p.name)
            return folder, f"{len(paths)} uploaded files"
        if kind != SOURCES[0]:
            raise UserFacingError(f"source {kind!r} must be one of: {', '.join(SOURCES)}")
        cfg = ctx.config
        name_, articles = sample_articles(cfg.graphrag_sample_articles, cfg.graphrag_sample_chars)
        shutil.rmtree(folder, ignore_errors=True)
        write_articles(articles, folder)
        return folder, f"{len(articles)} sample articles ({name_})"

    def on_index(name: str, kind: str, uploaded: list[str] | None, progress=gr.Progress()):
        try:
            folder, what = inputs_for(name, kind, uploaded)
            rag = projects.open(name)
        except Exception as exc:
            yield _stage_table({}, None), f"Error: {friendly(exc)}", gr.update()
            return
        box: dict[str, Any] = {}
        since = time.time() - 1.0

        def work() -> None:
            try:
                box["result"] = rag.index(folder)
            except Exception as exc:
                box["error"] = exc

        thread = threading.Thread(target=work, name="xpullm-demo-graphrag", daemon=True)
        thread.start()
        stats_path = rag.store.dir / "stats.json"
        t0 = time.monotonic()
        try:
            while thread.is_alive():
                thread.join(0.5)
                stats = _read_stats(stats_path, since) or {}
                done = {k: v["seconds"] for k, v in stats.get("stages", {}).items()}
                running = next((s for s in STAGES if s not in done), None)
                frac = len(done) / len(STAGES)
                progress(frac, desc=f"GraphRAG: {running or 'finishing'}")
                yield (
                    _stage_table(done, running),
                    f"Indexing {what} · {time.monotonic() - t0:.0f} s",
                    gr.update(),
                )
            if "error" in box:
                yield _stage_table({}, None), f"Error: indexing failed: {friendly(box['error'])}", gr.update()
                return
            result = box["result"]
            totals = result.stats["totals"]
            done = {k: v["seconds"] for k, v in result.stats["stages"].items()}
            summary = (
                f"Indexed {what}: {result.documents} documents, {result.text_units} text units, "
                f"{result.entities} entities, {result.relationships} relationships, {result.communities} "
                f"communities · {totals['llm_calls']} LLM calls ({totals['cache_hits']} cached) · "
                f"{totals['seconds']:.1f} s"
            )
            yield _stage_table(done, None), summary, _reports_rows(rag)
        finally:
            rag.close()

    def on_show(name: str):
        try:
            rag = projects.open(name)
            try:
                if not rag.store.exists():
                    raise UserFacingError(f"project {name!r} has no index yet; build the graph index first")
                return graph_html(rag), _reports_rows(rag)
            finally:
                rag.close()
        except Exception as exc:
            return f"<p>Error: {friendly(exc)}</p>", gr.update()

    def on_query(name: str, text: str, how: str):
        try:
            if not isinstance(text, str) or not text.strip():
                raise UserFacingError("the question is empty; type a question first")
            if how not in METHODS:
                raise UserFacingError(f"search method {how!r} must be one of: {', '.join(METHODS)}")
            rag = projects.open(name)
        except Exception as exc:
            yield f"Error: {friendly(exc)}", []
            return
        try:
            if not rag.store.exists():
                raise UserFacingError(f"project {name!r} has no index yet; build the graph index first")
            yield f"Running a {how} search…", []
            stream = rag.query(text.strip(), method=how, stream=True)
            rows = [[r.kind, r.human_readable_id, r.text[:300]] for r in stream.context]
            for p in stream_in_thread(lambda _ev: iter(stream), lambda t: len(t.split())):
                yield p.text, rows
            yield stream.answer.text.strip() or "_(empty answer)_", rows
        except Exception as exc:
            yield f"Error: {friendly(exc)}", []
        finally:
            rag.close()

    index_event = index_btn.click(
        on_index,
        [project, source, files],
        [stages, progress_md, reports],
        api_name="graphrag_index",
        concurrency_id=LLM_QUEUE,
        concurrency_limit=1,
    )
    index_event.success(on_show, project, [graph, reports], api_visibility="private")
    show.click(on_show, project, [graph, reports], api_visibility="private")
    query_args = {"concurrency_id": LLM_QUEUE, "concurrency_limit": 1}
    ask.click(
        on_query, [project, question, method], [answer_md, context], api_name="graphrag_query", **query_args
    )
    question.submit(
        on_query, [project, question, method], [answer_md, context], api_visibility="private", **query_args
    )
    return {"project": project}
