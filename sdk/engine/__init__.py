"""The generation engine: `LLM` (generate / stream / chat) over a static-KV-cache decoder."""

from xpullm.engine.llm import LLM
from xpullm.engine.params import Completion, ContextOverflow, GenerationParams, InvalidParameter

__all__ = ["LLM", "Completion", "ContextOverflow", "GenerationParams", "InvalidParameter"]
