"""Documents: the layer both knowledge pipelines stand on (the knowledge base and GraphRAG).

- `parsers`: file bytes -> a `ParsedDocument` (blocks), one parser registered per extension;
- `templates`: chunking templates, `ParsedDocument` -> `Chunk`s within a token budget, registered by name;
- `records`: the whole-text `Document` record, finding files and reading them through the parsers.
"""

from xpullm.documents.errors import DocumentError, ParseError, UnknownTemplate, UnsupportedFileType
from xpullm.documents.parsers import (
    Block,
    ParsedDocument,
    decode_text,
    parse_bytes,
    parse_file,
    register_parser,
    supported_extensions,
)
from xpullm.documents.records import Document, document_from_bytes, list_files, read_document, stable_id
from xpullm.documents.templates import (
    Chunk,
    ChunkingConfig,
    chunk_document,
    register_template,
    split_sentences,
    template_names,
)

__all__ = [
    "Block",
    "Chunk",
    "ChunkingConfig",
    "Document",
    "DocumentError",
    "ParseError",
    "ParsedDocument",
    "UnknownTemplate",
    "UnsupportedFileType",
    "chunk_document",
    "decode_text",
    "document_from_bytes",
    "list_files",
    "parse_bytes",
    "parse_file",
    "read_document",
    "register_parser",
    "register_template",
    "split_sentences",
    "stable_id",
    "supported_extensions",
    "template_names",
]
