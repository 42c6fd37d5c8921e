"""`LLM`: the framework-free text generation engine (generate / stream / chat, sync and async).

One generation loop serves every entry point: it prefills the (left-padded) prompt batch in one pass, then samples
one token per row per step, feeding each row's tokens through a `TextAssembler` that owns detokenization and stop
strings. `generate` returns the assembled text; `stream` yields the assembler's deltas, so both agree exactly.
Calls on the same model are serialized by a per-model lock: the KV cache is shared state.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import torch
from torch import nn

from xpullm.devices import default_dtype
from xpullm.engine.aio import iterate_in_thread
from xpullm.engine.chat import render_chat
from xpullm.engine.constrained import GrammarConstraint
from xpullm.engine.decode import Decoder, build_decoder
from xpullm.engine.params import Completion, ContextOverflow, GenerationParams, InvalidParameter
from xpullm.engine.sampling import Sampler
from xpullm.engine.stopping import TextAssembler

__all__ = ["LLM"]


class _ModelLock:
    """Serializes generations on one model; a nested call from the thread that holds it fails loudly.

    (An RLock would let the nested call reuse and corrupt the KV cache; a plain Lock would deadlock.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> _ModelLock:
        if self._owner == threading.get_ident():
            raise RuntimeError(
                "a generation on this model is already running in this thread (an unfinished stream?); "
                "exhaust or close() that stream before starting another call"
            )
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._owner = None
        self._lock.release()


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, _ModelLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> _ModelLock:
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = _ModelLock()
        return lock


@dataclass
class _Row:
    """Per-prompt state inside one batched generation."""

    assembler: TextAssembler
    prompt_tokens: int
    finish: str | None = None
    first_t: float | None = None
    last_t: float | None = None


class LLM:
    """A causal language model ready for generation.

    Args:
        model: None for the packaged default (SmolLM2-135M-Instruct), a local folder / `.gguf` file / hub id, or an
            already loaded transformers-style causal LM (then pass `tokenizer` too). Paths load lazily on first use.
        low_bit: low-bit format used when this object loads the weights (ignored for an injected model).
        device: `auto`, `cpu`, `cuda`, `xpu` (an injected model stays where it is).
        max_context: cap on prompt + generated tokens; defaults to the model's `max_position_embeddings`.
        tokenizer: a HF tokenizer; required with an injected model unless it can be loaded from the model's path.
        chat_template: Jinja template used by `chat` instead of the tokenizer's own.
        dtype: activation dtype; default bf16, or fp32 on CPUs without native bf16 (AVX512-BF16/AMX).
        adapter: a LoRA adapter folder (PEFT format, e.g. from `xpullm finetune`) applied unmerged over the
            low-bit weights; needs the `finetune` extra. Merge it for speed with `xpullm convert --merge-adapter`.
    """

    def __init__(
        self,
        model: str | Path | nn.Module | None = None,
        low_bit: str | None = "sym_int4",
        device: str = "auto",
        max_context: int | None = None,
        *,
        tokenizer: Any = None,
        chat_template: str | None = None,
        dtype: torch.dtype | None = None,
        adapter: str | Path | None = None,
    ) -> None:
        if max_context is not None and (
            isinstance(max_context, bool) or not isinstance(max_context, int) or max_context < 2
        ):
            raise InvalidParameter("max_context", max_context, "an int >= 2 or None")
        if model is not None and not isinstance(model, (str, Path, nn.Module)):
            raise InvalidParameter("model", model, "None, a path / hub id string, or a loaded nn.Module")
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
        self._load_lock = threading.Lock()
        self._eos: list[int] = []

    # -- loading -------------------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        if self._decoder is not None:
            return
        with self._load_lock:
            if self._decoder is not None:
                return
            if self._model is None:
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
            self._lock = _model_lock(model)
            self._decoder = build_decoder(model, dtype, device)

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

    # -- public async API (a worker thread runs the loop; the event loop only awaits) -------------------------

    async def agenerate(self, prompt: str | list[str], **params: Any) -> Completion | list[Completion]:
        """`generate` without blocking the event loop."""
        return await asyncio.to_thread(self.generate, prompt, **params)

    async def achat(self, messages: list[dict[str, str]], **params: Any) -> Completion:
        """`chat` without blocking the event loop."""
        return await asyncio.to_thread(self.chat, messages, **params)

    async def astream(self, prompt: str, **params: Any) -> AsyncIterator[str]:
        """Async `stream`; closing the iterator early cancels the generation."""
        async for delta in self._astream(self.stream, prompt, params):
            yield delta

    async def astream_chat(self, messages: list[dict[str, str]], **params: Any) -> AsyncIterator[str]:
        """Async `stream_chat`; closing the iterator early cancels the generation."""
        async for delta in self._astream(self.stream_chat, messages, params):
            yield delta

    async def _astream(self, fn: Any, arg: Any, params: dict[str, Any]) -> AsyncIterator[str]:
        user_cancel = params.pop("cancel", None)
        cancel = threading.Event()
        params["cancel"] = _AnyEvent(cancel, user_cancel)
        # Validate and encode on the caller's side so bad input raises here, not inside the worker.
        iterator = fn(arg, **params)
        async for delta in iterate_in_thread(lambda _stop: iterator, cancel=cancel):
            yield delta

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
        if len(ids) >= self.context_length:
            raise ContextOverflow(len(ids), self.context_length, field)
        return ids

    # -- the generation loop -----------------------------------------------------------------------------------

    def _run(
        self, prompts: list[list[int]], p: GenerationParams
    ) -> Generator[tuple[int, str], None, list[Completion]]:
        """Generate for every prompt; yields (row, text delta) while running and returns the Completions."""
        self._ensure_loaded()
        t0 = time.perf_counter()
        with self._lock:
            decoder = self._decoder
            tok = self._tokenizer
            batch = len(prompts)
            longest = max(len(x) for x in prompts)
            # Context policy: generation stops with finish_reason="length" when the window is full; prompts that
            # do not fit were rejected in _check_fits (never truncated silently).
            max_len = min(self._context_length, longest + p.max_new_tokens)
            device = _model_device(self._model)
            pad_id = self._eos[0] if self._eos else 0
            pad = torch.tensor([longest - len(x) for x in prompts], dtype=torch.long)
            input_ids = torch.tensor([[pad_id] * (longest - len(x)) + x for x in prompts], device=device)
            rows = [_Row(TextAssembler(tok, p.stop), len(x)) for x in prompts]
            logits = decoder.start(input_ids, pad, max_len)
            vocab = logits.shape[-1]
            sampler = Sampler(p, batch, vocab, logits.device)
            if p.repetition_penalty != 1.0:
                sampler.observe(
                    input_ids, torch.arange(longest, device=device)[None] >= pad.to(device)[:, None]
                )
            constraint = GrammarConstraint.from_params(p, tok, batch, vocab, self._eos or [pad_id])
            eos = set(self._eos)
            length = longest
            while True:
                if constraint is not None:
                    logits = constraint.mask(logits)
                nxt = sampler(logits)
                now = time.perf_counter()
                length += 1
                ids = nxt.tolist()
                for r, (row, tid) in enumerate(zip(rows, ids, strict=True)):
                    if row.finish is not None:
                        continue
                    if row.first_t is None:
                        row.first_t = now
                    row.last_t = now
                    if tid in eos:
                        row.finish = "stop"
                        continue
                    if constraint is not None:
                        constraint.consume(r, tid)
                    row.assembler.push(tid)
                    if row.assembler.stopped or (constraint is not None and constraint.finished(r)):
                        row.finish = "stop"
                    elif len(row.assembler.ids) >= p.max_new_tokens or length >= max_len:
                        row.finish = "length"
                    if row.finish is not None:
                        row.assembler.finish()
                    delta = row.assembler.take_delta(final=row.finish is not None)
                    if delta:
                        yield r, delta
                if all(row.finish is not None for row in rows):
                    break
                if p.cancel is not None and p.cancel.is_set():
                    for r, row in enumerate(rows):
                        if row.finish is None:
                            row.finish = "cancelled"
                            row.assembler.finish()
                            delta = row.assembler.take_delta(final=True)
                            if delta:
                                yield r, delta
                    break
                sampler.observe(nxt)
                logits = decoder.step(nxt)
        return [_completion(row, t0) for row in rows]


class _AnyEvent:
    """Set when either of two events is set (the async wrapper's own cancel plus the caller's)."""

    def __init__(self, a: threading.Event, b: Any) -> None:
        self._a, self._b = a, b

    def is_set(self) -> bool:
        return self._a.is_set() or (self._b is not None and self._b.is_set())


def _completion(row: _Row, t0: float) -> Completion:
    n = len(row.assembler.ids)
    first = (row.first_t - t0) if row.first_t is not None else 0.0
    span = (row.last_t - row.first_t) if row.first_t is not None and row.last_t is not None else 0.0
    rate = (n - 1) / span if n > 1 and span > 0 else 0.0
    return Completion(
        text=row.assembler.text,
        finish_reason=row.finish or "length",
        prompt_tokens=row.prompt_tokens,
        completion_tokens=n,
        first_token_s=first,
        decode_tok_s=rate,
    )


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
