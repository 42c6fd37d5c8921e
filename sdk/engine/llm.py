"""`LLM`: the framework-free text generation engine (generate / stream / chat, sync and async).

Every call becomes requests on the model's continuous-batching `EngineCore` (`core.py`): concurrent callers,
the prompts of one `generate([...])` and async tasks all share the engine's forward steps, each request with its
own sampling, stop strings, grammar, limits and cancellation; a request's greedy output does not depend on what
else runs. Text comes from one `TextAssembler` per request, so `generate` and `stream` agree exactly.
Models the engine does not run (transformers-only families, GPUs without a paged attention kernel) generate
through the serialized loop in `serial.py`, one call at a time per model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from xpullm.devices import default_dtype
from xpullm.engine.aio import iterate_in_thread
from xpullm.engine.chat import render_chat
from xpullm.engine.core import ENGINE_ON_ACCELERATOR, EngineConfig, EngineCore, build_core
from xpullm.engine.decode import Decoder, StaticCacheDecoder, build_decoder, windowed
from xpullm.engine.params import Completion, ContextOverflow, GenerationParams, InvalidParameter
from xpullm.engine.serial import model_lock, run_serial
from xpullm.engine.speculative import SpeculativeConfig, resolve_speculative
from xpullm.engine.step_kernels import OpContext, select_op

__all__ = ["LLM"]


class LLM:
    """A causal language model ready for generation.

    Args:
        model: None for the packaged default (SmolLM2-135M-Instruct), a local folder / `.gguf` file / hub id, or an
            already loaded transformers-style causal LM (then pass `tokenizer` too). Paths load lazily on first use.
        low_bit: low-bit format used when this object loads the weights; None follows the checkpoint (a GGUF
            Q4_0 / Q4_1 / Q8_0 loads losslessly as sym_int4 / asym_int4 / sym_int8, a float checkpoint as sym_int4).
        device: `auto`, `cpu`, `cuda`, `xpu` (an injected model stays where it is).
        max_context: cap on prompt + generated tokens; defaults to the model's `max_position_embeddings`.
        tokenizer: a HF tokenizer; required with an injected model unless it can be loaded from the model's path.
        chat_template: Jinja template used by `chat` instead of the tokenizer's own.
        dtype: activation dtype; default bf16, or fp32 on CPUs without native bf16 (AVX512-BF16/AMX).
        adapter: a LoRA adapter folder (PEFT format, e.g. from `xpullm finetune`) applied unmerged over the
            low-bit weights; needs the `finetune` extra. Merge it for speed with `xpullm convert --merge-adapter`.
        engine: knobs of the continuous-batching engine (KV budget, block size, tokens per step, prefix cache).
        speculative: speculative decoding in the engine: `prompt_lookup`, `self_speculative`, a
            `SpeculativeConfig`, or None / `off` for one token per step; default: what `engine` says (prompt
            lookup). The output is the same either way; per call, `speculative=False` opts out.
        kv_cache_dtype: KV cache element, overriding `engine.kv_cache_dtype`: "auto" (activation dtype), "bf16",
            "int8" or "fp8_e4m3" (8-bit: about half the KV memory of bf16, a quarter of fp32).
        streaming: overriding `engine.streaming`: keep sink tokens + a recent window per sequence, so prompts and
            generations run past the context length with bounded KV memory (docs/engine.md).
        tensor_parallel: split the model over this many ranks (worker processes spawned here, one device each;
            on CPU, gloo ranks sharing the cores). Needs a model path (each rank loads only its shard) of a
            llama-style family; `close()` stops the workers. See docs/parallel.md.
    """

    def __init__(
        self,
        model: str | Path | nn.Module | None = None,
        low_bit: str | None = None,
        device: str = "auto",
        max_context: int | None = None,
        *,
        tokenizer: Any = None,
        chat_template: str | None = None,
        dtype: torch.dtype | None = None,
        adapter: str | Path | None = None,
        engine: EngineConfig | None = None,
        speculative: SpeculativeConfig | str | None = "default",
        kv_cache_dtype: str | None = None,
        streaming: bool | None = None,
        tensor_parallel: int = 1,
    ) -> None:
        if max_context is not None and (
            isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2
        ):
            raise InvalidParameter("max_context", max_context, "an int >= 2 or None")
        if model is not None and not isinstance(model, (str, Path, nn.Module)):
            raise InvalidParameter("model", model, "None, a path / hub id string, or a loaded nn.Module")
        if isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, int) or tensor_parallel < 1:
            raise InvalidParameter("tensor_parallel", tensor_parallel, "an int >= 1")
        if tensor_parallel > 1 and isinstance(model, nn.Module):
            raise InvalidParameter(
                "model",
                type(model).__name__,
                "a path with tensor_parallel > 1 (each rank loads its own shard)",
            )
        if tensor_parallel > 1 and adapter is not None:
            raise InvalidParameter(
                "adapter", adapter, "None with tensor_parallel > 1 (merge the adapter first)"
            )
        self._tensor_parallel = tensor_parallel
        self._tp: Any = None  # rank 0's handle on the tensor-parallel world (`engine/tensor_parallel.py`)
        self._spec = model
        self._low_bit = low_bit
        self._device_arg = device
        self._max_context_arg = max_context
        self._tokenizer = tokenizer
        self._chat_template = chat_template
        self._dtype_arg = dtype
        self._adapter = adapter  # a PEFT LoRA folder (`xpullm finetune`), run unmerged over the low-bit base
        self._model: nn.Module | None = model if isinstance(model, nn.Module) else None
        self._decoder: Decoder | None = None
        self._engine_config = engine or EngineConfig()
        if speculative != "default":
            spec = resolve_speculative(speculative)
            self._engine_config = dataclasses.replace(self._engine_config, speculative=spec)
        overrides = {"kv_cache_dtype": kv_cache_dtype, "streaming": streaming}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            self._engine_config = dataclasses.replace(self._engine_config, **overrides)
        self._core: EngineCore | None = None  # None: the serialized path (`serial.py`)
        self._load_lock = threading.Lock()
        self._eos: list[int] = []

    # -- loading -------------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._decoder is not None:
            return
        with self._load_lock:
            if self._decoder is not None:
                return
            if self._model is None and self._tensor_parallel > 1:
                self._model, path = self._start_ranks()
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(path)
            elif self._model is None:
                self._model, path = _load_model(self._spec, self._low_bit, self._device_arg)
                if self._tokenizer is None:
                    self._tokenizer = _load_tokenizer(path)
            if self._adapter is not None:
                from xpullm.finetune import attach_adapter

                attach_adapter(self._model, self._adapter)  # injects LoRA layers into the model in place
                self._adapter = None
            model = self._model
            if self._tokenizer is None:
                name = getattr(getattr(model, "config", None), "_name_or_path", "")
                if not name:
                    raise InvalidParameter(
                        "tokenizer",
                        None,
                        "a HF tokenizer: pass LLM(model=..., tokenizer=...) with a loaded model",
                    )
                self._tokenizer = _load_tokenizer(name)
            model.eval()
            device = _model_device(model)
            dtype = self._dtype_arg or default_dtype(device)
            _cast_float_params(model, dtype)
            self._eos = _eos_ids(model, self._tokenizer)
            max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
            if self._max_context_arg is not None and self._max_context_arg > max_pos:
                raise InvalidParameter(
                    "max_context",
                    self._max_context_arg,
                    f"at most the model's max_position_embeddings ({max_pos})",
                )
            self._context_length = self._max_context_arg or max_pos
            self._lock = model_lock(model)
            tp = self._tp
            windows_ok = _engine_wanted(device, self._engine_config)
            decoder = (
                tp.decoder if tp is not None else build_decoder(model, dtype, device, windows_ok=windows_ok)
            )
            # A CUDA-graph wrapper holds the static decoder.
            static = tp.static if tp is not None else getattr(decoder, "inner", decoder)
            if isinstance(static, StaticCacheDecoder) and _engine_runs(static, self._engine_config):
                self._core = build_core(
                    static, self._tokenizer, self._eos, self._context_length, self._engine_config,
                    wrap_runner=None if tp is None else tp.wrap_runner,
                )  # fmt: skip
            elif windows_ok and tp is None and device.type != "cpu" and windowed(model):
                # No engine after all (no paged kernel for this model here): only the engine attends through a
                # sliding window, so the serialized path gets the decoder that keeps windowed models on HF code.
                decoder = build_decoder(model, dtype, device)
            self._decoder = decoder

    def _start_ranks(self) -> tuple[nn.Module, str]:
        """Spawn the tensor-parallel workers and load rank 0's shard here; (rank 0's shard, model path)."""
        from xpullm.devices import resolve_device
        from xpullm.engine.tensor_parallel import TensorParallelSpec, start_tensor_parallel

        spec = self._spec
        if spec is None:
            from xpullm.models import default_llm_path

            spec = default_llm_path()
        device = resolve_device(self._device_arg)
        dtype = self._dtype_arg or default_dtype(device)
        self._tp = start_tensor_parallel(
            TensorParallelSpec(str(spec), self._low_bit, dtype), self._tensor_parallel, device
        )
        return self._tp.model, str(spec)

    @property
    def tensor_parallel(self) -> int:
        """Ranks the model is split over (1: not split)."""
        return self._tensor_parallel

    def rebuild_args(self, device: str | None = None) -> dict[str, Any]:
        """The constructor's keyword arguments that rebuild this LLM elsewhere (another process or machine):
        `LLM(**llm.rebuild_args())` loads lazily, like this one did. `device` overrides the device argument.

        Raises `InvalidParameter` when this LLM wraps an in-memory model, which only a path or hub id can rebuild.
        """
        if self._spec is not None and not isinstance(self._spec, (str, Path)):
            raise InvalidParameter(
                "model",
                type(self._spec).__name__,
                "a path or hub id every worker can load to rebuild this LLM elsewhere (LLM(model='path/or/hub-id'))",
            )
        return {
            "model": None if self._spec is None else str(self._spec),
            "low_bit": self._low_bit,
            "device": device or self._device_arg,
            "max_context": self._max_context_arg,
            "chat_template": self._chat_template,
            "dtype": self._dtype_arg,
            "adapter": None if self._adapter is None else str(self._adapter),
            "engine": self._engine_config,
            "tensor_parallel": self._tensor_parallel,
        }

    def close(self) -> None:
        """Release what this object started: the tensor-parallel workers (a no-op for a one-rank model).

        A closed tensor-parallel LLM raises `RankFailed` on its next call.
        """
        if self._tp is not None:
            self._tp.close()

    @property
    def model(self) -> nn.Module:
        """The underlying model (loads it on first access)."""
        self._ensure_loaded()
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer (loads the model on first access)."""
        self._ensure_loaded()
        return self._tokenizer

    @property
    def context_length(self) -> int:
        """Maximum prompt + generated tokens per sequence."""
        self._ensure_loaded()
        return self._context_length

    @property
    def model_name(self) -> str:
        """A human-readable model name (the folder / file / hub id, or the config's name)."""
        if isinstance(self._spec, (str, Path)):
            return Path(self._spec).name if Path(self._spec).exists() else str(self._spec)
        if self._spec is None:
            return "SmolLM2-135M-Instruct"
        cfg = getattr(self._spec, "config", None)
        return str(getattr(cfg, "_name_or_path", "") or type(self._spec).__name__)

    @property
    def engine(self) -> EngineCore | None:
        """The continuous-batching engine core (None when this model generates through the serialized loop)."""
        self._ensure_loaded()
        return self._core

    @property
    def decoder_name(self) -> str:
        """Which forward implementation runs (`StaticCacheDecoder` or the transformers fallback)."""
        self._ensure_loaded()
        return type(self._decoder).__name__

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a prompt (the same count `Completion.prompt_tokens` reports)."""
        if not isinstance(text, str):
            raise InvalidParameter("text", text, "a string")
        return len(self._encode(text))

    # -- public sync API -------------------------------------------------------------------------------------

    @overload
    def generate(self, prompt: str, **params: Any) -> Completion: ...
    @overload
    def generate(self, prompt: list[str], **params: Any) -> list[Completion]: ...

    def generate(self, prompt: str | list[str], **params: Any) -> Completion | list[Completion]:
        """Complete one prompt (-> Completion) or a list of prompts as one padded batch (-> list[Completion])."""
        p = GenerationParams.from_kwargs(**params)
        if isinstance(prompt, list):
            if not prompt:
                raise InvalidParameter("prompt", prompt, "a non-empty string or a non-empty list of strings")
            ids = [self._encode_prompt(x, f"prompt[{i}]") for i, x in enumerate(prompt)]
            return _drain(self._run(ids, p))
        return _drain(self._run([self._encode_prompt(prompt, "prompt")], p))[0]

    def stream(self, prompt: str, **params: Any) -> Iterator[str]:
        """Yield text deltas as they are generated; joined, they equal `generate(prompt, ...).text`."""
        p = GenerationParams.from_kwargs(**params)
        ids = [self._encode_prompt(prompt, "prompt")]
        return _deltas(self._run(ids, p))

    def chat(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        """Answer a conversation rendered with the chat template (a list of {"role", "content"} dicts)."""
        p = GenerationParams.from_kwargs(**params)
        return _drain(self._run([self._encode_chat(messages)], p))[0]

    def stream_chat(self, messages: list[dict[str, str]], **params: Any) -> Iterator[str]:
        """Streamed `chat`: yields text deltas."""
        p = GenerationParams.from_kwargs(**params)
        return _deltas(self._run([self._encode_chat(messages)], p))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt text `chat` feeds the model (template applied, generation prompt appended)."""
        return render_chat(self.tokenizer, messages, self._chat_template)

    # -- public async API (requests on the engine; the event loop only awaits) ------------------------------

    async def agenerate(self, prompt: str | list[str], **params: Any) -> Completion | list[Completion]:
        """`generate` without blocking the event loop."""
        p = GenerationParams.from_kwargs(**params)
        if isinstance(prompt, list):
            if not prompt:
                raise InvalidParameter("prompt", prompt, "a non-empty string or a non-empty list of strings")
            ids = [self._encode_prompt(x, f"prompt[{i}]") for i, x in enumerate(prompt)]
            return await self._acollect(ids, p)
        return (await self._acollect([self._encode_prompt(prompt, "prompt")], p))[0]

    async def achat(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        """`chat` without blocking the event loop."""
        p = GenerationParams.from_kwargs(**params)
        return (await self._acollect([self._encode_chat(messages)], p))[0]

    async def astream(self, prompt: str, **params: Any) -> AsyncIterator[str]:
        """Async `stream`; closing the iterator early cancels the generation."""
        p = GenerationParams.from_kwargs(**params)
        async for kind, _, value in self._aevents([self._encode_prompt(prompt, "prompt")], p):
            if kind == "delta":
                yield value

    async def astream_chat(self, messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        """Async `stream_chat`; closing the iterator early cancels the generation."""
        p = GenerationParams.from_kwargs(**params)
        async for kind, _, value in self._aevents([self._encode_chat(messages)], p):
            if kind == "delta":
                yield value

    async def _acollect(self, prompts: list[list[int]], p: GenerationParams) -> list[Completion]:
        done: list[Any] = [None] * len(prompts)
        async for kind, row, value in self._aevents(prompts, p):
            if kind == "done":
                done[row] = value
        return done

    async def _aevents(
        self, prompts: list[list[int]], p: GenerationParams
    ) -> AsyncIterator[tuple[str, int, Any]]:
        """(kind, row, value) events: `delta` text while running, then one `done` Completion per prompt."""
        self._ensure_loaded()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        if self._core is None:  # serialized path: the blocking loop in a worker thread
            stop = threading.Event()  # set when the consumer leaves early: the loop stops after its token
            gen = self._run(prompts, dataclasses.replace(p, cancel=_AnyEvent(stop, p.cancel)))
            holder: list[Any] = []

            def work(_stop: threading.Event) -> Iterator[tuple[int, str]]:
                holder.append((yield from gen))

            async for row, delta in iterate_in_thread(work, cancel=stop):
                yield "delta", row, delta
            for row, completion in enumerate(holder[0] if holder else []):
                yield "done", row, completion
            return

        def push(kind: str, value: Any, row: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, row, value))

        requests = []
        try:
            requests = self._core.submit_all(
                (ids, p, lambda k, v, i=i: push(k, v, i)) for i, ids in enumerate(prompts)
            )
            left = len(prompts)
            while left:
                kind, row, value = await events.get()
                if kind == "error":
                    raise value
                left -= kind == "done"
                yield kind, row, value
        finally:
            for r in requests:  # the caller left early or one request failed: stop the others
                r.cancel()

    # -- encoding ----------------------------------------------------------------------------------------------

    def _encode(self, text: str, special: bool = True) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def _encode_prompt(self, prompt: object, field: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidParameter(field, prompt, "a string")
        if not prompt:
            raise InvalidParameter(field, prompt, "a non-empty string")
        return self._check_fits(self._encode(prompt), field)

    def _encode_chat(self, messages: object) -> list[int]:
        text = render_chat(self.tokenizer, messages, self._chat_template)
        # The template already contains the special tokens; adding them again would double the BOS.
        return self._check_fits(self._encode(text, special=False), "messages")

    def _check_fits(self, ids: list[int], field: str) -> list[int]:
        if not ids:
            raise InvalidParameter(field, "", "text that encodes to at least one token")
        if len(ids) >= self.context_length and not (
            self.engine is not None and self._engine_config.streaming
        ):
            raise ContextOverflow(len(ids), self.context_length, field)
        return ids

    # -- the generation loop -----------------------------------------------------------------------------------

    def _run(
        self, prompts: list[list[int]], p: GenerationParams
    ) -> Generator[tuple[int, str], None, list[Completion]]:
        """Generate for every prompt; yields (row, text delta) while running and returns the Completions."""
        self._ensure_loaded()
        if self._core is None:
            if p.logprobs is not None:
                raise InvalidParameter(
                    "logprobs",
                    p.logprobs,
                    "None: this model generates through the serialized loop, which does "
                    "not report log-probabilities (the continuous-batching engine does)",
                )
            device = _model_device(self._model)
            tok, eos, ctx = self._tokenizer, self._eos, self._context_length
            return (yield from run_serial(self._decoder, self._lock, tok, eos, ctx, device, prompts, p))
        events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        requests = []
        try:
            # Every prompt arrives at once, before any result is read: they all share the engine's steps.
            requests = self._core.submit_all(
                (ids, p, lambda k, v, i=i: events.put((k, i, v))) for i, ids in enumerate(prompts)
            )
            done: list[Any] = [None] * len(prompts)
            left = len(prompts)
            while left:
                kind, row, value = events.get()
                if kind == "delta":
                    yield row, value
                elif kind == "done":
                    done[row] = value
                    left -= 1
                elif kind == "error":
                    raise value
            return done
        finally:
            for r in requests:  # the caller closed the stream early or a request failed: stop the others
                r.cancel()


class _AnyEvent:
    """Set when either of two events is set (the async wrapper's own cancel plus the caller's)."""

    def __init__(self, a: threading.Event, b: Any) -> None:
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or (self._b is not None and self._b.is_set())


def _engine_wanted(device: torch.device, config: EngineConfig) -> bool:
    """The engine serves CPU models; on accelerators as `EngineConfig.on_accelerators` says, else as the device's
    `ENGINE_ON_ACCELERATOR` default."""
    if device.type == "cpu":
        return True
    wanted = config.on_accelerators
    return ENGINE_ON_ACCELERATOR.get(device.type, False) if wanted is None else wanted


def _engine_runs(static: StaticCacheDecoder, config: EngineConfig) -> bool:
    """The engine serves CPU models; on accelerators when asked (`EngineConfig.on_accelerators`, else the device's
    `ENGINE_ON_ACCELERATOR` default) and a paged attention kernel (not the reference) is registered."""
    if not _engine_wanted(static.device, config):
        return False
    if static.device.type == "cpu":
        return True
    ctx = OpContext(static.device.type, static.dtype, static.head_dim, static.family.qk_norm)
    return select_op("paged_attention", ctx).name != "reference"


def _drain(gen: Generator[tuple[int, str], None, list[Completion]]) -> list[Completion]:
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _deltas(gen: Generator[tuple[int, str], None, list[Completion]]) -> Iterator[str]:
    for _, delta in gen:
        yield delta


# -- loading helpers ---------------------------------------------------------------------------------------------


def _load_model(spec: str | Path | None, low_bit: str | None, device: str) -> tuple[nn.Module, str]:
    from xpullm.loading import AutoModelForCausalLM

    if spec is None:
        from xpullm.models import default_llm_path

        spec = default_llm_path()
    model = AutoModelForCausalLM.from_pretrained(str(spec), load_in_low_bit=low_bit, device=device)
    return model, str(spec)


def _load_tokenizer(path: str) -> Any:
    from xpullm.loading import load_tokenizer

    return load_tokenizer(path)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _cast_float_params(model: nn.Module, dtype: torch.dtype) -> None:
    """Bring plain floating parameters (embeddings, norms, unquantized linears) to the activation dtype.

    Low-bit modules keep their packed buffers; only `nn.Parameter`s are touched, once each (tied weights stay tied).
    """
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _eos_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if v not in ids:
                ids.append(int(v))
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return ids
