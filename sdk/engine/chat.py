"""Chat messages -> prompt text through the tokenizer's chat template, with input validation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from xpullm.engine.params import InvalidParameter
from xpullm.errors import XPULLMError

__all__ = ["ROLES", "NoChatTemplate", "render_chat", "validate_messages"]

ROLES = ("system", "user", "assistant", "tool")


class NoChatTemplate(XPULLMError, ValueError):
    """The tokenizer has no chat template and none was passed."""


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Check a list of `{"role", "content"}` mappings; return plain dicts. Errors name the bad message field."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidParameter(
            "messages", messages, 'a non-empty list of {"role": ..., "content": ...} dicts'
        )
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise InvalidParameter(f"messages[{i}]", msg, 'a dict with "role" and "content"')
        role = msg.get("role")
        if role not in ROLES:
            raise InvalidParameter(f"messages[{i}].role", role, f"one of {ROLES}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise InvalidParameter(f"messages[{i}].content", content, "a string")
        out.append(dict(msg))
    return out


def render_chat(
    tokenizer: Any, messages: object, chat_template: str | None = None, add_generation_prompt: bool = True
) -> str:
    """Render messages with `chat_template` or the tokenizer's own template; the text includes special tokens."""
    msgs = validate_messages(messages)
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise NoChatTemplate(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat template; "
            "pass chat_template='<jinja template>' to LLM(...) or use generate() with a plain prompt"
        )
    return tokenizer.apply_chat_template(
        msgs, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
    )
