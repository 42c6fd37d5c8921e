"""Framework-free chat turn with tools and constrained JSON, shared by the LangChain and LlamaIndex adapters.

Messages come in as plain dicts: `{"role", "content", "tool_calls": [ToolCall...], "tool_call_id", "name"}`.

Tool-call format. A chat template that already speaks tools (it mentions `<tool_call>`, as Qwen2.5 / Hermes /
SmolLM3 templates do) renders the tools and history itself, and the model answers with its own
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks. A template without tool support (SmolLM2's) gets
the same block format taught in a system message (`PROMPTED_INSTRUCTIONS`), earlier calls written back as those
blocks and tool results as `<tool_response>` user turns, so one parser serves both.

Constrained decoding. A forced call (`tool_choice` = a tool name or "required") appends the opening tag to the
prompt and lets the engine decode only JSON that is valid for `{"name": <that tool>, "arguments": <its schema>}`
(llguidance, via `json_schema=`), so the call always parses and validates. In "auto" mode the model writes freely;
when it starts the opening tag we stop it and switch to the same constrained decoding for the call body.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from xpullm.errors import XPULLMError
from xpullm.integrations._toolspec import (
    ChatTemplateError,
    InvalidToolChoice,
    InvalidToolSchema,
    StructuredOutputError,
    ToolCall,
    ToolSpec,
    TurnEvent,
    call_schema,
    check_tools,
    compact_schema,
    effective_choice,
    make_tool_spec,
    resolve_tool_choice,
    validate_json_schema,
)

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = [
    "CALL_CLOSE",
    "CALL_OPEN",
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
    "render_prompt",
    "resolve_tool_choice",
    "run_turn",
    "validate_json_schema",
]

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

PROMPTED_INSTRUCTIONS = (
    "You can call tools. The tools are listed as JSON inside <tools></tools>:\n<tools>\n{tools}\n</tools>\n"
    "To call a tool, reply with exactly one block of this form and nothing after it:\n"
    '<tool_call>{{"name": "<tool name>", "arguments": {{<arguments as JSON>}}}}</tool_call>'
)
# Measured on SmolLM2-135M with bench/tools_choice.py (docs/integrations.md): a one-line-per-tool listing and
# instructions without the "<tool name>" placeholders picked the right tool less often (0.19-0.25 vs 0.38 with
# tool_choice="any"), so the JSON listing stays; copied "<...>" placeholders are stopped by the argument grammar
# (`NO_PLACEHOLDER_PATTERN`) instead.

# The first step of an "auto" turn: the opening tag of a call, or any text that does not start with "<" (one
# token is decoded under this grammar; the rest of the turn follows the choice).
DECISION_GRAMMAR = 'start: CALL | TEXT\nCALL: "' + CALL_OPEN + '"\nTEXT: /[^<][\\s\\S]*/\n'

# How a tool result reads to a model without a native tool format. Measured on SmolLM2-135M: a plain sentence plus
# a nudge makes it answer from the result; XML-ish wrappers made it echo the wrapper or repeat the call.
PROMPTED_RESULT = "The {name} tool returned: {content}"
PROMPTED_NUDGE = "\nAnswer my question using this result."


# -- rendering -------------------------------------------------------------------------------------------------


def _supports_native_tools(llm: LLM) -> bool:
    template = getattr(llm.tokenizer, "chat_template", None) or ""
    return isinstance(template, str) and CALL_OPEN in template and "tools" in template


def _call_block(call: ToolCall) -> str:
    return f"{CALL_OPEN}{json.dumps({'name': call.name, 'arguments': call.arguments}, ensure_ascii=False)}{CALL_CLOSE}"


def _call_prose(call: ToolCall) -> str:
    return f"I called the {call.name} tool with {json.dumps(call.arguments, ensure_ascii=False)}."


def _prompted_messages(messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for msg in messages:
        role, content = msg["role"], msg.get("content") or ""
        if role == "assistant" and msg.get("tool_calls"):
            # Without tools on offer, earlier calls read as prose: shown the call syntax, a small model copies it
            # instead of answering.
            show = _call_block if tools else _call_prose
            blocks = "\n".join(show(c) for c in msg["tool_calls"])
            content = f"{content}\n{blocks}" if content else blocks
        elif role == "tool":
            role = "user"
            content = PROMPTED_RESULT.format(name=msg.get("name") or "tool", content=content)
            if msg is messages[-1]:
                content += PROMPTED_NUDGE
        out.append({"role": role, "content": content})
    if tools:
        listing = "\n".join(json.dumps(t.as_json(), ensure_ascii=False) for t in tools)
        instructions = PROMPTED_INSTRUCTIONS.format(tools=listing)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{instructions}"}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def _native_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        item: dict[str, Any] = {"role": msg["role"], "content": msg.get("content") or ""}
        if msg.get("tool_calls"):
            item["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in msg["tool_calls"]
            ]
        if msg["role"] == "tool":
            item["tool_call_id"] = msg.get("tool_call_id", "")
            if msg.get("name"):
                item["name"] = msg["name"]
        out.append(item)
    return out


def render_prompt(llm: LLM, messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec] = ()) -> str:
    """The prompt text for `messages` (+ tools) ending with the assistant generation prompt.

    Raises `ChatTemplateError` naming the problem when the template cannot render the conversation.
    """
    if not messages:
        raise ChatTemplateError("messages is empty; pass at least one message")
    try:
        if _supports_native_tools(llm):
            tok = llm.tokenizer
            kwargs = {"tools": [t.as_json() for t in tools]} if tools else {}
            text = tok.apply_chat_template(
                _native_messages(messages), add_generation_prompt=True, tokenize=False, **kwargs
            )
        else:
            text = llm.render_chat(_prompted_messages(messages, tools))
    except XPULLMError as exc:
        raise ChatTemplateError(f"the chat template cannot render these messages: {exc}") from exc
    except (
        Exception
    ) as exc:  # jinja2.TemplateError and friends: the template's own complaint is the useful part
        raise ChatTemplateError(
            f"the chat template of {llm.model_name!r} cannot render these messages "
            f"({type(exc).__name__}: {exc}); merge or reorder the messages"
        ) from exc
    return _strip_leading_bos(llm, text)


def _strip_leading_bos(llm: LLM, text: str) -> str:
    # generate() tokenizes with special tokens, which prepends BOS for some tokenizers; the template already
    # wrote one, so drop the template's copy instead of feeding the model two.
    tok = llm.tokenizer
    bos = getattr(tok, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tok("x", add_special_tokens=True)["input_ids"]
        if ids and ids[0] == tok.bos_token_id:
            return text[len(bos) :]
    return text


# -- parsing ---------------------------------------------------------------------------------------------------


def parse_call(body: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """Parse one call body; None when it is not a JSON object naming a known tool."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in {t.name for t in tools}:
        return None
    args = data.get("arguments", data.get("parameters", {}))
    return ToolCall(data["name"], args) if isinstance(args, dict) else None


