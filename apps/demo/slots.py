"""`GenerationSlots`: how many answers run at once, and each waiting request's place in line.

Gradio's own queue holds a waiting event before its handler runs, where the page cannot say where it stands.
The chat, knowledge-base and GraphRAG handlers start at once instead and wait here, first come first served,
showing their position while they wait. With the batching engine the running answers share decode steps; with a
serialized engine they take turns on its lock, and the slots still bound how many are in flight.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

__all__ = ["GenerationSlots", "Turn", "waiting_line"]


def waiting_line(position: int, running: int) -> str:
    """What the page says while a request waits for a slot."""
    ahead = "you are next" if position == 1 else f"{position - 1} ahead of you"
    return f"waiting in line: position {position} ({ahead}; {running} answering now)"


class Turn:
    """One request's place: in line until `wait` returns True, then holding a slot until `release`."""

    def __init__(self, slots: GenerationSlots, ticket: int) -> None:
        self._slots = slots
        self._ticket = ticket
        self.running = False
        self._done = False

    def position(self) -> int:
        """1 for the next request to start, 2 for the one after it, ...; 0 once this one runs."""
        with self._slots._cond:
            if self.running or self._done:
                return 0
            return self._slots._line.index(self._ticket) + 1

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a slot; True once this request holds one."""
        s = self._slots
        with s._cond:
            if self._done:
                return False
            if not self.running:
                s._cond.wait_for(lambda: s._line[0] == self._ticket and s._running < s.size, timeout)
                if s._line[0] == self._ticket and s._running < s.size:
                    s._line.pop(0)
                    s._running += 1
                    self.running = True
                    s._cond.notify_all()  # the next in line may start too, if slots are left
            return self.running

    def waiting(self, cancel: threading.Event | None = None, poll_s: float = 0.25) -> Iterator[str]:
        """Yield a `waiting_line` every `poll_s` seconds until this request holds a slot; a set `cancel` gives up
        the place (raises `InterruptedError`)."""
        while not self.wait(poll_s):
            if cancel is not None and cancel.is_set():
                self.release()
                raise InterruptedError("stopped while waiting in line")
            yield waiting_line(self.position(), self._slots.running)

    def release(self) -> None:
        """Free the slot, or leave the line (idempotent)."""
        s = self._slots
        with s._cond:
            if self._done:
                return
            self._done = True
            if self.running:
                s._running -= 1
                self.running = False
            else:
                s._line.remove(self._ticket)
            s._cond.notify_all()

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class GenerationSlots:
    """A first-come-first-served line in front of `size` slots."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size={size} must be at least 1 (how many answers may run at once)")
        self.size = size
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._line: list[int] = []  # tickets waiting, in arrival order
        self._running = 0

    @property
    def running(self) -> int:
        """Requests holding a slot now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Requests in line for a slot."""
        return len(self._line)

    def enter(self) -> Turn:
        """Join the line (use as a context manager so the slot or the place is always given back)."""
        with self._cond:
            ticket = next(self._tickets)
            self._line.append(ticket)
            return Turn(self, ticket)
