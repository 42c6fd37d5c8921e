"""Which low-bit format a load uses when the caller names none: the checkpoint's own, when xpullm has it exactly.

GGUF Q4_0 / Q4_1 / Q8_0 blocks are `sym_int4` / `asym_int4` / `sym_int8` with group 32, and a low-bit folder
stores xpullm formats: re-quantizing either into another format rounds every weight a second time (the packaged
Q4_1 model loses 18.3 vs 15.0 perplexity as `sym_int4`). So "no format named" keeps what is stored, and only
float checkpoints (and GGUF block types without an exact twin) get the project default, `sym_int4`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass

from xpullm.loading.resolve import ModelSource
from xpullm.loading.sources import LOWBIT_MANIFEST

__all__ = ["DEFAULT_FLOAT_FORMAT", "FOLLOW_CHECKPOINT", "FormatChoice", "announce", "choose_format"]

DEFAULT_FLOAT_FORMAT = "sym_int4"  # float weights: the smallest format with a fast kernel on every device
FOLLOW_CHECKPOINT = "auto"  # `low_bit="auto"` (or None): take the checkpoint's own format

log = logging.getLogger("xpullm.loading")


@dataclass(frozen=True)
class FormatChoice:
    """The format a load uses and why (shown in the load message and `xpullm info`)."""

    low_bit: str
    reason: str
    stored_formats: bool = False  # keep every stored low-bit layer exactly as it is (lossless)

    def describe(self, label: str) -> str:
        """One line for humans: `model -> format (reason)`."""
        return f"{label}: {self.low_bit} ({self.reason})"


def choose_format(src: ModelSource, requested: str | None = None, *, load_in_4bit: bool = False,
                  load_in_8bit: bool = False, group_size: int | None = None) -> FormatChoice:  # fmt: skip
    """The format to load `src` in: `requested` if named, else the checkpoint's own (see the module doc)."""
    if requested and requested != FOLLOW_CHECKPOINT:
        return FormatChoice(requested, "named by the caller")
    if load_in_8bit or load_in_4bit:
        name = "sym_int8" if load_in_8bit else "sym_int4"
        return FormatChoice(name, f"load_in_{8 if load_in_8bit else 4}bit=True")
    chooser = _CHOOSERS.get(src.kind, _float_checkpoint)
    choice = chooser(src)
    if group_size is not None and choice.stored_formats:
        # A different group size means new groups: re-quantize into the same format, not keep the stored one.
        return FormatChoice(choice.low_bit, f"{choice.reason}; regrouped to group_size={group_size}")
    return choice


def announce(choice: FormatChoice, label: str, progress: bool) -> None:
    """The load message: logged always, and printed on stderr when the load shows progress."""
    line = f"xpullm: loading {choice.describe(label)}"
    log.info(line)
    if progress:
        print(line, file=sys.stderr)


def _dominant(counts: Counter[str]) -> str:
    return counts.most_common(1)[0][0]


def _gguf(src: ModelSource) -> FormatChoice:
    from xpullm.loading.gguf_source import EXACT_FORMATS, GGUFSource

    weights: Counter[str] = Counter()
    for t in GGUFSource(src.folder / str(src.gguf_file)).reader.tensors:
        if len(t.shape) == 2 and t.name.startswith("blk."):  # the transformer layers' linears decide
            weights[t.tensor_type.name] += int(t.n_elements)
    if not weights:
        return _float_checkpoint(src)
    stored = _dominant(weights)
    exact = EXACT_FORMATS.get(stored)
    if exact is None:
        return FormatChoice(
            DEFAULT_FLOAT_FORMAT,
            f"GGUF {stored} has no exact xpullm format, so its weights are re-quantized to the default "
            f"{DEFAULT_FLOAT_FORMAT}; name a format (e.g. low_bit='sym_int8') to trade memory for accuracy",
        )
    return FormatChoice(
        exact,
        f"the checkpoint's own format: GGUF {stored} = {exact} group 32, loaded without re-rounding; "
        "name a format to re-quantize",
        stored_formats=True,
    )


def _lowbit(src: ModelSource) -> FormatChoice:
    manifest = json.loads((src.folder / LOWBIT_MANIFEST).read_text())
    sizes: Counter[str] = Counter()
    for meta in manifest.get("modules", {}).values():
        rows, cols = meta["shape"]
        sizes[meta["format"]] += rows * cols
    if not sizes:
        return _float_checkpoint(src)
    stored = _dominant(sizes)
    return FormatChoice(
        stored,
        f"the checkpoint's own format: a low-bit folder stored as {', '.join(sorted(sizes))}, kept as saved; "
        "name a format to re-quantize",
        stored_formats=True,
    )


def _float_checkpoint(src: ModelSource) -> FormatChoice:
    return FormatChoice(
        DEFAULT_FLOAT_FORMAT, f"float checkpoint: quantized to the default {DEFAULT_FLOAT_FORMAT}"
    )


_CHOOSERS = {"gguf": _gguf, "lowbit": _lowbit, "hf": _float_checkpoint}
