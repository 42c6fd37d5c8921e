"""The Chat tab: stored conversations in a sidebar, streamed answers with Stop / Regenerate / Edit, the place in line
while waiting, a model picker and live timings.

Conversations live in DATA_DIR/chats.sqlite (`ConversationStore`); the browser remembers which one is open
(`gr.BrowserState`), so a reload or a restart of the app comes back to it. The same generation is served to API
clients as the `/chat` endpoint (`gradio_client`: `api_name="/chat"`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from xpullm.apps.demo.context import DemoContext
from xpullm.apps.demo.errors import UserFacingError, friendly
from xpullm.apps.demo.model_catalog import PACKAGED, find_models
from xpullm.apps.demo.models import check_spec
from xpullm.apps.demo.streaming import Progress, stream_in_thread

if TYPE_CHECKING:
    from xpullm.engine import LLM

__all__ = ["build_chat_tab", "chat_api", "conversation"]

# Each answer in the chat window ends with its timings; this marker lets the next turn strip them again.
STATS_MARK = "\n\n<sub>"
# The browser's key for the open conversation; not a secret (ids only name conversations on this machine), and a
# fixed key lets the id survive a restart of the app.
BROWSER_KEY = "xpullm-demo-conversation"


def _text_of(content: Any) -> str:
    """Plain text of a chatbot message's content (a string, or Gradio's list of content blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(c) for c in content)
    return ""


