"""Server metrics in the Prometheus text exposition format (no client library needed)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from xpullm.server.engine import EngineStats

__all__ = ["TTFT_BUCKETS", "Metrics"]

# Seconds; spans a fast GPU (tens of ms) to a loaded CPU server with a queue (tens of s).
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Metrics:
    """Counters the engine and routes update; `render` adds the engine's live queue/KV snapshot."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    completed: int = 0
    cancelled: int = 0
    rejected: int = 0
    failed: int = 0
    last_decode_tok_s: float = 0.0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    ttft_counts: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))
    ttft_sum: float = 0.0
    ttft_n: int = 0
    started: float = field(default_factory=time.time)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, outcome: str) -> None:
        """Add one sequence to an outcome counter: `cancelled`, `rejected` or `failed` (from any thread)."""
        if outcome not in ("cancelled", "rejected", "failed"):
            raise ValueError(f"outcome={outcome!r} is invalid: expected cancelled, rejected or failed")
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + 1)

    def observe_ttft(self, seconds: float) -> None:
        """Record one time to first token (from submission, so queueing time counts, as clients see it)."""
        with self._lock:
            self.ttft_sum += seconds
            self.ttft_n += 1
            for i, bound in enumerate(TTFT_BUCKETS):
                if seconds <= bound:
                    self.ttft_counts[i] += 1

    def observe_completion(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        decode_tok_s: float,
        draft_tokens: int = 0,
        accepted_draft_tokens: int = 0,
    ) -> None:
        """Record one finished sequence (with its speculative draft tokens verified and accepted)."""
        with self._lock:
            self.draft_tokens += draft_tokens
            self.accepted_draft_tokens += accepted_draft_tokens
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += completion_tokens
            self.completed += 1
            if decode_tok_s > 0:
                self.last_decode_tok_s = decode_tok_s

    def render(self, stats: EngineStats | None) -> str:
        """The /metrics body."""
        with self._lock:
            lines = [
                *_metric(
                    "xpullm_queue_length", "gauge", "Requests waiting for a slot.", stats and stats.queued
                ),
                *_metric(
                    "xpullm_running_requests", "gauge", "Requests generating now.", stats and stats.running
                ),
                *_metric(
                    "xpullm_kv_cache_usage_ratio",
                    "gauge",
                    "Share of the KV cache reserved by running requests.",
                    (stats.kv_tokens / stats.kv_capacity) if stats and stats.kv_capacity else 0.0,
                ),
                *_metric(
                    "xpullm_decode_tokens_per_second",
                    "gauge",
                    "Decode speed of the last finished request (tokens/s after the first token).",
                    self.last_decode_tok_s,
                ),
                *_metric(
                    "xpullm_prompt_tokens_total", "counter", "Prompt tokens processed.", self.prompt_tokens
                ),
                *_metric(
                    "xpullm_generation_tokens_total",
                    "counter",
                    "Tokens generated (rate() of it is the aggregate tokens/s).",
                    self.generation_tokens,
                ),
                *_metric(
                    "xpullm_spec_draft_tokens_total",
                    "counter",
                    "Speculative draft tokens verified.",
                    self.draft_tokens,
                ),
                *_metric(
                    "xpullm_spec_accepted_tokens_total",
                    "counter",
                    "Draft tokens accepted (tokens gained over one per step; / drafted = acceptance rate).",
                    self.accepted_draft_tokens,
                ),
                "# HELP xpullm_requests_total Sequences by outcome.",
                "# TYPE xpullm_requests_total counter",
                f'xpullm_requests_total{{outcome="completed"}} {self.completed}',
                f'xpullm_requests_total{{outcome="cancelled"}} {self.cancelled}',
                f'xpullm_requests_total{{outcome="rejected"}} {self.rejected}',
                f'xpullm_requests_total{{outcome="failed"}} {self.failed}',
                "# HELP xpullm_time_to_first_token_seconds Time from submission to the first generated token.",
                "# TYPE xpullm_time_to_first_token_seconds histogram",
            ]
            for bound, count in zip(TTFT_BUCKETS, self.ttft_counts, strict=True):
                lines.append(f'xpullm_time_to_first_token_seconds_bucket{{le="{bound}"}} {count}')
            lines += [
                f'xpullm_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_n}',
                f"xpullm_time_to_first_token_seconds_sum {self.ttft_sum}",
                f"xpullm_time_to_first_token_seconds_count {self.ttft_n}",
            ]
        return "\n".join(lines) + "\n"


def _metric(name: str, kind: str, help_text: str, value: float | None) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value or 0}"]
