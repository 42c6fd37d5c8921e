"""File parsers: bytes of one file -> a `ParsedDocument` (a title and an ordered list of blocks).

Parsers register themselves per extension with `@register_parser(".ext")`; chunking templates only see blocks, so
a new format needs one function here and nothing else.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from xpullm.documents.errors import ParseError, UnsupportedFileType
from xpullm.documents.sniff import binary_reason

__all__ = [
    "Block",
    "ParsedDocument",
    "decode_text",
    "parse_bytes",
    "parse_file",
    "register_parser",
    "supported_extensions",
]


@dataclass(frozen=True)
class Block:
    """A heading, a paragraph or a table, in reading order."""

    kind: str  # "heading" | "text" | "table"
    text: str = ""
    level: int = 0  # heading depth, 1 = top
    rows: tuple[tuple[str, ...], ...] = ()  # table rows; rows[0] is the header
    page: int | None = None  # 1-based page for paginated formats (PDF)


@dataclass(frozen=True)
class ParsedDocument:
    """What a parser returns."""

    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        """All text, blocks separated by blank lines (tables as tab-separated rows)."""
        parts = []
        for b in self.blocks:
            parts.append("\n".join("\t".join(r) for r in b.rows) if b.kind == "table" else b.text)
        return "\n\n".join(p for p in parts if p)


Parser = Callable[[bytes, str], ParsedDocument]
_PARSERS: dict[str, Parser] = {}


def register_parser(*extensions: str) -> Callable[[Parser], Parser]:
    """Register `fn(data: bytes, name: str) -> ParsedDocument` for the given extensions (with the dot)."""

    def deco(fn: Parser) -> Parser:
        for ext in extensions:
            _PARSERS[ext.lower()] = fn
        return fn

    return deco


def supported_extensions() -> list[str]:
    """Extensions with a registered parser."""
    return sorted(_PARSERS)


def parse_bytes(data: bytes, name: str) -> ParsedDocument:
    """Parse `data` with the parser registered for `name`'s extension."""
    ext = Path(name).suffix.lower()
    parser = _PARSERS.get(ext)
    if parser is None:
        raise UnsupportedFileType(
            f"no parser for {ext or 'files without an extension'!r} ({name}); supported: {', '.join(supported_extensions())}"
        )
    return parser(data, name)


def parse_file(path: str | Path) -> ParsedDocument:
    """Read and parse one file."""
    path = Path(path)
    return parse_bytes(path.read_bytes(), path.name)


def decode_text(data: bytes, name: str) -> str:
    """The text of a plain-text file: UTF-8 (BOM allowed), UTF-16 with a BOM, else cp1252, else latin-1.

    Binary data (NUL bytes, or more control bytes than text has: `xpullm.documents.sniff`) is a `ParseError`.
    """
    reason = binary_reason(data)
    if reason:
        raise ParseError(
            f"{name} looks binary, not text: {reason}; give it a matching extension or convert it to UTF-8 text"
        )
    for encoding in ("utf-8-sig", "utf-16", "cp1252"):
        if encoding == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


def _paragraphs(text: str, page: int | None = None) -> list[Block]:
    return [Block("text", p.strip(), page=page) for p in re.split(r"\n\s*\n", text) if p.strip()]


def _stem_title(name: str) -> str:
    return Path(name).stem.replace("_", " ").replace("-", " ").strip() or name


@register_parser(".txt", ".text", ".rst")
def parse_text(data: bytes, name: str) -> ParsedDocument:
    """Plain text: blank lines separate paragraphs."""
    return ParsedDocument(_stem_title(name), tuple(_paragraphs(decode_text(data, name))))


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_TABLE_SEP = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")


def _md_row(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().strip("|").split("|"))


@register_parser(".md", ".markdown")
def parse_markdown(data: bytes, name: str) -> ParsedDocument:
    """Markdown: ATX headings, pipe tables and paragraphs (fenced code stays one paragraph)."""
    lines = decode_text(data, name).splitlines()
    blocks: list[Block] = []
    para: list[str] = []
    title = ""

    def flush() -> None:
        if para and "\n".join(para).strip():
            blocks.append(Block("text", "\n".join(para).strip()))
        para.clear()

    i, in_fence = 0, False
    while i < len(lines):
        line = lines[i]
        if line.strip().startswith("```"):
            in_fence = not in_fence
            para.append(line)
        elif in_fence:
            para.append(line)
        elif m := _MD_HEADING.match(line):
            flush()
            blocks.append(Block("heading", m.group(2), level=len(m.group(1))))
            title = title or m.group(2)
        elif "|" in line and i + 1 < len(lines) and _MD_TABLE_SEP.match(lines[i + 1]):
            flush()
            rows = [_md_row(line)]
            i += 2
            while i < len(lines) and "|" in lines[i] and lines[i].strip():
                rows.append(_md_row(lines[i]))
                i += 1
            blocks.append(Block("table", rows=tuple(rows)))
            continue
        elif not line.strip():
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return ParsedDocument(title or _stem_title(name), tuple(blocks))


