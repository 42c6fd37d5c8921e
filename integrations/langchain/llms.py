"""`XPULLM`: a LangChain text-completion `LLM` over `xpullm.LLM`, a drop-in for `langchain_community`'s `IpexLLM`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from xpullm.engine import LLM as TextLLM
from xpullm.engine.aio import iterate_in_thread
from xpullm.integrations._args import LLMArg
from xpullm.integrations._engines import shared_llm
from xpullm.integrations._fields import StrictArguments
from xpullm.integrations._sampling import apply_do_sample, ipex_low_bit

__all__ = ["XPULLM"]

# Prompts of one `batch` / `generate` call in flight at once (each is one engine request; the engine queues what
# its KV budget cannot hold).
_MAX_PARALLEL = 16

# IpexLLM's model_kwargs were passed to transformers; these are the ones that mean something here.
_MODEL_KWARG_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_new_tokens",
    "max_length": "max_length",
    "device": "device",
}
# Accepted for source compatibility and deliberately unused: xpullm never runs checkpoint code, and the
# engine always uses its KV cache. (`do_sample` is honoured: False = greedy, see `apply_do_sample`.)
_IGNORED_MODEL_KWARGS = {"trust_remote_code", "use_cache", "low_cpu_mem_usage", "torch_dtype"}


class XPULLM(StrictArguments, LLM):
    """Text completion with a low-bit model; streams real tokens and returns only the completion.

    ```python
    from xpullm.integrations.langchain import XPULLM

    llm = XPULLM()  # packaged default model, loaded on first use
    llm.invoke("The capital of France is", max_new_tokens=8)
    ```
    Migrating from IPEX-LLM: `IpexLLM.from_model_id(model_id=..., model_kwargs={...})` becomes
    `XPULLM.from_model_id(model_id=..., model_kwargs={...})` with the same arguments; as with IpexLLM, such an
    object's `model` and `tokenizer` are the loaded transformers model (with `save_low_bit`) and tokenizer.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=(), extra="forbid")

    model: LLMArg = None
    """None (packaged default), a folder / .gguf path / hub id, or an `xpullm.LLM` to share a loaded model."""
    model_id: str | None = None
    """IpexLLM-compatible alias of `model` (a path or hub id)."""
    model_kwargs: dict[str, Any] | None = None
    """IpexLLM-compatible options: temperature, top_p, top_k, repetition_penalty, max_new_tokens, max_length, device."""
    tokenizer_id: str | None = None
    """Folder or hub id of the tokenizer when it does not live next to the weights."""
    low_bit: str | None = None
    """Low-bit format used when this object loads the weights; None follows the checkpoint."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `xpu`."""
    max_new_tokens: int = Field(default=256, ge=1)
    """Upper bound on generated tokens."""
    max_length: int | None = Field(default=None, ge=2)
    """Like transformers' max_length: cap on prompt + generated tokens (None = no extra cap)."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 = greedy decoding."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1 = off)."""
    top_k: int = Field(default=0, ge=0)
    """Keep the k most likely tokens (0 = off)."""
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    """>1 discourages repeats (1 = off)."""
    seed: int | None = None
    """Sampler seed for reproducible sampled output."""
    stop: list[str] | None = None
    """Stop strings applied to every call (merged with per-call `stop`)."""
    streaming: bool = True
    """When True (IpexLLM's default), `invoke` runs through `_stream` so callbacks get tokens as they are
    generated; the result is the same text either way."""

    _engine: TextLLM = PrivateAttr(default=None)

    also_accepted: ClassVar[tuple[str, ...]] = ("callback_manager",)

    @model_validator(mode="after")
    def _resolve_engine(self) -> XPULLM:
        for key, value in (self.model_kwargs or {}).items():
            if key in _IGNORED_MODEL_KWARGS:
                continue
            if key == "do_sample":
                sampled = apply_do_sample({"temperature": self.temperature, "do_sample": value})
                object.__setattr__(self, "temperature", sampled["temperature"])
                continue
            if key not in _MODEL_KWARG_FIELDS:
                raise ValueError(
                    f"model_kwargs[{key!r}] is not supported; use any of {sorted([*_MODEL_KWARG_FIELDS, 'do_sample'])} "
                    f"(ignored for compatibility: {sorted(_IGNORED_MODEL_KWARGS)})"
                )
            object.__setattr__(self, _MODEL_KWARG_FIELDS[key], value)
        if self.model is not None and self.model_id is not None:
            raise ValueError("pass either model= or model_id=, not both")
        self._engine = shared_llm(
            self.model if self.model is not None else self.model_id,
            self.low_bit,
            self.device,
            tokenizer_spec=self.tokenizer_id,
        )
        return self

    # -- IpexLLM-compatible constructors ---------------------------------------------------------------

    @classmethod
    def from_model_id(
        cls,
        model_id: str,
        model_kwargs: dict[str, Any] | None = None,
        *,
        tokenizer_id: str | None = None,
        load_in_4bit: bool = True,
        load_in_low_bit: str | None = None,
        **kwargs: Any,
    ) -> XPULLM:
        """Load `model_id` (folder, .gguf or hub id) now, as IpexLLM does; `load_in_low_bit` wins over
        `load_in_4bit` (= sym_int4) and takes IpexLLM's names too ("fp8" = "fp8_e5m2")."""
        low_bit = ipex_low_bit(load_in_low_bit) or ("sym_int4" if load_in_4bit else None)
        llm = cls(
            model_id=model_id, model_kwargs=model_kwargs, tokenizer_id=tokenizer_id, low_bit=low_bit, **kwargs
        )
        return llm._loaded()

    @classmethod
    def from_model_id_low_bit(
        cls,
        model_id: str,
        model_kwargs: dict[str, Any] | None = None,
        *,
        tokenizer_id: str | None = None,
        **kwargs: Any,
    ) -> XPULLM:
        """Load a folder written by `save_low_bit` (its format is read from the folder) now, as IpexLLM does."""
        llm = cls(
            model_id=model_id, model_kwargs=model_kwargs, tokenizer_id=tokenizer_id, low_bit=None, **kwargs
        )
        return llm._loaded()

    def _loaded(self) -> XPULLM:
        # IpexLLM objects hold the loaded model and tokenizer in `model` / `tokenizer`; its documented save step
        # is `llm.model.save_low_bit(folder)` + `llm.tokenizer.save_pretrained(folder)`.
        object.__setattr__(self, "model", self._engine.model)
        return self

    @property
    def tokenizer(self) -> Any:
        """The model's HF tokenizer (loads the model on first access), as IpexLLM's `tokenizer` attribute."""
        return self._engine.tokenizer

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` as a prompt under the model's own tokenizer (never LangChain's GPT-2 fallback)."""
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        return list(self._engine.tokenizer(text)["input_ids"])

    # -- LangChain hooks -------------------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        """The shared `xpullm.LLM`."""
        return self._engine

    @property
    def _llm_type(self) -> str:
        return "xpullm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self._engine.model_name,
            "low_bit": self.low_bit,
            **self._params(None, {}, None),
        }

    def _params(self, stop: list[str] | None, kwargs: dict[str, Any], prompt: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        kwargs = dict(kwargs)
        max_length = kwargs.pop("max_length", self.max_length)
        params.update(kwargs)
        params = apply_do_sample(params)
        params["stop"] = [*(self.stop or []), *(stop or [])] or None
        if max_length is not None and prompt is not None:
            room = max_length - self._engine.count_tokens(prompt)
            if room < 1:
                raise ValueError(f"max_length={max_length} leaves no room to generate after this prompt")
            params["max_new_tokens"] = min(params["max_new_tokens"], room)
        return params

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return self._complete(prompt, stop, run_manager, kwargs).text

    def _complete(
        self,
        prompt: str,
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> Generation:
        if self.streaming:
            text = "".join(c.text for c in self._stream(prompt, stop, run_manager, **kwargs))
            return self._generation(prompt, text, None, None)
        c = self._engine.generate(prompt, **self._params(stop, kwargs, prompt))
        return self._generation(prompt, c.text, c.finish_reason, c.completion_tokens)

    def _generation(self, prompt: str, text: str, finish: str | None, completion: int | None) -> Generation:
        # Streaming yields text only, so its completion count re-tokenizes the text (equal for ordinary text).
        if completion is None:
            completion = (
                len(self._engine.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0
            )
        info: dict[str, Any] = {
            "prompt_tokens": self._engine.count_tokens(prompt),
            "completion_tokens": completion,
        }
        if finish is not None:
            info["finish_reason"] = finish
        return Generation(text=text, generation_info=info)

    def _result(self, generations: list[Generation]) -> LLMResult:
        prompt = sum(g.generation_info["prompt_tokens"] for g in generations)  # type: ignore[index]
        completion = sum(g.generation_info["completion_tokens"] for g in generations)  # type: ignore[index]
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return LLMResult(
            generations=[[g] for g in generations],
            llm_output={"token_usage": usage, "model_name": self._engine.model_name},
        )

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if len(prompts) == 1:
            return self._result([self._complete(prompts[0], stop, run_manager, kwargs)])
        # One request per prompt, all submitted at once: the engine runs them in shared decode steps.
        with ThreadPoolExecutor(max_workers=min(len(prompts), _MAX_PARALLEL)) as pool:
            done = pool.map(lambda p: self._complete(p, stop, run_manager, kwargs), prompts)
            return self._result(list(done))

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        texts = await asyncio.gather(*(self._acall(p, stop, run_manager, **kwargs) for p in prompts))
        return self._result(
            [self._generation(p, text, None, None) for p, text in zip(prompts, texts, strict=True)]
        )

    async def _acall(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        parts = [
            c.text
            async for c in self._astream(prompt, stop, run_manager if self.streaming else None, **kwargs)
        ]
        return "".join(parts)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for delta in self._engine.stream(prompt, **self._params(stop, kwargs, prompt)):
            chunk = GenerationChunk(text=delta)
            if run_manager:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        params = self._params(stop, kwargs, prompt)
        from xpullm.engine import GenerationParams

        GenerationParams.from_kwargs(**params)  # bad values raise here, not in the worker thread
        async for delta in iterate_in_thread(
            lambda cancel: self._engine.stream(prompt, **params, cancel=cancel)
        ):
            chunk = GenerationChunk(text=delta)
            if run_manager:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
