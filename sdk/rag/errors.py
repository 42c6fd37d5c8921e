"""Errors of the knowledge-base pipeline; each names the bad value and what to do."""

from __future__ import annotations

from xpullm.errors import XPULLMError

__all__ = [
    "EmbedderMismatch",
    "KnowledgeBaseError",
    "KnowledgeBaseExists",
    "KnowledgeBaseLocked",
    "KnowledgeBaseNotFound",
    "ParseError",
    "UnknownTemplate",
    "UnsupportedFileType",
]


class KnowledgeBaseError(XPULLMError):
    """Base class of knowledge-base errors."""


class KnowledgeBaseNotFound(KnowledgeBaseError, FileNotFoundError):
    """`KnowledgeBase.open` on a folder that holds no knowledge base."""


class KnowledgeBaseExists(KnowledgeBaseError, FileExistsError):
    """`KnowledgeBase.create` on a folder that already holds one."""


class KnowledgeBaseLocked(KnowledgeBaseError, RuntimeError):
    """Another process is writing to the same knowledge base."""


class EmbedderMismatch(KnowledgeBaseError, ValueError):
    """The base was built with a different embedding model or dimension than the one passed."""


class UnsupportedFileType(KnowledgeBaseError, ValueError):
    """No parser is registered for a file's extension."""


class ParseError(KnowledgeBaseError, ValueError):
    """A file could not be read (corrupt, encrypted, not text)."""


class UnknownTemplate(KnowledgeBaseError, ValueError):
    """A chunking template name that is not registered."""
