"""Run one streamed generation in its own thread and read its progress: text so far plus live timings.

The engine's stream holds the model lock while it is iterated. A Gradio handler may be resumed on a different
worker thread at every step, or abandoned when a browser tab closes; a dedicated thread that always runs the stream
to its end (a set cancel event ends it within one token) keeps the lock's owner stable and its release certain.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Progress", "stream_in_thread"]


@dataclass(frozen=True)
class Progress:
    """The state of a streamed answer after one more delta (or at its end)."""

    text: str
    first_token_s: float | None  # seconds from the request to the first text, None before it
    tok_s: float  # decode speed after the first token (tokens / s); live estimate until `done`
    tokens: int  # generated tokens (deltas while streaming, tokenizer count once done)
    done: bool = False
    cancelled: bool = False

    def stats_line(self) -> str:
        """What the UI shows under an answer."""
        if self.first_token_s is None:
            return "no text was generated" if self.done else "waiting for the first token…"
        state = " · stopped" if self.cancelled else ("" if self.done else " · generating…")
        return (
            f"first token {self.first_token_s:.2f} s · {self.tok_s:.1f} tok/s · {self.tokens} tokens{state}"
        )


def stream_in_thread(
    start: Callable[[threading.Event], Iterator[str]],
    count_tokens: Callable[[str], int],
    cancel: threading.Event | None = None,
) -> Iterator[Progress]:
    """Yield a `Progress` per text delta of `start(cancel)`, run in a worker thread; errors are re-raised here.

    Closing this iterator early (a stop button, a closed tab) sets `cancel`, and the worker finishes within a token.
    """
    cancel = cancel or threading.Event()
    out: queue.Queue[tuple[str, object]] = queue.Queue()
    t0 = time.perf_counter()

    def work() -> None:
        try:
            for delta in start(cancel):
                out.put(("delta", delta))
            out.put(("end", None))
        except BaseException as exc:  # handed to the reading side, which raises it
            out.put(("error", exc))

    worker = threading.Thread(target=work, name="xpullm-demo-generate", daemon=True)
    worker.start()
    parts: list[str] = []
    first: float | None = None
    deltas = 0
    try:
        while True:
            kind, value = out.get()
            now = time.perf_counter()
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            if kind == "end":
                break
            assert isinstance(value, str)
            parts.append(value)
            deltas += 1
            if first is None:
                first = now
            rate = (deltas - 1) / (now - first) if deltas > 1 and now > first else 0.0
            yield Progress("".join(parts), first - t0, rate, deltas)
        text = "".join(parts)
        end = time.perf_counter()
        tokens = count_tokens(text) if text else 0
        rate = (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else 0.0
        yield Progress(
            text, None if first is None else first - t0, rate, tokens, done=True, cancelled=cancel.is_set()
        )
    finally:
        cancel.set()
        worker.join()
