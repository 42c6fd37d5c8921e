"""`XPULLM` for LlamaIndex: a function-calling LLM over `xpullm.LLM` (chat template, streaming, tools, async)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from xpullm.engine import LLM
from xpullm.engine.aio import iterate_in_thread
from xpullm.engine.params import Completion
from xpullm.integrations._args import LLMArg
from xpullm.integrations._engines import shared_llm
from xpullm.integrations._fields import StrictArguments
from xpullm.integrations._sampling import apply_do_sample, ipex_low_bit
from xpullm.integrations._toolcall import (
    ChatTemplateError,
    ToolCall,
    ToolSpec,
    TurnEvent,
    check_tools,
    effective_choice,
    make_tool_spec,
    render_prompt,
    resolve_tool_choice,
    run_turn,
)

__all__ = ["XPULLM"]


class XPULLM(StrictArguments, FunctionCallingLLM):
    """A low-bit model as a LlamaIndex function-calling LLM.

    ```python
    from xpullm.integrations.llamaindex import XPULLM

    llm = XPULLM()  # packaged default model, loaded on first use
    print(llm.complete("The capital of France is").text)
    ```
    Migrating from the removed `llama_index.llms.ipex_llm.IpexLLM`: `XPULLM.from_model_id(...)` and
    `XPULLM.from_model_id_low_bit(...)` take the same arguments.
    """

    model: LLMArg = Field(
        default=None, description="None (packaged default), a path / hub id, or an xpullm.LLM."
    )
    low_bit: str | None = Field(
        default=None,
        description="Low-bit format when this object loads weights; None follows the checkpoint.",
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or xpu.")
    max_new_tokens: int = Field(default=256, ge=1, description="Upper bound on generated tokens.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding.")
    repetition_penalty: float = Field(default=1.0, gt=0.0, description=">1 discourages repeats.")
    stop: list[str] | None = Field(default=None, description="Stop strings for every call.")
    json_max_tokens: int = Field(default=512, ge=1, description="Minimum budget of a constrained tool call.")
    json_max_string_length: int | None = Field(
        default=256, ge=1, description="Cap on free strings in tool calls."
    )
    max_tool_rounds: int | None = Field(
        default=None,
        ge=0,
        description="In auto mode, stop offering tools after this many rounds (None = no cap).",
    )
    generate_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Engine generation arguments for every call (top_p, top_k, seed, do_sample, ...).",
    )
    tokenizer_name: str | None = Field(
        default=None, description="Folder or hub id of the tokenizer when it is not next to the weights."
    )

    _engine: LLM = PrivateAttr(default=None)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = shared_llm(self.model, self.low_bit, self.device, tokenizer_spec=self.tokenizer_name)

    @classmethod
    def from_model_id(
        cls,
        model_name: str,
        tokenizer_name: str | None = None,
        *,
        load_in_low_bit: str | None = None,
        load_in_4bit: bool = True,
        device_map: str = "auto",
        generate_kwargs: dict[str, Any] | None = None,
        context_window: int | None = None,
        **kwargs: Any,
    ) -> XPULLM:
        """The removed LlamaIndex `IpexLLM.from_model_id`: a folder / .gguf / hub id in a low-bit format
        ("fp8" = "fp8_e5m2"; default sym_int4). `context_window` is accepted and the model's own window used."""
        low_bit = ipex_low_bit(load_in_low_bit) or ("sym_int4" if load_in_4bit else None)
        return cls(
            model=model_name,
            tokenizer_name=tokenizer_name,
            low_bit=low_bit,
            device=device_map,
            generate_kwargs=dict(generate_kwargs or {}),
            **kwargs,
        )

    @classmethod
    def from_model_id_low_bit(
        cls,
        model_name: str,
        tokenizer_name: str | None = None,
        *,
        device_map: str = "auto",
        generate_kwargs: dict[str, Any] | None = None,
        context_window: int | None = None,
        **kwargs: Any,
    ) -> XPULLM:
        """The removed LlamaIndex `IpexLLM.from_model_id_low_bit`: a folder written by `save_low_bit`."""
        return cls(
            model=model_name,
            tokenizer_name=tokenizer_name,
            low_bit=None,
            device=device_map,
            generate_kwargs=dict(generate_kwargs or {}),
            **kwargs,
        )

    @classmethod
    def class_name(cls) -> str:
        return "XPULLM"

    @property
    def engine(self) -> Any:
        """The shared `xpullm.LLM`."""
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self._engine.context_length,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._engine.model_name,
        )

    # -- plumbing --------------------------------------------------------------------------------------

    def _params(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        params = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "repetition_penalty": self.repetition_penalty,
            "stop": self.stop or None,
            **self.generate_kwargs,
        }
        params.update({k: v for k, v in kwargs.items() if k not in ("formatted",)})
        params = apply_do_sample(params)
        from xpullm.engine import GenerationParams

        GenerationParams.from_kwargs(**params)  # bad values fail at the call site
        return params

    def _turn(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        tools: list[ToolSpec] = kwargs.pop("tools", None) or []
        choice = resolve_tool_choice(kwargs.pop("tool_choice", None), tools)
        params = self._params(kwargs)
        dicts = _to_dicts(messages)
        choice = effective_choice(dicts, choice, self.max_tool_rounds)
        prompt = render_prompt(self._engine, dicts, tools if choice != "none" else ())

        def run(cancel: Any = None) -> Any:
            return run_turn(
                self._engine,
                prompt,
                {**params, "cancel": cancel} if cancel is not None else params,
                tools=tools,
                tool_choice=choice,
                json_max_tokens=self.json_max_tokens,
                json_max_string_length=self.json_max_string_length,
            )

        return run

    def _responses(self, events: Iterable[TurnEvent]) -> ChatResponseGen:
        text, calls = "", []
        for ev in events:
            if ev.kind == "text":
                text += ev.text
            elif ev.kind == "tool_call":
                calls.append(ev.call)
            elif ev.kind == "done":
                yield self._response(text, calls, "", ev)
                return
            else:
                continue
            yield self._response(text, calls, ev.text if ev.kind == "text" else "", None)

    def _response(self, text: str, calls: list[ToolCall], delta: str, done: TurnEvent | None) -> ChatResponse:
        extra: dict[str, Any] = {}
        if calls:
            extra["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        raw = None
        if done is not None:
            raw = {
                "usage": {
                    "prompt_tokens": done.prompt_tokens,
                    "completion_tokens": done.completion_tokens,
                    "total_tokens": done.prompt_tokens + done.completion_tokens,
                },
                "finish_reason": done.finish_reason,
                "model": self._engine.model_name,
            }
        msg = ChatMessage(role=MessageRole.ASSISTANT, content=text, additional_kwargs=extra)
        return ChatResponse(message=msg, delta=delta, raw=raw)

    # -- chat ------------------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        *_, last = self._responses(self._turn(messages, kwargs)())
        return last

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        run = self._turn(messages, kwargs)
        return self._responses(run())

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        responses = [r async for r in await self._astream_chat(messages, **kwargs)]
        return responses[-1]

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return await self._astream_chat(messages, **kwargs)

    async def _astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        run = self._turn(messages, kwargs)  # validation and rendering happen here, on the caller's side

        async def gen() -> ChatResponseAsyncGen:
            async for resp in iterate_in_thread(lambda cancel: self._responses(run(cancel))):
                yield resp

        return gen()

    # -- completion ------------------------------------------------------------------------------------

    def _completion_response(self, c: Completion) -> CompletionResponse:
        usage = {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        }
        raw = {"usage": usage, "finish_reason": c.finish_reason, "model": self._engine.model_name}
        return CompletionResponse(text=c.text, raw=raw, additional_kwargs=dict(usage))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion_response(self._engine.generate(prompt, **self._params(kwargs)))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        params = self._params(kwargs)

        def gen() -> CompletionResponseGen:
            text = ""
            for delta in self._engine.stream(prompt, **params):
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        params = self._params(kwargs)
        # One Completion from a worker thread: the event loop keeps running and cancelling the task stops it.
        results = iterate_in_thread(
            lambda cancel: iter([self._engine.generate(prompt, **params, cancel=cancel)])
        )
        completions = [c async for c in results]
        return self._completion_response(completions[0])

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        return await self._astream_complete(prompt, **kwargs)

    async def _astream_complete(self, prompt: str, **kwargs: Any) -> CompletionResponseAsyncGen:
        params = self._params(kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            text = ""
            stream = iterate_in_thread(lambda cancel: self._engine.stream(prompt, **params, cancel=cancel))
            async for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta)

        return gen()

    # -- tools -----------------------------------------------------------------------------------------

    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        specs = [_tool_spec(t) for t in tools]
        if tool_choice is None and tool_required:
            tool_choice = "required"
        resolve_tool_choice(tool_choice, specs)  # an unknown tool name fails here
        check_tools(specs)  # and so does a schema the constrained call cannot use
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg)
                if isinstance(user_msg, str)
                else user_msg
            )
        return {"messages": messages, "tools": specs, "tool_choice": tool_choice, **kwargs}

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls", [])
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"expected a tool call in the response, got text: {response.message.content!r:.200}"
            )
        return [
            ToolSelection(
                tool_id=c["id"], tool_name=c["function"]["name"], tool_kwargs=c["function"]["arguments"]
            )
            for c in calls
        ]


