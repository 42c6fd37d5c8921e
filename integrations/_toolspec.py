"""Tools as the model sees them: specs, calls, turn events, tool_choice rules and the constrained call schema.

Framework-free; the adapters build `ToolSpec`s from their own tool types and `_toolcall.run_turn` decodes calls
against `call_schema`.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from xpullm.engine.schemas import (
    DEFAULT_MAX_ITEMS,
    InvalidJsonSchema,
    check_json_schema,
    nest_schema,
    tighten_schema,
)
from xpullm.errors import XPULLMError

__all__ = [
    "NO_PLACEHOLDER_PATTERN",
    "ChatTemplateError",
    "InvalidToolChoice",
    "InvalidToolSchema",
    "StructuredOutputError",
    "ToolCall",
    "ToolSpec",
    "TurnEvent",
    "call_schema",
    "check_tools",
    "compact_schema",
    "effective_choice",
    "make_tool_spec",
    "resolve_tool_choice",
    "validate_json_schema",
]


class InvalidToolSchema(XPULLMError, ValueError):
    """A tool whose name or parameter schema cannot be used for constrained tool calling."""


class InvalidToolChoice(XPULLMError, ValueError):
    """A `tool_choice` that names no bound tool or is not one of the accepted values."""


class ChatTemplateError(XPULLMError, ValueError):
    """Messages the model's chat template cannot render (wrong role order, non-text content, ...)."""


class StructuredOutputError(XPULLMError, ValueError):
    """Constrained JSON output that did not complete (it hit the token budget)."""


@dataclass(frozen=True)
class ToolSpec:
    """One callable tool as the model sees it."""

    name: str
    description: str
    parameters: dict[str, Any]
    """JSON schema of the arguments object."""

    def as_json(self) -> dict[str, Any]:
        """The OpenAI-style function description that templates and prompts show the model."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolCall:
    """A tool call the model made."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


@dataclass(frozen=True)
class TurnEvent:
    """One step of a streamed turn: a text delta, a finished tool call, or the final usage record."""

    kind: Literal["text", "tool_call", "invalid_tool_call", "done"]
    text: str = ""
    call: ToolCall | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


def validate_json_schema(schema: object, what: str) -> dict[str, Any]:
    """Check that `schema` is a JSON schema llguidance can compile (no tokenizer needed); return it."""
    try:
        return check_json_schema(schema, what)
    except InvalidJsonSchema as exc:
        raise InvalidToolSchema(str(exc)) from exc


def make_tool_spec(name: object, description: object, parameters: object) -> ToolSpec:
    """Build and validate a `ToolSpec` (name must be a non-empty identifier-like string)."""
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise InvalidToolSchema(f"tool name {name!r} is invalid: use a non-empty string without spaces")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    validate_json_schema(parameters, f"parameters of tool {name!r}")
    if parameters.get("type", "object") != "object":
        raise InvalidToolSchema(
            f"parameters of tool {name!r} must describe a JSON object (type 'object'), got {parameters.get('type')!r}"
        )
    return ToolSpec(name, str(description or ""), parameters)


def check_tools(tools: Sequence[ToolSpec]) -> None:
    """Raise `InvalidToolSchema` unless the constrained call schema over `tools` compiles (checked at bind time)."""
    if tools:
        validate_json_schema(call_schema(tools), f"tool-call schema of {[t.name for t in tools]}")


def resolve_tool_choice(choice: object, tools: Sequence[ToolSpec]) -> str:
    """Normalise a tool_choice to "auto", "none", "required" or a tool name; reject anything else."""
    names = [t.name for t in tools]
    if isinstance(choice, dict):  # OpenAI / LangChain style {"type": "function", "function": {"name": ...}}
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if choice is None or choice == "auto":
        return "auto"
    if choice is True or choice in ("any", "required"):
        if not tools:
            raise InvalidToolChoice(f"tool_choice={choice!r} needs at least one bound tool")
        return "required"
    if choice is False or choice == "none":
        return "none"
    if isinstance(choice, str) and choice in names:
        return choice
    raise InvalidToolChoice(
        f"tool_choice={choice!r} is not a bound tool; bound tools: {names}; "
        "or use 'auto', 'none', 'any' / 'required'"
    )


def effective_choice(messages: Sequence[dict[str, Any]], choice: str, max_tool_rounds: int | None) -> str:
    """Turn "auto" into "none" once `max_tool_rounds` tool rounds follow the last user message."""
    if choice != "auto" or max_tool_rounds is None:
        return choice
    rounds = 0
    for msg in reversed(messages):
        if msg["role"] == "user":
            break
        if msg["role"] == "assistant" and msg.get("tool_calls"):
            rounds += 1
    return "none" if rounds >= max_tool_rounds else choice


def compact_schema(
    schema: dict[str, Any], max_string_length: int | None = None, max_items: int | None = DEFAULT_MAX_ITEMS
) -> dict[str, Any]:
    """A tightened copy of `schema` for decoding (`xpullm.engine.schemas.tighten_schema`): compact separators,
    no undeclared object keys, optionally a length cap on free strings, and a cap on unbounded arrays. A small
    model otherwise invents extra keys or loops inside a string or an array until the token budget ends; output
    valid for the tightened schema is still valid for the original."""
    return tighten_schema(schema, max_string_length, max_items)


# Free argument strings may not start with "<": a small model otherwise copies a "<city name>"-style placeholder
# (or the parameter description in angle brackets) instead of the value from the request. Anchored, because
# llguidance searches an unanchored pattern anywhere in the string.
NO_PLACEHOLDER_PATTERN = r"^(?:[^<][\s\S]*)?$"


def _no_placeholders(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _no_placeholders(item)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds and not any(k in node for k in ("enum", "const", "pattern", "format")):
        node["pattern"] = NO_PLACEHOLDER_PATTERN
    for value in node.values():
        if isinstance(value, (dict, list)):
            _no_placeholders(value)


def _strict(params: dict[str, Any]) -> dict[str, Any]:
    # Unknown argument names would only confuse the tool; forbid them unless the schema says otherwise.
    out = copy.deepcopy(params)
    if out.get("type", "object") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    out.setdefault("properties", {})
    return out


def call_schema(
    tools: Sequence[ToolSpec], max_string_length: int | None = None, max_items: int | None = DEFAULT_MAX_ITEMS
) -> dict[str, Any]:
    """JSON schema of one call `{"name": ..., "arguments": {...}}` to any of `tools`.

    Each tool's parameters move under `arguments` with their `$defs` and their `$ref`s rebased, so nested
    pydantic models keep resolving.
    """
    many = len(tools) > 1
    options = []
    for i, t in enumerate(tools):
        where = f"/anyOf/{i}/properties/arguments" if many else "/properties/arguments"
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": t.name},
                    "arguments": nest_schema(_strict(t.parameters), where),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    out = compact_schema(options[0] if not many else {"anyOf": options}, max_string_length, max_items)
    _no_placeholders(out)  # after tightening: the length cap is added to free strings without a pattern
    return out
