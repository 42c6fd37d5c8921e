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

from xpullm.apps.demo.context import EXCLUSIVE_QUEUE, DemoContext
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

    def names(self) -> list[str]:
        """Existing projects (folders under DATA_DIR/graphrag), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name))

    def last_run(self, name: str) -> dict[str, Any] | None:
        """The stats of the project's last index run, or None when it was never indexed (no model is loaded)."""
        from xpullm.graphrag.errors import IndexNotFound

        rag = self.reader(name)
        try:
            return rag.stats()
        except IndexNotFound:
            return None
        finally:
            rag.close()

    def reader(self, name: str | None) -> Any:
        """A `GraphRAG` for reading the project's tables and stats: no model is loaded (the LLM and embedder load
        lazily and are never asked) and the cache is off, so nothing is written."""
        from xpullm.graphrag import GraphRAG

        config = demo_graphrag_config().replace(cache={"mode": "off"})
        return GraphRAG(self.folder(name), llm=None, embedder=None, config=config)

    def choices(self) -> list[tuple[str, str]]:
        """Dropdown entries: each project with the state of its last run."""
        out = []
        for name in self.names():
            stats = self.last_run(name)
            if stats is None:
                state = "not indexed"
            else:
                done = sum(1 for s in STAGES if s in stats.get("stages", {}))
                state = "indexed" if stats.get("status") == "done" else f"{done}/{len(STAGES)} stages"
            out.append((f"{name} · {state}", name))
        return out

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
    lines = ["| stage | state |", "|:---|:---|"]
    for s in STAGES:
        if s in done:
            state = f"done, {done[s]:.1f} s"
        elif s == running:
            state = "running…"
        else:
            state = "not run"
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
    names = projects.choices()
    with gr.Row(equal_height=False, elem_classes=["xp-card"]):
        project = gr.Dropdown(
            names or [("sample · not indexed", "sample")],
            value=names[0][1] if names else "sample",
            label="Project (pick one, or type a new name)",
            allow_custom_value=True,
            scale=1,
            elem_id="gr-project",
        )
        source = gr.Radio(list(SOURCES), value=SOURCES[0], label="Index", scale=1, elem_id="gr-source")
        files = gr.File(
            label="Documents to index (.txt / .md)", file_count="multiple", scale=2, elem_id="gr-upload"
        )
    index_btn = gr.Button("Build the graph index", variant="primary", elem_id="gr-index")
    with gr.Row(equal_height=False):
        stages = gr.Markdown(
            _stage_table({}, None), elem_id="gr-stages", elem_classes=["xp-card", "xp-stages"]
        )
        progress_md = gr.Markdown("", elem_id="gr-progress", elem_classes=["xp-card"])
    with gr.Row(equal_height=False, elem_classes=["xp-card"]):
        question = gr.Textbox(label="Question", scale=4, elem_id="gr-question")
        method = gr.Radio(list(METHODS), value="local", label="Search method", scale=2, elem_id="gr-method")
        ask = gr.Button(
            "Ask",
            variant="primary",
            scale=1,
            elem_id="gr-ask",
            min_width=80,
            elem_classes=["xp-inline-button"],
        )
    with gr.Row(equal_height=False):
        answer_md = gr.Markdown("", elem_id="gr-answer", elem_classes=["xp-card"])
        context = gr.Dataframe(
            headers=CONTEXT_HEADERS,
            label="Context the model saw",
            interactive=False,
            wrap=True,
            column_widths=["15%", "10%", "75%"],
            elem_id="gr-context",
            elem_classes=["xp-table"],
        )
    with gr.Row():
        show = gr.Button("Show the graph", size="sm", elem_id="gr-show")
    graph = gr.HTML("", elem_id="gr-graph")
    reports = gr.Dataframe(
        headers=REPORT_HEADERS,
        label="Community reports",
        interactive=False,
        wrap=True,
        column_widths=["10%", "8%", "24%", "8%", "50%"],
        elem_id="gr-reports",
        elem_classes=["xp-table"],
    )

    def project_state(name: str | None) -> tuple[str, str]:
        """The stage table and a line for the project's last run (what a reload must show again)."""
        try:
            stats = projects.last_run(name or "")
        except Exception as exc:
            return _stage_table({}, None), f"Error: {friendly(exc)}"
        if stats is None:
            return _stage_table({}, None), f"project **{name}**: no index yet"
        done = {k: v["seconds"] for k, v in stats.get("stages", {}).items()}
        finished = stats.get("status") == "done"
        line = "indexed" if finished else f"last run stopped after {len(done)} of {len(STAGES)} stages"
        return _stage_table(done, None), f"project **{name}**: {line}"

    def project_list(selected: str | None) -> Any:
        found = projects.choices()
        return gr.update(choices=found or [("sample · not indexed", "sample")], value=selected)

    def on_page_load(name: str | None):
        return (project_list(name), *project_state(name))

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

    def on_index(name: str, kind: str, uploaded: list[str] | None):
        try:
            folder, what = inputs_for(name, kind, uploaded)
            rag = projects.open(name)
        except Exception as exc:
            yield _stage_table({}, None), f"Error: {friendly(exc)}", gr.update()
            return
        box: dict[str, Any] = {}
        since = time.time() - 1.0
        turn = ctx.slots.enter()  # indexing calls the model: it takes a generation slot like an answer

        def work() -> None:
            try:
                box["result"] = rag.index(folder)
            except Exception as exc:
                box["error"] = exc

        thread = threading.Thread(target=work, name="xpullm-demo-graphrag", daemon=True)
        stats_path = rag.store.dir / "stats.json"
        try:
            for line in turn.waiting():
                yield _stage_table({}, None), f"⏳ {line}", gr.update()
            t0 = time.monotonic()
            thread.start()
            while thread.is_alive():
                thread.join(0.5)
                stats = _read_stats(stats_path, since) or {}
                done = {k: v["seconds"] for k, v in stats.get("stages", {}).items()}
                running = next((s for s in STAGES if s not in done), None)
                yield (
                    _stage_table(done, running),
                    f"Indexing {what} · stage {len(done) + 1} of {len(STAGES)} · {time.monotonic() - t0:.0f} s",
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
            if thread.is_alive():  # the page went away: the index run finishes (its stats stay accurate)
                thread.join()
            turn.release()
            rag.close()

    def on_show(name: str):
        try:
            rag = projects.reader(name)
            try:
                if not rag.store.exists():
                    raise UserFacingError(f"project {name!r} has no index yet; build the graph index first")
                return graph_html(rag), _reports_rows(rag)
            finally:
                rag.close()
        except Exception as exc:
            return f"<p>Error: {friendly(exc)}</p>", gr.update()

    def on_query(name: str, text: str, how: str):
        rag = None
        try:
            if not isinstance(text, str) or not text.strip():
                raise UserFacingError("the question is empty; type a question first")
            if how not in METHODS:
                raise UserFacingError(f"search method {how!r} must be one of: {', '.join(METHODS)}")
            reader = projects.reader(name)
            try:
                if not reader.store.exists():
                    raise UserFacingError(f"project {name!r} has no index yet; build the graph index first")
            finally:
                reader.close()
            with ctx.slots.enter() as turn:
                for line in turn.waiting():
                    yield f"⏳ _{line}_", []
                rag = projects.open(name)
                yield f"Running a {how} search…", []
                stream = rag.query(text.strip(), method=how, stream=True)
                rows = [[r.kind, r.human_readable_id, r.text[:300]] for r in stream.context]
                for p in stream_in_thread(lambda _ev: iter(stream), lambda t: len(t.split())):
                    yield p.text, rows
            yield stream.answer.text.strip() or "_(empty answer)_", rows
        except Exception as exc:
            yield f"Error: {friendly(exc)}", []
        finally:
            if rag is not None:
                rag.close()

    index_event = index_btn.click(
        on_index,
        [project, source, files],
        [stages, progress_md, reports],
        api_name="graphrag_index",
        concurrency_id=EXCLUSIVE_QUEUE,
        concurrency_limit=1,
        show_progress="minimal",
        show_progress_on=[progress_md],
    )
    hidden = {"api_visibility": "private", "show_progress": "hidden"}
    index_event.then(project_list, project, project, queue=False, **hidden)
    index_event.success(on_show, project, [graph, reports], **hidden)
    show.click(on_show, project, [graph, reports], api_visibility="private", show_progress_on=[graph])

    def on_project(name: str | None):
        table, line = project_state(name)
        reader = projects.reader(name)
        try:
            indexed = reader.store.exists()
        finally:
            reader.close()
        return (table, line, *on_show(name)) if indexed else (table, line, "", [])

    project.change(
        on_project,
        project,
        [stages, progress_md, graph, reports],
        api_visibility="private",
        show_progress="hidden",
    )
    query_args = {
        "concurrency_id": "answers",
        "concurrency_limit": None,
        "show_progress": "minimal",
        "show_progress_on": [answer_md],
    }
    ask.click(
        on_query, [project, question, method], [answer_md, context], api_name="graphrag_query", **query_args
    )
    question.submit(
        on_query, [project, question, method], [answer_md, context], api_visibility="private", **query_args
    )
    return {"project": project, "page_load": (on_page_load, [project], [project, stages, progress_md])}
