"""The Knowledge base tab: create/select a base, upload files (per-file results), list/delete documents, and ask
with `[n]` citations while the retrieved chunks are shown beside the answer.

Bases are listed live (a base made by another session or by `xpullm kb create` under DATA_DIR/kb shows up on
Refresh or a reload); documents are deleted by ticking them, after a confirmation.

Public API endpoints: `/kb_add` (base, files), `/kb_sample` (base), `/kb_ask` (base, question), `/kb_delete`
(base, document ids) and `/kb_documents` (base).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from xpullm.apps.demo.context import DemoContext
from xpullm.apps.demo.errors import UserFacingError, friendly
from xpullm.apps.demo.samples import sample_articles, write_articles
from xpullm.apps.demo.streaming import stream_in_thread

if TYPE_CHECKING:
    from xpullm.rag import KnowledgeBase

__all__ = ["KnowledgeBases", "build_kb_tab"]

DEFAULT_BASE = "default"
RESULT_HEADERS = ["file", "result", "chunks", "details"]
DOC_HEADERS = ["title", "chunks", "document id", "source"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class KnowledgeBases:
    """The bases under DATA_DIR/kb, opened once each and shared by every session of the app."""

    def __init__(self, ctx: DemoContext) -> None:
        self.ctx = ctx
        self.root = ctx.config.data_dir / "kb"
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Existing bases (the default one is always offered: it is created on first use)."""
        found = sorted(p.parent.name for p in self.root.glob("*/kb.sqlite")) if self.root.is_dir() else []
        return found if DEFAULT_BASE in found else [DEFAULT_BASE, *found]

    def get(self, name: str | None) -> Any:
        """The base called `name`, created if it does not exist yet."""
        name = (name or "").strip()
        if not _NAME.match(name):
            raise UserFacingError(
                f"knowledge base name {name!r} is not valid; use 1-64 letters, digits, '-', '_' or '.'"
            )
        with self._lock:
            if name not in self._open:
                from xpullm.rag import KnowledgeBase

                self._open[name] = KnowledgeBase.create(
                    self.root / name, embedder=self.ctx.embedder, exist_ok=True
                )
            return self._open[name]


def _check_upload(path: Path, limit_mb: int) -> str | None:
    """Why `path` cannot be ingested, or None when it can."""
    from xpullm.rag import supported_extensions

    exts = supported_extensions()
    if path.suffix.lower() not in exts:
        return f"unsupported file type {path.suffix or '(none)'!r}; upload one of: {', '.join(sorted(exts))}"
    if path.stat().st_size > limit_mb * 2**20:
        return f"file is {path.stat().st_size / 2**20:.1f} MB; the limit is {limit_mb} MB"
    return None


def _doc_rows(kb: KnowledgeBase) -> list[list[Any]]:
    return [[d.title, d.n_chunks, d.doc_id, Path(d.source).name] for d in kb.documents()]


def _ingest(
    kb: KnowledgeBase, paths: list[Path], ctx: DemoContext, progress: Any
) -> Iterator[tuple[list[list[Any]], str]]:
    """Add files one by one, yielding the per-file results table and a summary line after each."""
    rows: list[list[Any]] = []
    uploads = kb.path / "uploads"
    uploads.mkdir(exist_ok=True)
    ok = 0
    for i, src in enumerate(paths):
        progress(i / max(1, len(paths)), desc=f"adding {src.name} ({i + 1}/{len(paths)})")
        problem = _check_upload(src, ctx.config.max_upload_mb)
        if problem is not None:
            rows.append([src.name, "rejected", 0, problem])
            yield rows, f"{i + 1}/{len(paths)} files processed"
            continue
        # Keep a stable copy: Gradio's temp upload folder is cleaned up, and the name makes re-uploads replace.
        target = uploads / src.name
        if src.resolve() != target.resolve():
            shutil.copyfile(src, target)
        try:
            report = kb.add(target, show_progress=False)
        except Exception as exc:
            rows.append([src.name, "failed", 0, friendly(exc)])
        else:
            if report.failed:
                rows.append([src.name, "failed", 0, report.failed[0][1]])
            elif report.skipped:
                ok += 1
                rows.append([src.name, "skipped", 0, report.skipped[0][1]])
            else:
                ok += 1
                kind = "replaced" if report.replaced else "added"
                rows.append([src.name, kind, report.chunks, f"{report.seconds:.1f} s"])
        yield rows, f"{i + 1}/{len(paths)} files processed"
    bad = len(paths) - ok
    summary = f"{ok} of {len(paths)} files in the base" + (f" · {bad} could not be added" if bad else "")
    yield rows, summary


def _sources_markdown(answer: Any) -> str:
    if not answer.sources:
        return "_No chunk was similar enough to the question._"
    cited = set(answer.citations)
    parts = []
    for n, hit in enumerate(answer.sources, start=1):
        mark = " (cited)" if n in cited else ""
        text = hit.text if len(hit.text) <= 600 else hit.text[:600] + "…"
        quoted = "\n".join(f"> {line}" for line in text.splitlines() if line.strip())
        parts.append(f"**[{n}] {hit.document}** · score {hit.score:.2f}{mark}\n\n{quoted}")
    return "\n\n".join(parts)


