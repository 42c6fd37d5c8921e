"""The generation engine: `LLM` (generate / stream / chat) as requests on a continuous-batching `EngineCore`."""

from xpullm.engine.core import EngineConfig, KVBudgetTooSmall
from xpullm.engine.llm import LLM
from xpullm.engine.params import (
    Completion,
    ContextOverflow,
    GenerationParams,
    InvalidParameter,
    Timings,
    TokenLogprob,
)
from xpullm.engine.speculative import SpeculativeConfig

__all__ = [
    "LLM",
    "Completion",
    "ContextOverflow",
    "EngineConfig",
    "GenerationParams",
    "InvalidParameter",
    "KVBudgetTooSmall",
    "SpeculativeConfig",
    "Timings",
    "TokenLogprob",
]
