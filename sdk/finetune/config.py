"""`FinetuneConfig`: every knob of a LoRA fine-tuning run, grouped by stage, with defaults that fit a laptop CPU."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DEFAULT_TARGETS", "FinetuneConfig"]

# Every projection of a llama-style decoder: LoRA on all of them is the QLoRA paper's recipe.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """What to train, how, and where to write it."""

    # -- base model
    # The frozen base's format. None: a low-bit folder's own formats (lossless), anything else sym_int4;
    # nf4 is the QLoRA paper's choice (reference kernel on CPU: slower).
    low_bit: str | None = None
    device: str = "cpu"
    # -- adapter
    r: int = 16  # LoRA rank: 8-64 is typical; memory and time grow linearly with it
    alpha: int = 32  # scaling = alpha / r (alpha = 2r keeps the update size stable across ranks)
    dropout: float = 0.05
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS)
    # -- data
    seq_len: int = 256  # tokens per training row (text is packed into rows of this length)
    # -- optimisation
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: run every epoch)
    batch_size: int = 4
    lr: float = 2e-4  # AdamW; the QLoRA paper's value for small models
    warmup_steps: int = 10  # linear warmup from 0, then constant: short runs need no decay schedule
    weight_decay: float = 0.0
    gradient_checkpointing: bool = True  # recompute activations in backward: less memory, ~30% more time
    seed: int = 0  # shuffling and dropout; a resumed run replays the same batches and masks
    # glibc only: blocks of this many bytes (256 KB) and more get their own mapping, freed back to the system, instead of
    # glibc's adaptive heap that keeps freed activations (peak RSS ~2x the live tensors, finetune.md). Process-
    # wide, costs page faults (~10-30% step time). None: leave the allocator alone.
    malloc_mmap_threshold: int | None = 1 << 18
    # -- output
    save_every: int = 50  # optimizer steps between checkpoints (a killed run resumes from the last one)

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "seq_len", "epochs", "batch_size", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FinetuneConfig.{name}={value!r}: expected a positive int")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"FinetuneConfig.max_steps={self.max_steps!r}: expected None or a positive int")
        threshold = self.malloc_mmap_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0
        ):
            raise ValueError(
                f"FinetuneConfig.malloc_mmap_threshold={threshold!r}: expected None or a byte count >= 0"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"FinetuneConfig.dropout={self.dropout!r}: expected 0 <= dropout < 1")
        if self.lr <= 0:
            raise ValueError(f"FinetuneConfig.lr={self.lr!r}: expected a positive learning rate")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (written next to checkpoints)."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        return out
