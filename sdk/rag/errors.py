"""Errors of the knowledge-base pipeline; each names the bad value and what to do."""

from __future__ import annotations

from xpullm.documents.errors import ParseError, UnknownTemplate, UnsupportedFileType
from xpullm.errors import EmbedderMismatch, XPULLMError

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
