"""`ChatXPU`: a LangChain chat model over `xpullm.LLM` (chat template, real streaming, tool calling,
structured output through constrained decoding)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from xpullm.engine import LLM
from xpullm.engine.aio import iterate_in_thread
from xpullm.integrations._args import LLMArg
from xpullm.integrations._engines import shared_llm
from xpullm.integrations._fields import StrictArguments
from xpullm.integrations._toolcall import (
    ToolSpec,
    TurnEvent,
    check_tools,
    effective_choice,
    render_prompt,
    resolve_tool_choice,
    run_turn,
    validate_json_schema,
)
from xpullm.integrations.langchain._messages import schema_dict, to_dicts, tool_spec, trace_schema

__all__ = ["ChatXPU"]

_STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")


class ChatXPU(StrictArguments, BaseChatModel):
    """Chat with a low-bit model through xpullm's engine.

    ```python
    from xpullm.integrations.langchain import ChatXPU

    chat = ChatXPU()  # packaged SmolLM2-135M-Instruct, loaded on first use
    chat.invoke("Name a colour.").content
    ```
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    model: LLMArg = None
    """None (packaged default), a folder / .gguf path / hub id, or an `xpullm.LLM` to share a loaded model."""
    low_bit: str | None = None
    """Low-bit format used when this object loads the weights; None follows the checkpoint (ignored for a given
    `xpullm.LLM`)."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `xpu` (ignored for a given `xpullm.LLM`)."""
    max_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens per turn."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 = greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1 = off)."""
    top_k: int = Field(default=0, ge=0)
    """Keep the k most likely tokens (0 = off)."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """>1 discourages repeating tokens (1 = off)."""
    seed: int | None = None
    """Sampler seed for reproducible sampled output."""
    stop: list[str] | None = None
    """Stop strings applied to every call (merged with per-call `stop`)."""
    streaming: bool = False
    """When True, `invoke` runs through `_stream` so callbacks receive tokens as they are generated."""
    json_max_tokens: int = Field(default=512, ge=1)
    """Minimum token budget of constrained JSON (tool-call bodies, structured output); truncated JSON is useless."""
    json_max_string_length: int | None = Field(default=256, ge=1)
    """Cap on free JSON strings in constrained output, so a looping small model still closes its JSON."""

    max_tool_rounds: int | None = Field(default=None, ge=0)
    """In "auto" mode, stop offering tools after this many tool rounds since the last user message (None =
    unlimited). Small models without a native tool format tend to repeat a call; 1 gives one-step agents."""
    timeout: float | None = None
    """Accepted for API compatibility with hosted chat models; a local model has no request to time out."""
    max_retries: int | None = None
    """Accepted for API compatibility with hosted chat models; local generation is not retried."""

    _engine: LLM = PrivateAttr(default=None)

    also_accepted: ClassVar[tuple[str, ...]] = ("callback_manager",)

    @model_validator(mode="after")
    def _resolve_engine(self) -> ChatXPU:
        self._engine = shared_llm(self.model, self.low_bit, self.device)
        return self

    # -- identity --------------------------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        """The `xpullm.LLM` doing the work (shared with other adapters built on the same model)."""
        return self._engine

    @property
    def model_name(self) -> str:
        """The model's display name (reported as `response_metadata["model_name"]`)."""
        return self._engine.model_name

    @property
    def _llm_type(self) -> str:
        return "xpullm-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, **self._gen_defaults()}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="xpullm",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # -- tools and structured output -------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; `tool_choice` = "auto" (default), "none", "any"/"required"/True, or a tool name.

        Forced choices decode the call under a JSON-schema constraint, so the arguments always validate.
        Raises `InvalidToolSchema` / `InvalidToolChoice` here, at bind time, for unusable tools or choices.
        """
        specs: list[ToolSpec] = []
        for spec in map(tool_spec, tools):
            if all(s.name != spec.name for s in specs):  # a repeated name keeps its first definition
                specs.append(spec)
        choice = resolve_tool_choice(tool_choice, specs)
        check_tools(specs)  # the combined call schema must compile too (nested $defs, anyOf over tools)
        return super().bind(tools=[s.as_json() for s in specs], tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict | BaseModel]:
        """Answer with JSON valid for `schema` (a pydantic class, TypedDict or JSON-schema dict).

        Every method decodes under the same llguidance constraint: "json_schema" and "function_calling" use the
        schema; "json_mode" uses it too when given (our constraint is free to be stricter than the API's).
        """
        if kwargs:
            raise ValueError(f"unexpected arguments for with_structured_output: {sorted(kwargs)}")
        if method not in _STRUCTURED_METHODS:
            raise ValueError(f"method={method!r} is not supported; use one of {_STRUCTURED_METHODS}")
        json_schema = validate_json_schema(schema_dict(schema), "structured output schema")
        llm = self.bind(
            response_format=json_schema,
            ls_structured_output_format={
                "kwargs": {"method": method, "strict": strict},
                "schema": trace_schema(schema, json_schema),
            },
        )
        from pydantic.v1 import BaseModel as BaseModelV1

        is_pydantic = isinstance(schema, type) and issubclass(schema, (BaseModel, BaseModelV1))
        parser: Runnable = (
            PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()  # type: ignore[arg-type]
        )
        if not include_raw:
            return llm | parser
        parse = RunnablePassthrough.assign(
            parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parse.with_fallbacks([fallback], exception_key="parsing_error")

    # -- token counting (the model's own tokenizer and chat template, never a GPT-2 download) ----------

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` under the model's tokenizer (no special tokens added)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self._engine.tokenizer(text, add_special_tokens=False)["input_ids"])

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], tools: Sequence | None = None) -> int:
        """Prompt tokens of `messages` (and `tools`) as rendered by the chat template; equals the
        `usage_metadata["input_tokens"]` an invoke on them reports."""
        specs = [tool_spec(t) for t in tools or ()]
        return self._engine.count_tokens(render_prompt(self._engine, to_dicts(messages), specs))

    # -- generation ------------------------------------------------------------------------------------

    def _gen_defaults(self) -> dict[str, Any]:
        return {
            "max_new_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }

    def _turn(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Callable[[Any], Iterator[TurnEvent]]:
        """Validate everything on the caller's side; return a function that runs the turn (maybe in a thread)."""
        kwargs = dict(kwargs)
        kwargs.pop("model", None)  # one loaded model per instance: a per-call name only labels traces
        tools = [tool_spec(t) for t in kwargs.pop("tools", None) or []]
        choice = resolve_tool_choice(kwargs.pop("tool_choice", None), tools)
        response_format = kwargs.pop("response_format", None)
        params = self._gen_defaults()
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        params.update(kwargs)
        params["stop"] = [*(self.stop or []), *(stop or [])] or None
        from xpullm.engine import GenerationParams

        GenerationParams.from_kwargs(**params)  # bad values fail here, before any work
        dicts = to_dicts(messages)
        choice = effective_choice(dicts, choice, self.max_tool_rounds)
        # "none" hides the tools from the prompt too: a model shown tools keeps trying to call them.
        prompt = render_prompt(self._engine, dicts, tools if choice != "none" else ())

        def run(cancel: Any = None) -> Iterator[TurnEvent]:
            return run_turn(
                self._engine,
                prompt,
                {**params, "cancel": cancel} if cancel is not None else params,
                tools=tools,
                tool_choice=choice,
                json_schema=response_format,
                json_max_tokens=self.json_max_tokens,
                json_max_string_length=self.json_max_string_length,
            )

        return run

    def _chunks(self, events: Iterator[TurnEvent]) -> Iterator[ChatGenerationChunk]:
        index = 0
        for ev in events:
            if ev.kind == "text":
                yield ChatGenerationChunk(message=AIMessageChunk(content=ev.text))
            elif ev.kind == "tool_call":
                call = ev.call
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        tool_call_chunks=[
                            {
                                "name": call.name,
                                "args": json.dumps(call.arguments, ensure_ascii=False),
                                "id": call.id,
                                "index": index,
                                "type": "tool_call_chunk",
                            }
                        ],
                    )
                )
                index += 1
            elif ev.kind == "invalid_tool_call":
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        invalid_tool_calls=[
                            {
                                "name": None,
                                "args": ev.text,
                                "id": None,
                                "error": f"incomplete tool call (finish_reason={ev.finish_reason})",
                                "type": "invalid_tool_call",
                            }
                        ],
                    )
                )
            else:
                usage = UsageMetadata(
                    input_tokens=ev.prompt_tokens,
                    output_tokens=ev.completion_tokens,
                    total_tokens=ev.prompt_tokens + ev.completion_tokens,
                )
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content="",
                        usage_metadata=usage,
                        response_metadata={
                            "model_name": self.model_name,
                            "finish_reason": ev.finish_reason,
                            "model_provider": "xpullm",
                        },
                        chunk_position="last",
                    ),
                    generation_info={"finish_reason": ev.finish_reason},
                )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        run = self._turn(messages, stop, kwargs)
        for chunk in self._chunks(run(None)):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        run = self._turn(messages, stop, kwargs)
        async for chunk in iterate_in_thread(lambda cancel: self._chunks(run(cancel))):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return _result(self._stream(messages, stop, run_manager if self.streaming else None, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [
            c async for c in self._astream(messages, stop, run_manager if self.streaming else None, **kwargs)
        ]
        return _result(iter(chunks))


def _result(chunks: Iterator[ChatGenerationChunk]) -> ChatResult:
    total: ChatGenerationChunk | None = None
    for chunk in chunks:
        total = chunk if total is None else total + chunk
    assert total is not None  # run_turn always ends with a "done" event
    msg = total.message
    message = AIMessage(
        content=msg.content,
        tool_calls=msg.tool_calls,
        invalid_tool_calls=msg.invalid_tool_calls,
        usage_metadata=msg.usage_metadata,
        response_metadata=msg.response_metadata,
        id=msg.id,
    )
    return ChatResult(generations=[ChatGeneration(message=message, generation_info=total.generation_info)])