def _held_back(text: str) -> int:
    """How many trailing characters of `text` could be the start of CALL_OPEN (not safe to emit yet)."""
    for n in range(min(len(CALL_OPEN) - 1, len(text)), 0, -1):
        if CALL_OPEN.startswith(text[-n:]):
            return n
    return 0


# -- one turn --------------------------------------------------------------------------------------------------


def run_turn(
    llm: LLM,
    prompt: str,
    params: dict[str, Any],
    *,
    tools: Sequence[ToolSpec] = (),
    tool_choice: str = "auto",
    json_schema: dict[str, Any] | None = None,
    json_max_tokens: int = 256,
    json_max_string_length: int | None = None,
) -> Iterator[TurnEvent]:
    """Generate one assistant turn, yielding text deltas and tool calls as they complete, then a `done` event.

    `params` are engine generation parameters (max_new_tokens, temperature, stop, ...). Constrained parts
    (a tool call body, or the whole answer when `json_schema` is given) get at least `json_max_tokens` tokens,
    since a truncated JSON value is useless; `json_max_string_length` caps free strings inside them.
    """
    prompt_tokens = llm.count_tokens(prompt)
    budget = max(params.get("max_new_tokens", 256), json_max_tokens)
    if json_schema is not None:
        out = yield from _constrained(
            llm,
            prompt,
            {**params, "max_new_tokens": budget},
            compact_schema(json_schema, json_max_string_length),
        )
        text, finish = out
        if finish != "stop":
            raise StructuredOutputError(
                f"structured output stopped after {budget} tokens before the JSON was complete "
                f"(finish_reason={finish!r}); raise max_tokens / json_max_tokens"
            )
        yield _done(llm, prompt_tokens, text, finish)
        return
    if tool_choice not in ("auto", "none"):
        chosen = [t for t in tools if tool_choice in ("required", t.name)]
        yield from _forced_call(
            llm, prompt, params, chosen, budget, prompt_tokens, "", json_max_string_length
        )
        return
    stop = list(params.get("stop") or ())
    if tool_choice == "none" or not tools:
        text, finish = "", "stop"
        if tools:  # tools are listed but must not be called: end the turn where a call would begin
            params = {**params, "stop": [*stop, CALL_OPEN]}
        for delta in llm.stream(prompt, **params):
            text += delta
            yield TurnEvent("text", delta)
        yield _done(llm, prompt_tokens, text, finish)
        return
    # auto: a constrained first step decides between a call and an answer (only "<tool_call>" or text that does
    # not start with "<" may begin the turn), then the call body is decoded under its schema, or the answer
    # streams freely, still stopping where a call would begin.
    free = {k: v for k, v in params.items() if k not in ("stop", "max_new_tokens")}
    (first,) = llm.generate([prompt], **free, max_new_tokens=1, grammar=DECISION_GRAMMAR)
    if first.text.startswith(CALL_OPEN[0]):
        yield from _forced_call(llm, prompt, params, tools, budget, prompt_tokens, "", json_max_string_length)
        return
    if first.text:
        yield TurnEvent("text", first.text)
    text, emitted, opened = first.text, len(first.text), False
    room = params.get("max_new_tokens", 256) - first.completion_tokens
    if room < 1 or first.finish_reason == "cancelled":
        yield _done(llm, prompt_tokens, text, "length" if room < 1 else "stop")
        return
    deltas = llm.stream(prompt + first.text, **{**params, "max_new_tokens": room, "stop": stop or None})
    try:
        for delta in deltas:
            text += delta
            at = text.find(CALL_OPEN)
            if at >= 0:
                if at > emitted:
                    yield TurnEvent("text", text[emitted:at])
                text, opened = text[:at], True
                break
            safe = len(text) - _held_back(text)
            if safe > emitted:
                yield TurnEvent("text", text[emitted:safe])
                emitted = safe
    finally:
        deltas.close()  # releases the model for the constrained call below (or for the caller's next call)
    if not opened:
        if len(text) > emitted:
            yield TurnEvent("text", text[emitted:])
        yield _done(llm, prompt_tokens, text, "stop")
        return
    yield from _forced_call(
        llm, prompt + text, params, tools, budget, prompt_tokens, text, json_max_string_length
    )