_HTML_CONTAINERS = ["table", "li", "blockquote", "pre", "p", "dd", "dt"]


@register_parser(".html", ".htm")
def parse_html(data: bytes, name: str) -> ParsedDocument:
    """HTML: <title>, h1-h6, paragraphs/list items and tables; scripts, styles and navigation are dropped."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "header", "template"]):
        tag.decompose()
    blocks: list[Block] = []
    body = soup.body or soup
    for el in body.find_all(
        ["h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "table", "dt", "dd"]
    ):
        if el.find_parent(_HTML_CONTAINERS) is not None:
            continue  # read once, as part of the enclosing table / list item / quote
        if el.name == "table":
            rows = []
            for tr in el.find_all("tr"):
                cells = tuple(c.get_text(" ", strip=True) for c in tr.find_all(["th", "td"]))
                if any(cells):
                    rows.append(cells)
            if rows:
                blocks.append(Block("table", rows=tuple(rows)))
        elif el.name[0] == "h":
            text = el.get_text(" ", strip=True)
            if text:
                blocks.append(Block("heading", text, level=int(el.name[1])))
        else:
            text = el.get_text(" ", strip=True)
            if text:
                blocks.append(Block("text", text))
    if not blocks:  # bare text without block tags
        blocks = _paragraphs(body.get_text("\n"))
    title_tag = soup.title.get_text(strip=True) if soup.title else ""
    first_heading = next((b.text for b in blocks if b.kind == "heading"), "")
    return ParsedDocument(title_tag or first_heading or _stem_title(name), tuple(blocks))


@register_parser(".pdf")
def parse_pdf(data: bytes, name: str) -> ParsedDocument:
    """PDF text per page (no OCR). Encrypted files open only with an empty password; corrupt ones fail clearly."""
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError(
                f"{name} is an encrypted PDF; decrypt it (e.g. `qpdf --decrypt`) and add it again"
            )
        blocks: list[Block] = []
        for number, page in enumerate(reader.pages, start=1):
            blocks += _paragraphs(page.extract_text() or "", page=number)
        meta_title = (reader.metadata.title if reader.metadata else None) or ""
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError(f"{name} is not a readable PDF ({type(exc).__name__}: {exc})") from exc
    if not blocks:
        raise ParseError(f"{name} has no extractable text (a scanned PDF needs OCR first)")
    return ParsedDocument(str(meta_title).strip() or _stem_title(name), tuple(blocks))


@register_parser(".docx")
def parse_docx(data: bytes, name: str) -> ParsedDocument:
    """Word documents: paragraphs with 'Heading N'/'Title' styles become headings; tables keep their rows."""
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises zipfile/KeyError/ValueError variants for broken files
        raise ParseError(f"{name} is not a readable .docx file ({type(exc).__name__}: {exc})") from exc
    blocks: list[Block] = []
    title = (document.core_properties.title or "").strip()
    for child in document.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(child, document)
            text = para.text.strip()
            if not text:
                continue
            style = (para.style.name if para.style is not None else "") or ""
            if style == "Title":
                title = title or text
                blocks.append(Block("heading", text, level=1))
            elif m := re.match(r"Heading (\d)", style):
                blocks.append(Block("heading", text, level=int(m.group(1))))
            else:
                blocks.append(Block("text", text))
        elif tag == "tbl":
            table = Table(child, document)
            rows = tuple(tuple(cell.text.strip() for cell in row.cells) for row in table.rows)
            if rows:
                blocks.append(Block("table", rows=rows))
    return ParsedDocument(title or _stem_title(name), tuple(blocks))


@register_parser(".csv", ".tsv")
def parse_csv(data: bytes, name: str) -> ParsedDocument:
    """CSV/TSV: one table block; the first row is the header."""
    text = decode_text(data, name)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if name.lower().endswith(".tsv") else csv.excel
    rows = tuple(
        tuple(c.strip() for c in r)
        for r in csv.reader(io.StringIO(text), dialect)
        if any(c.strip() for c in r)
    )
    if not rows:
        raise ParseError(f"{name} has no rows")
    return ParsedDocument(_stem_title(name), (Block("table", rows=rows),))
