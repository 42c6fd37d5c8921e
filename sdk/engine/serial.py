"""The serialized generation loop: one (left-padded) batch at a time over a `Decoder`, behind a per-model lock.

Models the continuous-batching engine does not run - those that decode only through `HFDecoder` (transformers'
own forward), and GPUs until a fast paged attention kernel is registered there (the static decoder's CUDA-graph
steps stay faster than an eager engine step) - generate here: the prompt batch is prefilled in one pass, then
every row samples one token per step through its own `TextAssembler`. The KV cache is the decoder's shared state,
so calls on one model are serialized by a lock.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Generator
from typing import Any

import torch
from torch import nn

from xpullm.engine.constrained import GrammarConstraint
from xpullm.engine.decode import Decoder
from xpullm.engine.params import Completion, GenerationParams
from xpullm.engine.sampling import Sampler
from xpullm.engine.stopping import TextAssembler

__all__ = ["ModelLock", "model_lock", "run_serial"]


class ModelLock:
    """Serializes generations on one model; a nested call from the thread that holds it fails loudly.

    (An RLock would let the nested call reuse and corrupt the KV cache; a plain Lock would deadlock.)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self) -> ModelLock:
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


_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, ModelLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> ModelLock:
    """The one lock of `model` (shared by every `LLM` over it)."""
    with _LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = ModelLock()
        return lock


class _Row:
    def __init__(self, assembler: TextAssembler, prompt_tokens: int) -> None:
        self.assembler = assembler
        self.prompt_tokens = prompt_tokens
        self.finish: str | None = None
        self.first_t: float | None = None
        self.last_t: float | None = None

    def completion(self, t0: float) -> Completion:
        n = len(self.assembler.ids)
        first = (self.first_t - t0) if self.first_t is not None else 0.0
        span = (self.last_t - self.first_t) if self.first_t is not None and self.last_t is not None else 0.0
        return Completion(
            text=self.assembler.text,
            finish_reason=self.finish or "length",  # type: ignore[arg-type]
            prompt_tokens=self.prompt_tokens,
            completion_tokens=n,
            first_token_s=first,
            decode_tok_s=(n - 1) / span if n > 1 and span > 0 else 0.0,
        )


def run_serial(
    decoder: Decoder, lock: ModelLock, tok: Any, eos: list[int], context_length: int, device: torch.device,
    prompts: list[list[int]], p: GenerationParams,
) -> Generator[tuple[int, str], None, list[Completion]]:  # fmt: skip
    """Generate for every prompt; yields (row, text delta) while running and returns the Completions."""
    t0 = time.perf_counter()
    with lock:
        batch = len(prompts)
        longest = max(len(x) for x in prompts)
        # Context policy: generation stops with finish_reason="length" when the window is full.
        max_len = min(context_length, longest + p.max_new_tokens)
        pad_id = eos[0] if eos else 0
        pad = torch.tensor([longest - len(x) for x in prompts], dtype=torch.long)
        input_ids = torch.tensor([[pad_id] * (longest - len(x)) + x for x in prompts], device=device)
        rows = [_Row(TextAssembler(tok, p.stop), len(x)) for x in prompts]
        logits = decoder.start(input_ids, pad, max_len)
        vocab = logits.shape[-1]
        sampler = Sampler(p, batch, vocab, logits.device)
        if p.repetition_penalty != 1.0:
            sampler.observe(input_ids, torch.arange(longest, device=device)[None] >= pad.to(device)[:, None])
        constraint = GrammarConstraint.from_params(p, tok, batch, vocab, eos or [pad_id])
        eos_set = set(eos)
        length = longest
        while True:
            if constraint is not None:
                logits = constraint.mask(logits)
            if eos and p.bans_eos(length - longest):
                logits = logits.clone()
                logits[:, eos] = float("-inf")
            nxt = sampler(logits)
            now = time.perf_counter()
            length += 1
            for r, (row, tid) in enumerate(zip(rows, nxt.tolist(), strict=True)):
                if row.finish is not None:
                    continue
                if row.first_t is None:
                    row.first_t = now
                row.last_t = now
                if tid in eos_set:
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
    return [row.completion(t0) for row in rows]