def _plain(history: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    """Chat window messages as role/content strings (what the store keeps)."""
    return [
        {"role": m["role"], "content": _text_of(m.get("content"))}
        for m in history or []
        if m.get("role") in ("user", "assistant")
    ]


def conversation(system: str | None, history: list[dict[str, Any]], message: str) -> list[dict[str, str]]:
    """Engine messages from the chat window: system prompt, earlier turns (timings stripped), the new message."""
    out = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for m in _plain(history):
        out.append({"role": m["role"], "content": m["content"].split(STATS_MARK)[0]})
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
    """Stream the current model's answer to `messages` (the caller holds a generation slot)."""
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
            with ctx.slots.enter() as turn:
                for _line in turn.waiting():
                    pass
                for progress in generate(ctx, conversation(system_prompt, [], text), temp, n):
                    yield progress.text
            if progress is None:
                yield ""
        except Exception as exc:
            raise gr.Error(friendly(exc)) from None

    return chat


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "api"


def _buttons(generating: bool) -> tuple[Any, Any, Any, Any]:
    """Send, Stop, Regenerate, Edit: Stop only while an answer is on its way, the others only when none is."""
    idle = not generating
    return (
        gr.update(interactive=idle),
        gr.update(interactive=generating),
        gr.update(interactive=idle),
        gr.update(interactive=idle),
    )


def build_chat_tab(ctx: DemoContext) -> dict[str, Any]:
    """Lay out the Chat tab inside the current `gr.Blocks` and wire its events."""
    import xpullm

    cfg = ctx.config
    store = ctx.conversations

    def listing(selected: str | None) -> Any:
        return gr.update(choices=[(c.title, c.id) for c in store.list()], value=selected)

    with gr.Row(equal_height=False, elem_id="chat-row"):
        with gr.Column(scale=1, min_width=220, elem_id="chat-sidebar", elem_classes=["xp-card"]):
            new_chat = gr.Button("+ New chat", variant="secondary", elem_id="chat-new")
            conversations = gr.Radio(
                [], value=None, label="Conversations", elem_id="chat-list", elem_classes=["xp-list"]
            )
            with gr.Accordion("Rename or delete", open=False, elem_id="chat-manage"):
                title = gr.Textbox(show_label=False, placeholder="conversation title", elem_id="chat-title")
                with gr.Row():
                    rename = gr.Button("Rename", size="sm", elem_id="chat-rename")
                    delete = gr.Button("Delete", size="sm", variant="stop", elem_id="chat-delete")
                with gr.Row(visible=False, elem_id="chat-confirm-row") as confirm_row:
                    confirm = gr.Button("Yes, delete it", size="sm", variant="stop", elem_id="chat-confirm")
                    cancel_delete = gr.Button("Keep it", size="sm", elem_id="chat-keep")
        with gr.Column(scale=4, min_width=320):
            chatbot = gr.Chatbot(
                label="Chat",
                height=480,
                elem_id="chatbot",
                feedback_options=None,
                buttons=["copy"],
                placeholder="Ask anything: the answer streams here, with its timings under it.",
            )
            stats = gr.Markdown("", elem_id="chat-stats")
            message = gr.Textbox(
                placeholder="Ask anything… (Enter sends, Shift+Enter for a new line)",
                show_label=False,
                elem_id="chat-input",
                autofocus=True,
            )
            with gr.Row(elem_id="chat-buttons"):
                send = gr.Button("Send", variant="primary", elem_id="chat-send", min_width=80)
                stop = gr.Button("Stop", variant="stop", interactive=False, elem_id="chat-stop", min_width=80)
                regen = gr.Button("↻ Regenerate", elem_id="chat-regenerate", min_width=80)
                edit = gr.Button("✎ Edit last", elem_id="chat-edit", min_width=80)
        with gr.Column(scale=2, min_width=260, elem_id="chat-settings", elem_classes=["xp-card"]):
            gr.Markdown("#### Model", elem_classes=["xp-heading"])
            choices = find_models(cfg.model_search_dirs, cfg.hf_cache)
            model_pick = gr.Dropdown(
                [(c.label, c.value) for c in choices],
                value=cfg.model or PACKAGED,
                label="Model (or type a path / hub id)",
                allow_custom_value=True,
                filterable=True,
                elem_id="model-path",
            )
            with gr.Row():
                low_bit = gr.Dropdown(
                    xpullm.list_formats(), value=cfg.low_bit, label="Low-bit format", elem_id="low-bit"
                )
            with gr.Row():
                load = gr.Button("Load model", variant="primary", elem_id="load-model", min_width=80)
                rescan = gr.Button("↻ Rescan", elem_id="model-rescan", min_width=80)
            load_status = gr.Markdown("", elem_id="load-status")
            gr.Markdown("#### Answer settings", elem_classes=["xp-heading"])
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
    open_id = gr.BrowserState(None, storage_key=BROWSER_KEY, secret="xpullm-demo")

    # -- conversations --------------------------------------------------------------------------------------
    def on_page_load(cid: str | None):
        if not store.exists(cid):
            # Nothing to restore: leave the chat alone (a question sent while the page was loading stays).
            return gr.update(), listing(None), gr.update(), gr.update()
        return store.messages(cid), listing(cid), cid, store.title(cid)

    def on_new():
        return [], listing(None), None, "", ""

    def on_pick(cid: str | None, request: gr.Request):
        if ctx.generating(_session(request)):
            return (
                gr.update(),
                gr.update(),
                gr.update(),
                gr.update(),
                "wait for the answer (or press Stop) first",
            )
        if not cid or not store.exists(cid):
            return [], listing(None), None, "", ""
        return store.messages(cid), gr.update(), cid, store.title(cid), ""

    def on_rename(cid: str | None, new_title: str):
        try:
            if not cid:
                raise UserFacingError("no conversation is open; send a message or pick one first")
            store.rename(cid, new_title or "")
            return listing(cid), f"renamed to **{store.title(cid)}**"
        except Exception as exc:
            return gr.update(), f"Error: {friendly(exc)}"

    def on_delete_ask(cid: str | None):
        if not cid:
            return gr.update(visible=False), "Error: no conversation is open; pick one to delete"
        return gr.update(visible=True), f"delete **{store.title(cid)}** and its messages?"

    def on_delete(cid: str | None):
        title_ = store.title(cid) if cid and store.exists(cid) else "the conversation"
        if cid:
            store.delete(cid)
        return [], listing(None), None, "", gr.update(visible=False), f"deleted **{title_}**"

    # -- sending --------------------------------------------------------------------------------------------
    def on_submit(text: str, history: list[dict[str, Any]] | None, cid: str | None, request: gr.Request):
        """Show the question at once (it waits in line visibly), before the queued answer step runs."""
        session = _session(request)
        history = _plain(history)
        if ctx.generating(session):
            return (history, "wait for the answer (or press Stop) first", text, cid, gr.update(), False)
        try:
            text, _, _ = _validate(text, 0.0, 1, cfg.max_new_tokens_limit)
        except UserFacingError as exc:
            return (history, f"Error: {exc}", text, cid, gr.update(), False)
        history.append({"role": "user", "content": text})
        if not cid or not store.exists(cid):
            cid = store.create(text)
        store.save(cid, history)
        ctx.stop_event(session)  # generating from now on: Stop works while it waits in line, too
        return (history, "waiting for a slot…", "", cid, listing(cid), True)

    def on_regenerate(history: list[dict[str, Any]] | None, cid: str | None, request: gr.Request):
        session = _session(request)
        history = _plain(history)
        if ctx.generating(session):
            return history, "wait for the answer (or press Stop) first", False
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            return history, "Error: there is no question to answer again; type one first", False
        ctx.stop_event(session)
        return history, "answering again…", True

    def on_edit(history: list[dict[str, Any]] | None, cid: str | None, request: gr.Request):
        history = _plain(history)
        if ctx.generating(_session(request)):
            return history, gr.update(), "wait for the answer (or press Stop) first"
        while history and history[-1]["role"] == "assistant":
            history.pop()
        if not history:
            return history, gr.update(), "Error: there is no question to edit"
        last = history.pop()["content"]
        if cid and store.exists(cid):
            store.save(cid, history)
        return history, last, "edit the question and send it again"

    def answer(
        history: list[dict[str, Any]] | None,
        cid: str | None,
        system_prompt: str,
        temp: float,
        n: int,
        go: bool,
        request: gr.Request,
    ):
        """Stream the answer to the last question: in line first (with its position), then token by token."""
        session = _session(request)
        history = _plain(history)
        if not go:
            yield gr.update(), gr.update()
            return
        if not history or history[-1]["role"] != "user":
            ctx.current_stop(session).set()
            yield gr.update(), "nothing to answer: the question was not found; send it again"
            return
        cancel = ctx.current_stop(session)
        question = history[-1]["content"]
        history.append({"role": "assistant", "content": ""})

        def persist() -> None:  # before the last update goes out: a reload right after it finds the answer
            if cid and store.exists(cid):
                store.save(cid, [m for m in history if not m["content"].startswith("⏳")])

        try:
            _, temp, n = _validate(question, temp, n, cfg.max_new_tokens_limit)
            msgs = conversation(system_prompt, history[:-2], question)
            with ctx.slots.enter() as turn:
                for line in turn.waiting(cancel):
                    history[-1]["content"] = f"⏳ _{line}_"
                    yield history, line
                history[-1]["content"] = ""
                yield history, "waiting for the first token…"
                for p in generate(ctx, msgs, temp, n, cancel):
                    line = p.stats_line()
                    history[-1]["content"] = p.text + (f"{STATS_MARK}{line}</sub>" if p.done else "")
                    if p.done:
                        persist()
                    yield history, line
        except InterruptedError:
            history.pop()
            persist()
            yield history, "stopped before the answer started"
        except Exception as exc:
            last = history[-1]
            if last["role"] == "assistant" and (not last["content"] or last["content"].startswith("⏳")):
                history.pop()
            persist()
            yield history, f"Error: {friendly(exc)}"
        finally:
            cancel.set()
            persist()  # also when the page went away mid-answer

    def on_stop(request: gr.Request) -> None:
        # No output of its own: the running answer ends within a token and reports "stopped" itself.
        ctx.stop(_session(request))

    # -- model picker -----------------------------------------------------------------------------------------
    def on_rescan(current: str | None):
        found = find_models(cfg.model_search_dirs, cfg.hf_cache)
        return gr.update(
            choices=[(c.label, c.value) for c in found], value=current
        ), f"found {len(found)} models"

    def on_load(path: str | None, fmt: str, progress=gr.Progress()):
        try:
            spec = check_spec(None if path == PACKAGED else path, fmt, cfg.device)
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

    # -- wiring -----------------------------------------------------------------------------------------------
    go = gr.State(False)
    buttons = [send, stop, regen, edit]
    private = {"api_visibility": "private"}
    answer_args = {"concurrency_id": "answers", "concurrency_limit": None, **private}
    answer_inputs = [chatbot, open_id, system, temperature, max_tokens, go]
    busy = lambda: _buttons(True)  # noqa: E731
    idle = lambda: _buttons(False)  # noqa: E731
    submit_outputs = [chatbot, stats, message, open_id, conversations, go]
    for trigger in (message.submit, send.click):
        (
            trigger(on_submit, [message, chatbot, open_id], submit_outputs, queue=False, **private)
            .then(busy, None, buttons, queue=False, **private)
            .then(answer, answer_inputs, [chatbot, stats], show_progress="hidden", **answer_args)
            .then(idle, None, buttons, queue=False, **private)
        )
    (
        regen.click(on_regenerate, [chatbot, open_id], [chatbot, stats, go], queue=False, **private)
        .then(busy, None, buttons, queue=False, **private)
        .then(answer, answer_inputs, [chatbot, stats], show_progress="hidden", **answer_args)
        .then(idle, None, buttons, queue=False, **private)
    )
    edit.click(on_edit, [chatbot, open_id], [chatbot, message, stats], queue=False, **private)
    stop.click(on_stop, None, None, queue=False, **private)
    new_chat.click(on_new, None, [chatbot, conversations, open_id, title, stats], queue=False, **private)
    # The chat window's own clear (trash) button starts a new chat too; the cleared one stays in the list.
    chatbot.clear(on_new, None, [chatbot, conversations, open_id, title, stats], queue=False, **private)
    conversations.input(
        on_pick, conversations, [chatbot, conversations, open_id, title, stats], queue=False, **private
    )
    rename.click(on_rename, [open_id, title], [conversations, stats], queue=False, **private)
    delete.click(on_delete_ask, open_id, [confirm_row, stats], queue=False, **private)
    cancel_delete.click(
        lambda: (gr.update(visible=False), ""), None, [confirm_row, stats], queue=False, **private
    )
    confirm.click(
        on_delete,
        open_id,
        [chatbot, conversations, open_id, title, confirm_row, stats],
        queue=False,
        **private,
    )
    rescan.click(on_rescan, model_pick, [model_pick, load_status], queue=False, **private)
    load.click(on_load, [model_pick, low_bit], load_status, concurrency_id="model-load", **private)
    gr.api(chat_api(ctx), api_name="chat", concurrency_id="answers", concurrency_limit=None)
    return {
        "chatbot": chatbot,
        "stats": stats,
        "message": message,
        "page_load": (on_page_load, [open_id], [chatbot, conversations, open_id, title]),
    }
