"""The Chat tab: streamed answers with a stop button, sampling settings, model/format switching and live timings.

The same generation is served to API clients as the `/chat` endpoint (`gradio_client`: `api_name="/chat"`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from xpullm.apps.demo.context import LLM_QUEUE, DemoContext
from xpullm.apps.demo.errors import UserFacingError, friendly
from xpullm.apps.demo.models import check_spec
from xpullm.apps.demo.streaming import Progress, stream_in_thread

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["build_chat_tab", "chat_api", "conversation"]

# Each answer in the chat window ends with its timings; this marker lets the next turn strip them again.
STATS_MARK = "\n\n<sub>"


def _text_of(content: Any) -> str:
    """Plain text of a chatbot message's content (a string, or Gradio's list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(c) for c in content)
    return ""


def conversation(system: str | None, history: list[dict[str, Any]], message: str) -> list[dict[str, str]]:
    """Engine messages from the chat window: system prompt, earlier turns (timings stripped), the new message."""
    out = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in history:
        role = m.get("role")
        if role in ("user", "assistant"):
            text = _text_of(m.get("content")).split(STATS_MARK)[0]
            out.append({"role": role, "content": text})
    out.append({"role": "user", "content": message})
    return out


def _fit(llm: LLM, messages: list[dict[str, str]], max_new_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest turns until the prompt leaves room for the answer (the system prompt and question stay)."""
    budget = llm.context_length - max_new_tokens
    msgs = list(messages)
    while len(msgs) > 2 and llm.count_tokens(llm.render_chat(msgs)) > budget:
        drop = 1 if msgs[0]["role"] == "system" else 0
        del msgs[drop]
    return msgs


def _validate(message: Any, temperature: Any, max_new_tokens: Any, limit: int) -> tuple[str, float, int]:
    if not isinstance(message, str) or not message.strip():
        raise UserFacingError("the message is empty; type a question first")
    try:
        temperature = float(temperature)
        max_new_tokens = int(max_new_tokens)
    except (TypeError, ValueError) as exc:
        raise UserFacingError(f"temperature and max tokens must be numbers ({exc})") from exc
    if not 0.0 <= temperature <= 2.0:
        raise UserFacingError(f"temperature={temperature} must be between 0 and 2")
    if not 1 <= max_new_tokens <= limit:
        raise UserFacingError(f"max tokens={max_new_tokens} must be between 1 and {limit}")
    return message.strip(), temperature, max_new_tokens


def generate(
    ctx: DemoContext,
    messages: list[dict[str, str]],
    temperature: float,
    max_new_tokens: int,
    cancel: threading.Event | None = None,
) -> Iterator[Progress]:
    """Stream the current model's answer to `messages`."""
    llm = ctx.models.get().llm
    msgs = _fit(llm, messages, max_new_tokens)
    tok = llm.tokenizer

    def start(ev: threading.Event) -> Iterator[str]:
        return llm.stream_chat(msgs, max_new_tokens=max_new_tokens, temperature=temperature, cancel=ev)

    return stream_in_thread(start, lambda t: len(tok(t, add_special_tokens=False)["input_ids"]), cancel)


def chat_api(ctx: DemoContext):
    """The `/chat` endpoint function (typed: gr.api derives the API schema from its signature)."""

    def chat(
        message: str, system_prompt: str = "", temperature: float = 0.0, max_new_tokens: int = 256
    ) -> Iterator[str]:
        """Stream the answer to `message`: each update is the whole answer so far."""
        try:
            text, temp, n = _validate(message, temperature, max_new_tokens, ctx.config.max_new_tokens_limit)
            progress = None
            for progress in generate(ctx, conversation(system_prompt, [], text), temp, n):
                yield progress.text
            if progress is None:
                yield ""
        except Exception as exc:
            raise gr.Error(friendly(exc)) from None

    return chat


def build_chat_tab(ctx: DemoContext) -> dict[str, Any]:
    """Lay out the Chat tab inside the current `gr.Blocks` and wire its events."""
    import xpullm

    cfg = ctx.config
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(
                label="Chat", height=430, elem_id="chatbot", feedback_options=None, buttons=["copy"]
            )
            stats = gr.Markdown("", elem_id="chat-stats")
            message = gr.Textbox(
                placeholder="Ask anything… (Enter sends)",
                show_label=False,
                elem_id="chat-input",
                autofocus=True,
            )
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                clear = gr.Button("Clear")
        with gr.Column(scale=2):
            system = gr.Textbox(
                label="System prompt", value="You are a helpful assistant.", lines=2, elem_id="system-prompt"
            )
            temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
            max_tokens = gr.Slider(
                1,
                cfg.max_new_tokens_limit,
                value=cfg.max_new_tokens,
                step=1,
                label="Max new tokens",
                elem_id="max-tokens",
            )
            gr.Markdown(
                "**Model**: a local folder, a `.gguf` file or a hub id; empty = packaged SmolLM2-135M."
            )
            model_path = gr.Textbox(
                label="Model path",
                value=cfg.model or "",
                placeholder="(packaged default)",
                elem_id="model-path",
            )
            low_bit = gr.Dropdown(xpullm.list_formats(), value=cfg.low_bit, label="Low-bit format")
            load = gr.Button("Load model", elem_id="load-model")
            load_status = gr.Markdown("", elem_id="load-status")

    def respond(
        text: str, history: list[dict[str, Any]], system_prompt: str, temp: float, n: int, request: gr.Request
    ):
        history = list(history or [])
        try:
            text, temp, n = _validate(text, temp, n, cfg.max_new_tokens_limit)
            msgs = conversation(system_prompt, history, text)
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            yield history, "waiting for the model…", ""
            cancel = ctx.stop_event(getattr(request, "session_hash", None) or "api")
            for p in generate(ctx, msgs, temp, n, cancel):
                line = p.stats_line()
                history[-1]["content"] = p.text + (f"{STATS_MARK}{line}</sub>" if p.done else "")
                yield history, line, ""
        except Exception as exc:
            if history and history[-1]["role"] == "assistant" and not history[-1]["content"]:
                history = history[:-2]  # the turn failed: leave the question in the box to edit and resend
            yield history, f"Error: {friendly(exc)}", text

    def on_stop(request: gr.Request) -> None:
        # No output of its own: the running answer ends within a token and reports "stopped" itself.
        ctx.stop(getattr(request, "session_hash", None) or "api")

    def on_load(path: str, fmt: str, progress=gr.Progress()):
        try:
            spec = check_spec(path, fmt, cfg.device)
        except UserFacingError as exc:
            return f"Error: {exc}"
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["loaded"] = ctx.models.switch(spec)
            except Exception as exc:
                box["error"] = exc

        thread = threading.Thread(target=work, name="xpullm-demo-switch", daemon=True)
        t0 = time.monotonic()
        thread.start()
        while thread.is_alive():
            elapsed = time.monotonic() - t0
            progress(min(0.95, elapsed / (elapsed + 10.0)), desc=f"loading {spec.label} ({elapsed:.0f} s)")
            thread.join(0.5)
        if "error" in box:
            return f"Error: {friendly(box['error'])}"
        loaded = box["loaded"]
        return f"Loaded {spec.label} in {loaded.load_s or 0.0:.1f} s ({loaded.nbytes / 2**20:.0f} MiB on {loaded.device})"

    inputs = [message, chatbot, system, temperature, max_tokens]
    outputs = [chatbot, stats, message]
    common = {"concurrency_id": LLM_QUEUE, "concurrency_limit": 1, "api_visibility": "private"}
    message.submit(respond, inputs, outputs, **common)
    send.click(respond, inputs, outputs, **common)
    stop.click(on_stop, None, None, queue=False, api_visibility="private")
    clear.click(lambda: ([], ""), None, [chatbot, stats], queue=False, api_visibility="private")
    load.click(
        on_load, [model_path, low_bit], load_status, concurrency_id="model-load", api_visibility="private"
    )
    gr.api(chat_api(ctx), api_name="chat", concurrency_id=LLM_QUEUE, concurrency_limit=1)
    return {"chatbot": chatbot, "stats": stats, "message": message}