def _tool_spec(tool: Any) -> ToolSpec:
    meta = tool.metadata
    try:
        params = meta.get_parameters_dict()
    except Exception as exc:  # a tool whose fn_schema cannot produce a JSON schema
        raise ChatTemplateError(
            f"tool {getattr(meta, 'name', tool)!r} has no usable parameter schema: {exc}"
        ) from exc
    return make_tool_spec(meta.name, meta.description, params)


def _to_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        role = msg.role.value if isinstance(msg.role, MessageRole) else str(msg.role)
        role = {"chatbot": "assistant", "model": "assistant", "developer": "system"}.get(role, role)
        if role not in ("system", "user", "assistant", "tool"):
            raise ChatTemplateError(f"messages[{i}] has role {role!r}; use system, user, assistant or tool")
        for block in msg.blocks:
            if getattr(block, "block_type", "text") not in ("text", "tool_call", "thinking"):
                raise ChatTemplateError(
                    f"messages[{i}] has a {block.block_type!r} block; this model reads text only"
                )
        item: dict[str, Any] = {"role": role, "content": msg.content or ""}
        raw_calls = msg.additional_kwargs.get("tool_calls") or []
        if role == "assistant" and raw_calls:
            calls = []
            for c in raw_calls:
                fn = c.get("function", c) if isinstance(c, dict) else {}
                args = fn.get("arguments", {})
                args = json.loads(args) if isinstance(args, str) else args
                call = ToolCall(fn.get("name", ""), args, c.get("id") or ToolCall("", {}).id)
                names[call.id] = call.name
                calls.append(call)
            item["tool_calls"] = calls
        if role == "tool":
            call_id = msg.additional_kwargs.get("tool_call_id", "")
            item["tool_call_id"] = call_id
            item["name"] = msg.additional_kwargs.get("name") or names.get(call_id)
        out.append(item)
    return out
