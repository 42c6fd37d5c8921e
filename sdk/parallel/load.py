"""Load one rank's shard of a checkpoint (GGUF, HF folder or xpullm low-bit folder) without the whole model.

The checkpoint streams one tensor at a time (as `AutoModelForCausalLM.from_pretrained` reads it); each tensor is cut
to this rank's part (`shard.py`) before it is quantized or kept, and the full tensor is dropped. Peak memory per rank
is its shard plus one full tensor. The quantization group along K is read before the split is planned, so a cut
never falls inside a group: stored GGUF blocks (32), a low-bit folder's saved groups, and the target format's group
when the weights are (re-)quantized on the way in.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch
from torch import nn

from xpullm.formats import get_format
from xpullm.loading.build import BuildOptions, build_model
from xpullm.loading.format_choice import FOLLOW_CHECKPOINT, FormatChoice, choose_format
from xpullm.loading.resolve import ModelSource, read_config, resolve_source
from xpullm.loading.sources import LOWBIT_MANIFEST, LowBitSource, SafetensorsSource
from xpullm.parallel.errors import TensorParallelError
from xpullm.parallel.plan import ModelShape, TPPlan, plan_split
from xpullm.parallel.shard import shard_config, shard_tensors

__all__ = ["load_shard", "plan_for_source", "read_config"]

_GGUF_BLOCK = 32
_ROW_SPLIT = (".o_proj", ".down_proj")


def _target_align(low_bit: str, group_size: int | None) -> int:
    """The K alignment a (re-)quantization into `low_bit` needs: its group size (1 for one group per row)."""
    fmt = get_format(low_bit)
    if fmt.is_passthrough:
        return 1
    gs = fmt.default_group_size if group_size is None else group_size
    return gs if gs else (2 if fmt.bits == 4 else 1)


def _stored_align(src: ModelSource) -> int:
    """The K alignment of the stored row-split weights: GGUF blocks, a low-bit folder's groups, 1 for floats."""
    if src.kind == "gguf":
        return _GGUF_BLOCK
    if src.kind != "lowbit":
        return 1
    manifest = json.loads((src.folder / LOWBIT_MANIFEST).read_text())
    align = 1
    for name, meta in manifest["modules"].items():
        if name.endswith(_ROW_SPLIT) and int(meta["group_size"]) < int(meta["shape"][1]):
            align = math.lcm(align, int(meta["group_size"]))
    return align


def plan_for_source(src: ModelSource, config: Any, world: int, choice: FormatChoice,
                    group_size: int | None = None) -> TPPlan:  # fmt: skip
    """The split of `src` over `world` ranks, with cuts on the stored and the target quantization groups."""
    align = math.lcm(_stored_align(src), _target_align(choice.low_bit, group_size))
    return plan_split(ModelShape.from_config(config), world, align)


def load_shard(path: str | os.PathLike, rank: int, world: int, *, low_bit: str | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
               group_size: int | None = None) -> tuple[nn.Module, TPPlan]:  # fmt: skip
    """Rank `rank`'s shard of the checkpoint at `path` (not yet wrapped in collectives: see `parallelize`)."""
    if low_bit and low_bit != FOLLOW_CHECKPOINT:
        get_format(low_bit)
    src = resolve_source(path)
    choice = choose_format(src, low_bit, group_size=group_size)
    config = read_config(src)
    plan = plan_for_source(src, config, world, choice, group_size)
    device = torch.device(device)
    if src.kind == "gguf":
        from xpullm.loading.gguf_source import GGUFSource

        source: Any = GGUFSource(src.folder / str(src.gguf_file))
        if not source.supported:
            raise TensorParallelError(
                f"{src.gguf_file}: GGUF architecture {source.arch!r} has no direct tensor mapping, so it cannot "
                "be loaded shard by shard; convert it with `xpullm convert` first, or use tensor_parallel=1"
            )
        opts = BuildOptions(low_bit=choice.low_bit, group_size=group_size, device=device, dtype=dtype,
                            stored_formats=choice.stored_formats, progress=False)  # fmt: skip
    elif src.kind == "lowbit":
        source = LowBitSource(src.folder)
        opts = BuildOptions(low_bit=choice.low_bit, group_size=group_size, device=device, dtype=dtype,
                            stored_formats=True, progress=False,
                            only_modules=frozenset(source.manifest["modules"]))  # fmt: skip
    else:
        source = SafetensorsSource(src.folder)
        opts = BuildOptions(low_bit=choice.low_bit, group_size=group_size, device=device, dtype=dtype,
                            stored_formats=choice.stored_formats, progress=False)  # fmt: skip
    model = build_model(shard_config(config, plan, rank), shard_tensors(source.tensors(), plan, rank), opts)
    if src.kind != "gguf" and (src.folder / "generation_config.json").exists():
        import transformers

        model.generation_config = transformers.GenerationConfig.from_pretrained(src.folder)
    model.xpullm_source = src  # type: ignore[assignment]
    model.xpullm_format = choice  # type: ignore[assignment]
    return model.eval(), plan