def _answer_markdown(answer: Any) -> str:
    """The answer with the sources it cites, or - when it cites none - the sources it was given, said so."""
    refs = answer.references
    if not refs:
        return answer.text
    lines = "\n".join(f"- **[{n}]** {c.document}" for n, c in refs.items())
    heading = "**Sources**" if answer.citations else "**Sources given** (the answer cites none of them)"
    return f"{answer.text}\n\n{heading}\n{lines}"


def _doc_choices(kb: KnowledgeBase) -> list[tuple[str, str]]:
    return [(f"{d.title} · {d.n_chunks} chunks", d.doc_id) for d in kb.documents()]


def build_kb_tab(ctx: DemoContext) -> dict[str, Any]:
    """Lay out the Knowledge base tab and wire its events."""
    bases = KnowledgeBases(ctx)
    names = bases.names()
    with gr.Row(equal_height=False, elem_classes=["xp-card"]):
        # Custom values: an API client may name a base that does not exist yet (it is created on first use).
        base = gr.Dropdown(
            names,
            value=names[0],
            label="Knowledge base",
            scale=2,
            elem_id="kb-select",
            allow_custom_value=True,
        )
        new_name = gr.Textbox(
            label="New base name", placeholder="e.g. manuals", scale=2, elem_id="kb-new-name"
        )
        create = gr.Button(
            "Create", scale=1, elem_id="kb-create", min_width=80, elem_classes=["xp-inline-button"]
        )
        refresh = gr.Button(
            "↻ Refresh", scale=1, elem_id="kb-refresh", min_width=80, elem_classes=["xp-inline-button"]
        )
    status = gr.Markdown("", elem_id="kb-status")
    with gr.Row(equal_height=False):
        with gr.Column(elem_classes=["xp-card"]):
            files = gr.File(
                label=f"Upload documents (max {ctx.config.max_upload_mb} MB each)",
                file_count="multiple",
                elem_id="kb-upload",
            )
            with gr.Row():
                add = gr.Button("Add files to the base", variant="primary", elem_id="kb-add")
                sample = gr.Button("Load the sample corpus (Wikipedia)", elem_id="kb-sample")
            results = gr.Dataframe(
                headers=RESULT_HEADERS,
                label="Per-file results",
                interactive=False,
                wrap=True,
                column_widths=["22%", "15%", "13%", "50%"],
                elem_id="kb-results",
                elem_classes=["xp-table"],
            )
        with gr.Column(elem_classes=["xp-card"]):
            docs = gr.Dataframe(
                headers=DOC_HEADERS,
                label="Documents",
                interactive=False,
                wrap=True,
                elem_id="kb-docs",
                elem_classes=["xp-table"],
            )
            with gr.Accordion("Delete documents", open=False, elem_id="kb-delete-panel"):
                selected = gr.CheckboxGroup(
                    [], label="Select the documents to delete", elem_id="kb-delete-pick"
                )
                delete = gr.Button("Delete selected", variant="stop", size="sm", elem_id="kb-delete")
                with gr.Row(visible=False, elem_id="kb-confirm-row") as confirm_row:
                    confirm = gr.Button("Yes, delete them", variant="stop", size="sm", elem_id="kb-confirm")
                    keep = gr.Button("Keep them", size="sm", elem_id="kb-keep")
    with gr.Row(equal_height=False, elem_classes=["xp-card"]):
        question = gr.Textbox(label="Ask the knowledge base", scale=5, elem_id="kb-question")
        ask = gr.Button(
            "Ask",
            variant="primary",
            scale=1,
            elem_id="kb-ask",
            min_width=80,
            elem_classes=["xp-inline-button"],
        )
    with gr.Row(equal_height=False):
        answer_md = gr.Markdown("", label="Answer", elem_id="kb-answer", elem_classes=["xp-card"])
        sources_md = gr.Markdown("", label="Retrieved chunks", elem_id="kb-sources", elem_classes=["xp-card"])

    def base_list(selected_name: str | None) -> Any:
        choices = bases.names()
        value = selected_name if selected_name in choices else choices[0]
        return gr.update(choices=choices, value=value)

    def list_docs(name: str) -> tuple[Any, Any, str]:
        try:
            kb = bases.get(name)
            rows = _doc_rows(kb)
            return rows, gr.update(choices=_doc_choices(kb), value=[]), f"**{name}**: {len(rows)} documents"
        except Exception as exc:
            return [], gr.update(choices=[], value=[]), f"Error: {friendly(exc)}"

    def on_page_load(name: str | None):
        update = base_list(name)
        return (update, *list_docs(update["value"]))

    def on_refresh(name: str | None):
        return on_page_load(name)

    def on_create(name: str):
        try:
            kb = bases.get(name)
        except Exception as exc:
            return gr.update(), f"Error: {friendly(exc)}", gr.update(), gr.update()
        created = kb.path.name
        return base_list(created), f"created **{created}**", [], gr.update(choices=[], value=[])

    def on_add(name: str, uploaded: list[str] | None, progress=gr.Progress()):
        if not uploaded:
            yield [], "Error: no files selected; choose files to upload first", gr.update(), gr.update()
            return
        try:
            kb = bases.get(name)
            paths = [Path(p if isinstance(p, str) else p.name) for p in uploaded]
            for rows, line in _ingest(kb, paths, ctx, progress):
                yield rows, line, gr.update(), gr.update()
            yield rows, line, _doc_rows(kb), gr.update(choices=_doc_choices(kb), value=[])
        except Exception as exc:
            yield [], f"Error: {friendly(exc)}", gr.update(), gr.update()

    def on_sample(name: str, progress=gr.Progress()):
        try:
            kb = bases.get(name)
            source, articles = sample_articles(ctx.config.sample_articles)
            progress(0, desc=f"writing {len(articles)} articles from {source}")
            paths = write_articles(articles, ctx.config.data_dir / "samples" / "wiki")
            for rows, line in _ingest(kb, paths, ctx, progress):
                yield rows, line, gr.update(), gr.update()
            yield (
                rows,
                f"{line} (sample: {source})",
                _doc_rows(kb),
                gr.update(choices=_doc_choices(kb), value=[]),
            )
        except Exception as exc:
            yield [], f"Error: {friendly(exc)}", gr.update(), gr.update()

    def on_delete_ask(name: str, chosen: list[str] | None):
        if not chosen:
            return gr.update(visible=False), "Error: no document selected; tick the documents to delete first"
        titles = {doc_id: label for label, doc_id in _doc_choices(bases.get(name))}
        listed = ", ".join(titles.get(d, d).split(" · ")[0] for d in chosen)
        return gr.update(visible=True), f"delete {len(chosen)} document(s) from **{name}**: {listed}?"

    def on_delete(name: str, chosen: list[str] | None):
        try:
            if not chosen:
                raise UserFacingError("no document selected; tick the documents to delete first")
            kb = bases.get(name)
            removed = sum(kb.delete(doc_id) for doc_id in chosen)
            line = f"deleted {len(chosen)} document(s) ({removed} chunks)"
            return (
                _doc_rows(kb),
                gr.update(choices=_doc_choices(kb), value=[]),
                gr.update(visible=False),
                line,
            )
        except Exception as exc:
            return gr.update(), gr.update(), gr.update(visible=False), f"Error: {friendly(exc)}"

    def on_ask(name: str, text: str):
        try:
            if not isinstance(text, str) or not text.strip():
                raise UserFacingError("the question is empty; type a question first")
            kb = bases.get(name)
            if not kb.documents():
                raise UserFacingError(
                    f"the knowledge base {name!r} is empty; upload files or load the sample corpus first"
                )
            with ctx.slots.enter() as turn:
                for line in turn.waiting():
                    yield f"⏳ _{line}_", ""
                llm = ctx.models.get().llm
                stream = kb.ask(text.strip(), llm=llm, stream=True)
                yield "Searching and answering…", ""
                count = lambda t: llm.count_tokens(t) if t else 0  # noqa: E731
                for p in stream_in_thread(lambda _ev: iter(stream), count):
                    yield p.text, gr.update()
                answer = stream.result()
            yield _answer_markdown(answer), _sources_markdown(answer)
        except Exception as exc:
            yield f"Error: {friendly(exc)}", ""

    doc_outputs = [docs, selected, status]
    create.click(on_create, new_name, [base, status, docs, selected], api_visibility="private")
    base.change(list_docs, base, doc_outputs, api_visibility="private")
    refresh.click(on_refresh, base, [base, *doc_outputs], api_visibility="private")

    def kb_documents(name: str) -> list[list[Any]]:
        """The documents of base `name`: [title, chunks, document id, source file] rows."""
        try:
            return _doc_rows(bases.get(name))
        except Exception as exc:
            raise gr.Error(friendly(exc)) from None

    gr.api(kb_documents, api_name="kb_documents")
    add.click(
        on_add, [base, files], [results, status, docs, selected], api_name="kb_add", concurrency_id="kb"
    )
    sample.click(
        on_sample, base, [results, status, docs, selected], api_name="kb_sample", concurrency_id="kb"
    )
    delete.click(
        on_delete_ask, [base, selected], [confirm_row, status], queue=False, api_visibility="private"
    )
    keep.click(lambda: (gr.update(visible=False), ""), None, [confirm_row, status], queue=False,
               api_visibility="private")  # fmt: skip
    confirm.click(
        on_delete,
        [base, selected],
        [docs, selected, confirm_row, status],
        api_name="kb_delete",
        concurrency_id="kb",
    )
    ask_args = {"concurrency_id": "answers", "concurrency_limit": None, "show_progress_on": [answer_md]}
    ask.click(on_ask, [base, question], [answer_md, sources_md], api_name="kb_ask", **ask_args)
    question.submit(on_ask, [base, question], [answer_md, sources_md], api_visibility="private", **ask_args)
    return {"base": base, "page_load": (on_page_load, [base], [base, *doc_outputs])}
