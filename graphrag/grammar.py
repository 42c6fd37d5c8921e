"""Lark grammars (llguidance syntax) that constrain extraction answers to the delimiter-tuple format.

A small model asked for tuples in free text writes prose, markdown lists or half records; under `tuple_grammar` every
sampled token keeps the answer a list of well-formed records, so `parse_tuples` reads all of it. The grammar is built
from the same `ExtractionConfig` the prompt and the parser use, so the three always agree on delimiters and types.
Names and descriptions never contain the first character of a delimiter (nor quotes, parentheses, periods or line
breaks), which is why the config refuses delimiters that start with a letter while `constrained` is on.
"""

from __future__ import annotations

import json

from xpullm.graphrag.config import ExtractionConfig

__all__ = ["YES_NO_GRAMMAR", "tuple_grammar"]

YES_NO_GRAMMAR = 'start: "Y" | "N"'
"""The gleaning loop check: one letter, nothing else."""


def _literal(text: str) -> str:
    """A Lark string literal for `text` (JSON escaping is valid Lark escaping)."""
    return json.dumps(text, ensure_ascii=False)


# Characters that must be escaped inside a regex character class (set operators included), and inside /.../.
_CLASS_ESCAPES = {
    "\\": "\\\\",
    "]": "\\]",
    "[": "\\[",
    "^": "\\^",
    "-": "\\-",
    "&": "\\&",
    "~": "\\~",
    "/": "\\/",
}
_CLASS_ESCAPES.update({"\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _free_text(config: ExtractionConfig, max_chars: int) -> str:
    """A regex for one free-text field: one sentence of at most about max_chars characters, on one line.

    No delimiter may start inside a field: excluding the first character of every delimiter is what makes a field
    end exactly where the next delimiter begins. Periods are excluded too: where a small model would end the sentence
    and start another (often repeating the first), the grammar leaves it only the closing delimiter. The cost is
    that "U.S." or "3.5" lose their periods.
    """
    banned = {"(", ")", '"', ".", "\n", "\r"}
    banned |= {d[0] for d in (config.tuple_delimiter, config.record_delimiter, config.completion_delimiter)}
    cls = "".join(_CLASS_ESCAPES.get(c, c) for c in sorted(banned))
    return f"/[^{cls}\\s][^{cls}]{{0,{max_chars - 1}}}/"


def tuple_grammar(config: ExtractionConfig, *, require_record: bool = False) -> str:
    """The grammar of one extraction answer: records joined by the record delimiter, then the completion delimiter.

    Entity records are ("entity", NAME, TYPE, DESCRIPTION) with TYPE one of `config.entity_types`; relationship
    records are ("relationship", SOURCE, TARGET, DESCRIPTION, STRENGTH) with an integer strength 1-10. Names and
    descriptions are bounded by `config.max_name_chars` / `config.max_description_chars`, so a record always ends.
    The layout is the prompt's example: one record per line, all but the last ended by the record delimiter, the
    completion delimiter on its own line.

    require_record: the answer must hold at least one record. The first round sets it (a small model otherwise
    often answers with the completion delimiter alone); a gleaning round may rightly find nothing new. With
    `config.require_relationships` the first round must list at least one entity, then at least one relationship.
    """
    td = _literal(config.tuple_delimiter)
    newline, next_record = _literal("\n"), _literal(config.record_delimiter + "\n")
    records = f"record ({next_record} record)* {newline}"
    if require_record and config.require_relationships:
        # Entities, then at least one relationship: a small model otherwise lists entities only (0 edges, so no
        # communities and no reports).
        body = f"entity ({next_record} entity)* {next_record} relationship ({next_record} relationship)* {newline}"
    else:
        body = records if require_record else f"({records})?"
    entity, relationship = _literal('("entity"'), _literal('("relationship"')
    return "\n".join(
        [
            f"start: {body} {_literal(config.completion_delimiter)}",
            "record: entity | relationship",
            f'entity: {entity} {td} NAME {td} TYPE {td} DESCRIPTION ")"',
            f'relationship: {relationship} {td} NAME {td} NAME {td} DESCRIPTION {td} STRENGTH ")"',
            f"NAME: {_free_text(config, config.max_name_chars)}",
            f"TYPE: {' | '.join(_literal(t) for t in config.entity_types)}",
            f"DESCRIPTION: {_free_text(config, config.max_description_chars)}",
            "STRENGTH: /10|[1-9]/",
        ]
    )