def _forced_call(
    llm: LLM,
    prompt: str,
    params: dict[str, Any],
    tools: Sequence[ToolSpec],
    budget: int,
    prompt_tokens: int,
    text_before: str,
    max_string_length: int | None,
) -> Iterator[TurnEvent]:
    free = {k: v for k, v in params.items() if k not in ("stop", "max_new_tokens")}
    body, finish = yield from _constrained(
        llm,
        prompt + CALL_OPEN,
        {**free, "max_new_tokens": budget},
        call_schema(tools, max_string_length),
        emit=False,
    )
    call = parse_call(body, tools)
    if call is None or finish != "stop":
        yield TurnEvent("invalid_tool_call", body, finish_reason=finish)
    else:
        yield TurnEvent("tool_call", call=call)
    yield _done(llm, prompt_tokens, text_before + CALL_OPEN + body + CALL_CLOSE, "tool_calls")


def _constrained(
    llm: LLM, prompt: str, params: dict[str, Any], schema: dict[str, Any], emit: bool = True
) -> Iterator[TurnEvent]:
    """Stream JSON valid for `schema`; returns (text, finish_reason) as the generator's value."""
    params = {k: v for k, v in params.items() if k != "stop"}  # a stop string must not cut the JSON short
    text = ""
    for delta in llm.stream(prompt, json_schema=schema, **params):
        text += delta
        if emit:
            yield TurnEvent("text", delta)
    try:
        json.loads(text)
        finish = "stop"
    except json.JSONDecodeError:
        finish = "length"
    return text, finish


def _done(llm: LLM, prompt_tokens: int, text: str, finish: str) -> TurnEvent:
    # The engine's stream() does not report usage; re-tokenizing the output matches the generated count for
    # ordinary text (see docs/integrations.md, "engine proposals").
    completion = len(llm.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
    return TurnEvent("done", prompt_tokens=prompt_tokens, completion_tokens=completion, finish_reason=finish)
