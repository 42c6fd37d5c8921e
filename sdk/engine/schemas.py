"""JSON-schema preparation for constrained decoding: nesting with definitions, tightening, validation.

Everything here is a pure function on schema dicts (no tokenizer, no model), shared by the engine's
`json_schema=` option, the LangChain / LlamaIndex adapters and the OpenAI-compatible server:

- `nest_schema` places a schema inside a wrapper (a tool call's `arguments`, a `response_format` envelope) and
  rewrites its local `$ref` pointers (`#/$defs/...`, `#/definitions/...`, `#`) so they still resolve. Without it,
  a pydantic model with nested classes fails with "Pointer '/$defs/Address' does not exist".
- `tighten_schema` makes a copy that a small model cannot loop in: compact separators, no undeclared keys,
  a cap on free strings and on unbounded arrays. Output valid for the copy is valid for the original.
- `check_json_schema` asks llguidance whether the schema compiles (no tokenizer needed), so callers can reject
  a schema when it is given (`bind_tools`, request validation) instead of at the first generation.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from xpullm.engine.params import InvalidParameter

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "InvalidJsonSchema",
    "check_json_schema",
    "nest_schema",
    "tighten_schema",
]

# An array without maxItems gets this cap when tightened: a greedy small model that starts repeating an item
# ("drama", "drama", ...) otherwise fills its whole token budget and the JSON never closes.
DEFAULT_MAX_ITEMS = 16

# Compact, deterministic JSON separators: a small model wastes fewer tokens (and gets fewer chances to ramble)
# when llguidance does not allow free whitespace between JSON tokens.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Keys whose value is a map of name -> subschema, and keys whose value is a subschema or a list of them.
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_VALUES = (
    "items",
    "anyOf",
    "oneOf",
    "allOf",
    "additionalProperties",
    "prefixItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
)


class InvalidJsonSchema(InvalidParameter):
    """A JSON schema that llguidance cannot compile; the message names where it came from and why."""


def check_json_schema(schema: object, what: str = "json_schema") -> dict[str, Any]:
    """Return `schema` if llguidance can compile it (checked without a tokenizer), else raise `InvalidJsonSchema`.

    `what` names the schema in the error (e.g. "parameters of tool 'search'").
    """
    import llguidance

    if not isinstance(schema, dict):
        raise InvalidJsonSchema(what, schema, "a JSON schema dict")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
    except (TypeError, ValueError) as exc:
        raise InvalidJsonSchema(what, schema, f"a JSON-serialisable schema ({exc})") from exc
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    if is_error:
        raise InvalidJsonSchema(
            what, schema, f"a JSON schema llguidance supports; it says: {'; '.join(messages)}"
        )
    return schema


def nest_schema(schema: dict[str, Any], pointer: str) -> dict[str, Any]:
    """A copy of `schema` for use at JSON pointer `pointer` (e.g. "/properties/arguments") of a larger schema.

    Local references are rewritten to point into the new location: `#/$defs/A` becomes
    `#/properties/arguments/$defs/A` and a recursive `#` becomes `#/properties/arguments`. References to other
    documents (`other.json#/...`) are left alone.
    """
    if pointer and not pointer.startswith("/"):
        raise ValueError(f"pointer {pointer!r} must be empty or start with '/' (a JSON pointer)")
    out = copy.deepcopy(schema)
    if pointer:
        _rebase_refs(out, pointer)
    return out


def _rebase_refs(node: Any, pointer: str) -> None:
    if isinstance(node, list):
        for item in node:
            _rebase_refs(item, pointer)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        node["$ref"] = "#" + pointer + ref[1:]
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                _rebase_refs(sub, pointer)
        elif key in _SCHEMA_VALUES:
            _rebase_refs(value, pointer)


def tighten_schema(
    schema: dict[str, Any],
    max_string_length: int | None = None,
    max_items: int | None = DEFAULT_MAX_ITEMS,
) -> dict[str, Any]:
    """A tightened copy of `schema` for decoding; output valid for the copy is valid for `schema`.

    - compact separators (no free whitespace between JSON tokens);
    - `additionalProperties: false` on objects that declare properties and say nothing else;
    - `maxLength = max_string_length` on free strings (no enum / const / pattern / format / maxLength);
    - on arrays without `maxItems`: at most as many items as the item enum has values (a repeated enum value
      adds nothing), and at most `max_items` (None = no cap). A `maxItems` the schema sets is kept as is.
    """
    out = copy.deepcopy(schema)
    _tighten(out, max_string_length, max_items, out)
    out["x-guidance"] = {**_COMPACT, **out.get("x-guidance", {})}
    return out


def _resolve(node: Any, root: dict[str, Any]) -> Any:
    """`node`, or the subschema its local `$ref` points at (None when the pointer leads nowhere)."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return node
    target: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(target, dict):
            return None
        target = target.get(part.replace("~1", "/").replace("~0", "~"))
    return target


def _enum_size(items: Any, root: dict[str, Any]) -> int | None:
    items = _resolve(items, root)
    if not isinstance(items, dict):
        return None
    if "const" in items:
        return 1
    enum = items.get("enum")
    return len(enum) if isinstance(enum, list) and enum else None


def _tighten(node: Any, cap: int | None, max_items: int | None, root: dict[str, Any]) -> None:
    if isinstance(node, list):
        for item in node:
            _tighten(item, cap, max_items, root)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if (
        cap is not None
        and "string" in kinds
        and not any(k in node for k in ("maxLength", "enum", "const", "pattern", "format"))
    ):
        node["maxLength"] = cap
    if "array" in kinds and "maxItems" not in node:
        limits = [n for n in (_enum_size(node.get("items"), root), max_items) if n is not None]
        if limits:
            node["maxItems"] = max(min(limits), node.get("minItems", 0))
    if "properties" in node and "additionalProperties" not in node and "patternProperties" not in node:
        node["additionalProperties"] = False
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            for sub in value.values():
                _tighten(sub, cap, max_items, root)
        elif key in _SCHEMA_VALUES:
            _tighten(value, cap, max_items, root)
