"""Extraction methods: how text units become entity/relationship records, chosen by name from a registry.

Two methods ship: "llm" (the model writes delimiter tuples; `xpullm.graphrag.extraction`) and "nlp" (spaCy noun
phrases and named entities linked by co-occurrence; `xpullm.graphrag.nlp`). "auto" picks one for the model at hand:

    the model has fewer than `ExtractionConfig.small_model_params` parameters (default 1e9)  ->  "nlp"
    otherwise, or when the parameter count cannot be read (a remote or replayed engine)     ->  "llm"

Below ~1B parameters a model's tuples are too unreliable to build a graph from (measured on the packaged 135M model:
13 entities, 0 relationships on 10 articles in 24.5 minutes; docs/graphrag.md), while the NLP graph costs no LLM
call at all. The LLM still writes the community reports and the answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xpullm.graphrag.errors import ConfigError

if TYPE_CHECKING:
    from xpullm.graphrag.calls import LLMCaller
    from xpullm.graphrag.chunking import TextUnit
    from xpullm.graphrag.config import ExtractionConfig
    from xpullm.graphrag.extraction import ParseResult
    from xpullm.protocols import TextEngine

__all__ = [
    "EXTRACTION_METHODS",
    "ExtractionMethod",
    "choose_method",
    "get_method",
    "parameter_count",
    "register_method",
]

Extract = Callable[["Sequence[TextUnit]", "LLMCaller", "ExtractionConfig"], "dict[str, ParseResult]"]


@dataclass(frozen=True)
class ExtractionMethod:
    """One way to turn text units into records."""

    name: str
    extract: Extract  # (units, caller, config) -> records per text unit id
    llm_descriptions: bool  # merged descriptions are summarized by the LLM (False: the sentences are joined)
    unit_in_prompt: bool  # each text unit goes into an LLM prompt, so units are cut to fit the context window
    doc: str  # one line for `xpullm graphrag` docs and errors


EXTRACTION_METHODS: dict[str, ExtractionMethod] = {}
"""Registered methods by name (filled by the modules that implement them)."""

_BUILTIN_MODULES = ("xpullm.graphrag.extraction", "xpullm.graphrag.nlp")


def register_method(
    name: str, *, llm_descriptions: bool, unit_in_prompt: bool, doc: str
) -> Callable[[Extract], Extract]:
    """Decorator: register `fn(units, caller, config)` as extraction method `name`."""

    def wrap(fn: Extract) -> Extract:
        EXTRACTION_METHODS[name] = ExtractionMethod(name, fn, llm_descriptions, unit_in_prompt, doc)
        return fn

    return wrap


def _load_builtin() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_method(name: str) -> ExtractionMethod:
    """The registered method `name` ("auto" is resolved by `choose_method`, not here)."""
    _load_builtin()
    if name not in EXTRACTION_METHODS:
        raise ConfigError(
            f"unknown extraction method {name!r}; choose one of auto, {', '.join(sorted(EXTRACTION_METHODS))}"
        )
    return EXTRACTION_METHODS[name]


def parameter_count(llm: TextEngine) -> int | None:
    """Parameters of the engine's model (low-bit linears counted as in x out), or None when it cannot be read.

    An engine may say so itself (`parameter_count` attribute); an `xpullm.LLM` is asked for its module. Engines
    without either (a transcript replay, an HTTP client) give None.
    """
    own = getattr(llm, "parameter_count", None)
    if isinstance(own, int):
        return own
    model = getattr(type(llm), "model", None)
    if model is None:  # not an engine that holds a torch module
        return None
    module = llm.model
    seen: set[int] = set()
    total = 0
    for sub in module.modules():
        in_f, out_f = getattr(sub, "in_features", None), getattr(sub, "out_features", None)
        if isinstance(in_f, int) and isinstance(out_f, int):
            # Packed low-bit weights hold fewer elements than the matrix they stand for: count the matrix.
            total += in_f * out_f
            for p in sub.parameters(recurse=False):
                seen.add(id(p))
            continue
        for p in sub.parameters(recurse=False):
            if id(p) not in seen:  # tied embeddings are one tensor
                seen.add(id(p))
                total += p.numel()
    return total


def choose_method(requested: str, llm: TextEngine, small_model_params: int) -> tuple[str, str]:
    """(method name, why): `requested` unless it is "auto", which applies the rule in this module's docstring."""
    if requested != "auto":
        get_method(requested)  # unknown names fail here, before any work
        return requested, f"extract_graph.method={requested!r}"
    n = parameter_count(llm)
    if n is None:
        return "llm", "auto: the engine does not report its parameter count, so the LLM extracts"
    if n < small_model_params:
        return (
            "nlp",
            f"auto: {n / 1e6:.0f}M parameters < {small_model_params / 1e6:.0f}M, too small for LLM extraction",
        )
    return "llm", f"auto: {n / 1e6:.0f}M parameters >= {small_model_params / 1e6:.0f}M"
