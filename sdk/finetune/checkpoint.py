"""Training checkpoints that survive a kill: adapter + optimizer state + progress, written atomically, no pickle.

Layout of `<output>/checkpoint/`:
- `adapter_model.safetensors`, `adapter_config.json`: the adapter as PEFT saves it (loadable on its own);
- `optimizer.safetensors`: AdamW's per-parameter tensors (`<index>.<key>`);
- `trainer_state.json`: step, epoch, batch position, the optimizer's param groups and the run's config.
The folder is written next to the old one and renamed over it, so a kill leaves either the previous or the
new checkpoint, never a half-written one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xpullm.loading.lowbit_io import atomic_folder

__all__ = ["CHECKPOINT_DIR", "Progress", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_DIR = "checkpoint"
_STATE_FILE = "trainer_state.json"


@dataclass(frozen=True)
class Progress:
    """Where a run is: optimizer steps done, and the epoch / batch index the next step starts at."""

    step: int
    epoch: int
    batch: int


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{key}": value.detach().cpu().contiguous()
        for index, slots in state["state"].items()
        for key, value in slots.items()
        if isinstance(value, torch.Tensor)
    }
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups}


def save_checkpoint(output_dir: str | os.PathLike, model: Any, optimizer: torch.optim.Optimizer,
                    progress: Progress, config: dict[str, Any]) -> Path:  # fmt: skip
    """Write the checkpoint of a PEFT `model` and its `optimizer` under `output_dir`; returns the folder."""
    from safetensors.torch import save_file

    dest = Path(output_dir) / CHECKPOINT_DIR
    tensors, groups = _optimizer_tensors(optimizer)
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": progress.step,
            "epoch": progress.epoch,
            "batch": progress.batch,
            **groups,
            "config": config,
        }
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1))
    return dest


def load_checkpoint(
    output_dir: str | os.PathLike, model: Any, optimizer: torch.optim.Optimizer
) -> Progress | None:
    """Restore adapter weights and optimizer state from `output_dir`'s checkpoint; None when there is none."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(output_dir) / CHECKPOINT_DIR
    if not (folder / _STATE_FILE).exists():
        return None
    state = json.loads((folder / _STATE_FILE).read_text())
    adapter = load_file(str(folder / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(
            f"checkpoint {folder} does not match this model ({len(result.unexpected_keys)} unexpected adapter "
            f"tensors, e.g. {result.unexpected_keys[0]}): delete it or use another output folder"
        )
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in load_file(str(folder / "optimizer.safetensors")).items():
        index, key = name.split(".", 1)
        slots.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in state["param_groups"]]
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    return Progress(int(state["step"]), int(state["epoch"]), int(state["batch"]))
