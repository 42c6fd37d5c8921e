"""Tool calling on a model without a native tool format: tools described in the system prompt, calls as JSON.

The model is told to answer a tool call as one JSON object `{"name": ..., "arguments": {...}}`. With
`tool_choice="required"` or a named tool, the grammar engine constrains the output to exactly that shape (the
arguments to the tool's parameter schema), so the call always parses; with `"auto"` the model answers freely and
an answer that is such an object (optionally wrapped in `<tool_call>` tags) becomes a tool call.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from xpullm.server.protocol import ChatMessage, NamedToolChoice, Tool

__all__ = ["call_schema", "parse_tool_calls", "plain_messages", "tools_prompt"]


def tools_prompt(tools: list[Tool]) -> str:
    """System-prompt text that lists the tools and the call format."""
    specs = [
        {
            "name": t.function.name,
            "description": t.function.description or "",
            "parameters": t.function.parameters,
        }
        for t in tools
    ]
    return (
        "You can call these tools:\n"
        + json.dumps(specs, ensure_ascii=False)
        + '\nTo call a tool, answer with only a JSON object {"name": <tool name>, "arguments": {...}}.'
    )


def call_schema(tools: list[Tool], choice: str | NamedToolChoice) -> dict[str, Any]:
    """JSON schema of a call to the named tool, or (`required`) to any of the tools."""
    by_name = {t.function.name: t for t in tools}
    if isinstance(choice, NamedToolChoice):
        names = [choice.function.name]
    else:
        names = list(by_name)
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": n}, "arguments": by_name[n].function.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for n in names
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def parse_tool_calls(text: str, tools: list[Tool]) -> list[dict[str, Any]] | None:
    """The OpenAI `tool_calls` list if `text` is a call (or a list of calls) to known tools, else None."""
    body = text.strip()
    if body.startswith("<tool_call>"):
        body = body.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    if not body.startswith(("{", "[")):
        return None
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return None
    calls = value if isinstance(value, list) else [value]
    names = {t.function.name for t in tools}
    out = []
    for call in calls:
        if not isinstance(call, dict) or call.get("name") not in names:
            return None
        args = call.get("arguments", {})
        out.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False),
                },
            }
        )
    return out


def plain_messages(messages: list[ChatMessage], tools: list[Tool] | None) -> list[dict[str, str]]:
    """Messages as `{"role", "content"}` strings the chat template renders (tool calls/results as text)."""
    out: list[dict[str, str]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        content = _text(m.content)
        if m.tool_calls:
            calls = [
                {
                    "name": c.get("function", {}).get("name"),
                    "arguments": _args(c.get("function", {}).get("arguments")),
                }
                for c in m.tool_calls
            ]
            content = (content + "\n" if content else "") + json.dumps(
                calls[0] if len(calls) == 1 else calls, ensure_ascii=False
            )
        out.append({"role": role, "content": content})
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _args(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments
