"""Entity and relationship extraction: prompts per text unit, gleaning rounds, and the delimiter-tuple parser.

Small local models break the tuple format in every way (missing fields, no record delimiter, prose around records).
With `ExtractionConfig.constrained` the engine decodes under the tuple grammar (`xpullm.graphrag.grammar`), so every
answer is a list of well-formed records; without it (or with an engine that ignores the grammar) the parser keeps
every record it can read and counts the rest instead of failing the unit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from xpullm.graphrag.calls import LLMCaller
from xpullm.graphrag.chunking import TextUnit
from xpullm.graphrag.config import ExtractionConfig
from xpullm.graphrag.grammar import YES_NO_GRAMMAR, tuple_grammar
from xpullm.graphrag.methods import register_method
from xpullm.graphrag.prompts import EXTRACT_CONTINUE, EXTRACT_GRAPH, EXTRACT_LOOP_CHECK, fill

__all__ = [
    "EntityRecord",
    "ParseResult",
    "RelationshipRecord",
    "extract_graph",
    "extraction_prompt",
    "parse_tuples",
]


@dataclass(frozen=True)
class EntityRecord:
    """One entity as read from one text unit."""

    name: str
    type: str
    description: str
    text_unit_id: str


@dataclass(frozen=True)
class RelationshipRecord:
    """One relationship as read from one text unit."""

    source: str
    target: str
    description: str
    weight: float
    text_unit_id: str


@dataclass
class ParseResult:
    """Records read from one answer, plus how many pieces could not be read."""

    entities: list[EntityRecord] = field(default_factory=list)
    relationships: list[RelationshipRecord] = field(default_factory=list)
    malformed: int = 0


def clean_name(name: str) -> str:
    """Canonical entity name: quotes and brackets stripped, spaces collapsed, upper case (merges 'Ada'/'ADA')."""
    name = name.strip().strip("\"'`()[]<>").strip()
    return re.sub(r"\s+", " ", name).upper()


def _clean_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("\"'").strip())


def parse_tuples(answer: str, config: ExtractionConfig, text_unit_id: str) -> ParseResult:
    """Read ("entity"<|>...) and ("relationship"<|>...) records from a model answer."""
    out = ParseResult()
    body = answer.replace(config.completion_delimiter, "\n")
    # Models often drop the record delimiter and put one record per line: accept both.
    pieces = [p for chunk in body.split(config.record_delimiter) for p in chunk.split("\n")]
    for raw in pieces:
        record = raw.strip()
        if not record:
            continue
        if config.tuple_delimiter not in record:
            # Prose between records ("Here are the entities:") is not a broken record unless it tries to be one.
            if re.match(r'^\(?\s*"?(entity|relationship)"?', record, re.IGNORECASE):
                out.malformed += 1
            continue
        inner = record
        start, end = inner.find("("), inner.rfind(")")
        if start != -1 and end > start:
            inner = inner[start + 1 : end]
        elif start != -1:
            inner = inner[start + 1 :]
        fields = [f.strip() for f in inner.split(config.tuple_delimiter)]
        kind = fields[0].strip("\"' ").lower()
        if kind == "entity" and len(fields) >= 3 and clean_name(fields[1]):
            description = _clean_text(config.tuple_delimiter.join(fields[3:])) if len(fields) > 3 else ""
            out.entities.append(
                EntityRecord(clean_name(fields[1]), _clean_text(fields[2]).lower(), description, text_unit_id)
            )
        elif kind == "relationship" and len(fields) >= 4 and clean_name(fields[1]) and clean_name(fields[2]):
            source, target = clean_name(fields[1]), clean_name(fields[2])
            if source == target:
                out.malformed += 1
                continue
            weight = _parse_weight(fields[4]) if len(fields) > 4 else 1.0
            out.relationships.append(
                RelationshipRecord(source, target, _clean_text(fields[3]), weight, text_unit_id)
            )
        else:
            out.malformed += 1
    return out


def _parse_weight(value: str) -> float:
    match = re.search(r"-?\d+(\.\d+)?", value)
    return float(match.group()) if match else 1.0


def extraction_prompt(text: str, config: ExtractionConfig) -> str:
    """The first-round extraction prompt for one text unit."""
    return fill(
        EXTRACT_GRAPH,
        entity_types=", ".join(config.entity_types),
        tuple_delimiter=config.tuple_delimiter,
        record_delimiter=config.record_delimiter,
        completion_delimiter=config.completion_delimiter,
        input_text=text,
    )


@register_method(
    "llm",
    llm_descriptions=True,
    unit_in_prompt=True,
    doc="the LLM writes entity and relationship tuples (gleaning rounds, grammar-constrained)",
)
def extract_graph(
    units: Sequence[TextUnit], caller: LLMCaller, config: ExtractionConfig
) -> dict[str, ParseResult]:
    """Extract records from every unit: one batched round, then up to `max_gleanings` batched gleaning rounds."""
    stage = "extract_graph"
    stop = [config.completion_delimiter]
    first_grammar = tuple_grammar(config, require_record=True) if config.constrained else None
    more_grammar = tuple_grammar(config) if config.constrained else None
    yes_no = YES_NO_GRAMMAR if config.constrained else None
    convs: dict[str, list[dict[str, str]]] = {}
    answers: dict[str, list[str]] = {}
    first = caller.generate(
        [extraction_prompt(u.text, config) for u in units],
        stage=stage,
        max_new_tokens=config.max_new_tokens,
        stop=stop,
        grammar=first_grammar,
    )
    for unit, res in zip(units, first, strict=True):
        convs[unit.id] = [
            {"role": "user", "content": extraction_prompt(unit.text, config)},
            {"role": "assistant", "content": res.text},
        ]
        answers[unit.id] = [res.text]
    active = [u.id for u in units]
    for round_no in range(config.max_gleanings):
        ready = []
        for uid in active:
            conv = [*convs[uid], {"role": "user", "content": EXTRACT_CONTINUE}]
            if caller.fits(conv, config.max_new_tokens):
                ready.append((uid, conv))
            else:
                caller.stats.count("extract_graph.gleaning_skipped_context")
        if not ready:
            break
        more = caller.generate(
            [c for _, c in ready],
            stage=stage,
            max_new_tokens=config.max_new_tokens,
            stop=stop,
            grammar=more_grammar,
        )
        for (uid, conv), res in zip(ready, more, strict=True):
            convs[uid] = [*conv, {"role": "assistant", "content": res.text}]
            answers[uid].append(res.text)
        if round_no == config.max_gleanings - 1:
            break
        checks = [(uid, [*convs[uid], {"role": "user", "content": EXTRACT_LOOP_CHECK}]) for uid, _ in ready]
        checks = [(uid, c) for uid, c in checks if caller.fits(c, 1)]
        verdicts = caller.generate([c for _, c in checks], stage=stage, max_new_tokens=1, grammar=yes_no)
        active = [
            uid
            for (uid, _), v in zip(checks, verdicts, strict=True)
            if v.text.strip().upper().startswith("Y")
        ]
        if not active:
            break
    results: dict[str, ParseResult] = {}
    for unit in units:
        merged = ParseResult()
        for answer in answers[unit.id]:
            part = parse_tuples(answer, config, unit.id)
            merged.entities.extend(part.entities)
            merged.relationships.extend(part.relationships)
            merged.malformed += part.malformed
        results[unit.id] = merged
        caller.stats.count("extract_graph.malformed_records", merged.malformed)
        if not merged.entities:
            caller.stats.count("extract_graph.units_without_entities")
    return results
