"""LangChain messages, tools and schemas converted to the framework-free forms `_toolcall` takes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import BaseModel

from xpullm.integrations._toolspec import (
    ChatTemplateError,
    InvalidToolSchema,
    ToolCall,
    ToolSpec,
    make_tool_spec,
)

__all__ = ["schema_dict", "to_dicts", "tool_spec", "trace_schema"]

_ROLES = {"human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system"}


def tool_spec(tool: Any) -> ToolSpec:
    if isinstance(tool, ToolSpec):
        return tool
    try:
        fn = convert_to_openai_tool(tool)["function"]
    except Exception as exc:  # LangChain raises several types for unusable tool objects
        raise InvalidToolSchema(
            f"cannot use {tool!r:.80} as a tool ({type(exc).__name__}: {exc}); pass a BaseTool, a typed "
            "function with a docstring, a pydantic model or an OpenAI-style tool dict"
        ) from exc
    return make_tool_spec(fn.get("name"), fn.get("description", ""), fn.get("parameters"))


def trace_schema(schema: Any, json_schema: dict[str, Any]) -> dict[str, Any]:
    # Tracing metadata only: LangChain's converter wants a top-level "title" in dicts, which a JSON schema
    # need not have, so a dict is reported as given.
    return json_schema if isinstance(schema, dict) else convert_to_json_schema(schema)


def schema_dict(schema: Any) -> dict[str, Any]:
    if isinstance(schema, dict):
        if schema.get("type") == "function" and "function" in schema:  # an OpenAI tool dict
            return schema["function"].get("parameters", {})
        return schema
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema.model_json_schema()
    if (
        isinstance(schema, type) and hasattr(schema, "schema") and hasattr(schema, "__fields__")
    ):  # pydantic.v1
        return schema.schema()
    return convert_to_json_schema(schema)


def _text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") in ("tool_use", "tool_call", "reasoning", "thinking"):
            continue  # the call itself travels in AIMessage.tool_calls
        else:
            raise ChatTemplateError(
                f"messages[{index}] has a {block.get('type')!r} content block; this model reads text only"
            )
    return "".join(parts)


def to_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if isinstance(msg, ToolMessage):
            content = _text(msg.content, i)
            if msg.status == "error":
                content = f"Error: {content}" if not content.lower().startswith("error") else content
            out.append(
                {"role": "tool", "content": content, "tool_call_id": msg.tool_call_id, "name": msg.name}
            )
            continue
        if isinstance(msg, (AIMessage, AIMessageChunk)):
            calls = [
                ToolCall(c["name"], c["args"], c.get("id") or ToolCall("", {}).id) for c in msg.tool_calls
            ]
            out.append({"role": "assistant", "content": _text(msg.content, i), "tool_calls": calls})
            continue
        if isinstance(msg, (HumanMessage, SystemMessage)):
            role = _ROLES[msg.type]
        elif isinstance(msg, ChatMessage) and msg.role in (*_ROLES, "tool"):
            role = _ROLES.get(msg.role, msg.role)
        else:
            role_name = getattr(msg, "role", msg.type)
            raise ChatTemplateError(
                f"messages[{i}] has role {role_name!r}; use system, user/human, assistant/ai or tool messages"
            )
        out.append({"role": role, "content": _text(msg.content, i)})
    return out
