"""Errors of the documents layer (reading, parsing and chunking files); each names the bad value and the fix."""

from __future__ import annotations

from xpullm.errors import XPULLMError

__all__ = ["DocumentError", "ParseError", "UnknownTemplate", "UnsupportedFileType"]


class DocumentError(XPULLMError):
    """Base class of document reading, parsing and chunking errors."""


class UnsupportedFileType(DocumentError, ValueError):
    """No parser is registered for a file's extension."""


class ParseError(DocumentError, ValueError):
    """A file could not be read (corrupt, encrypted, not text)."""


class UnknownTemplate(DocumentError, ValueError):
    """A chunking template name that is not registered."""
