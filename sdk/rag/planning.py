"""Planning an ingestion job: which sources, their stable ids, safe names and chunking templates."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xpullm.documents import UnknownTemplate, list_files, template_names
from xpullm.rag.storage.base import JobItem

__all__ = ["AUTO_TEMPLATES", "choose_template", "doc_id_for", "expand_sources", "plan_items", "safe_name"]


def safe_name(name: str) -> str:
    """A file name that cannot leave its folder: no separators, no `..`, no control characters."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = re.sub(r"[\x00-\x1f<>:\"|?*]", "_", base).strip(" .")
    return base[:120] or "document"


def doc_id_for(source: str) -> str:
    """Stable id of a source key."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def expand_sources(paths: Sequence[str | os.PathLike[str]], recursive: bool = True) -> list[tuple[str, str]]:
    """Files to ingest as (source key, kind): folders are walked for files with a registered parser."""
    out: list[tuple[str, str]] = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"paths must be file or folder paths, got {type(p).__name__}: {p!r:.80}")
        path = Path(p).expanduser().absolute()
        if path.is_dir():
            out += [(str(f), "file") for f in list_files(path, recursive=recursive)]
        else:
            # Missing or unsupported files still become job items, so the report names them as failed.
            out.append((str(path), "file"))
    return out


# Extension -> template when `template="auto"`: spreadsheets read best row by row.
AUTO_TEMPLATES = {".csv": "table", ".tsv": "table"}


def choose_template(name: str, template: str | Mapping[str, str], default: str) -> str:
    """The template for document `name`: a name, `"auto"` (by extension, else `default`), or a mapping from
    extension (`".csv"`) or name to template."""
    ext = Path(name).suffix.lower()
    chosen = (
        (template.get(ext) or template.get(name) or "auto") if isinstance(template, Mapping) else template
    )
    if chosen == "auto":
        chosen = AUTO_TEMPLATES.get(ext, default)
    if chosen not in template_names():
        raise UnknownTemplate(
            f"unknown chunking template {chosen!r}; choose one of: auto, {', '.join(template_names())}"
        )
    return chosen


def plan_items(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    texts: Sequence[str] | None,
    names: Sequence[str] | None,
    template: str | Mapping[str, str],
    default_template: str,
    metadata: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    recursive: bool,
    text_path: Callable[[str], Path],
) -> list[JobItem]:
    """The pending items of a new job: files first, then texts (each text written to `text_path(source)`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    items = [
        JobItem(0, 0, source, kind, "pending", template=choose_template(source, template, default_template))
        for source, kind in expand_sources(paths or [], recursive=recursive)
    ]
    if texts is not None:
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings; wrap a single text as [text]")
        if names is not None and len(names) != len(texts):
            raise ValueError(f"names has {len(names)} entries but texts has {len(texts)}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
            name = names[i] if names is not None else hashlib.sha256(text.encode()).hexdigest()[:16] + ".txt"
            source = f"text:{name}"
            path = text_path(source)
            path.parent.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
            chosen = choose_template(name, template, default_template)
            items.append(JobItem(0, 0, source, "text", "pending", template=chosen, title=name))
    if metadata is None:
        return items
    if isinstance(metadata, Mapping):
        return [replace(it, metadata=dict(metadata)) for it in items]
    metadata = list(metadata)
    if len(metadata) != len(items):
        raise ValueError(
            f"metadata has {len(metadata)} entries for {len(items)} documents; pass one dict or one per document"
        )
    return [replace(it, metadata=dict(m)) for it, m in zip(items, metadata, strict=False)]
