"""`finetune`: LoRA on a low-bit model, with a progress bar (loss, tokens/s) and checkpoints that resume after a kill.

Determinism is what makes resuming exact: batch order comes from `seed + epoch` and each step reseeds dropout
from `seed + step`, so a run killed after step s and resumed from its checkpoint replays the steps an
uninterrupted run would have taken.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xpullm.finetune.allocator import set_mmap_threshold
from xpullm.finetune.checkpoint import Progress, load_checkpoint, save_checkpoint
from xpullm.finetune.config import FinetuneConfig
from xpullm.finetune.data import IGNORE_INDEX, TrainingRow, load_records, tokenize_records
from xpullm.finetune.loss import causal_lm_loss
from xpullm.finetune.peft_lora import lora_config
from xpullm.finetune.prepare import prepare_model_for_kbit_training

__all__ = ["ADAPTER_DIR", "FinetuneResult", "collate", "finetune", "load_base"]

ADAPTER_DIR = "adapter"  # the final adapter, under the output folder (PEFT format)


@dataclass(frozen=True)
class FinetuneResult:
    """What a run did."""

    adapter_path: Path  # PEFT adapter folder: `LLM(..., adapter=adapter_path)` serves it
    steps: int  # optimizer steps done in total (including those before a resume)
    resumed_from: int  # the step the run resumed at (0: fresh start)
    losses: list[float]  # training loss of each step this process ran
    tokens_per_s: float  # target tokens / s over this process's steps (forward + backward + update)
    seconds: float


def load_base(model: str | os.PathLike | None, config: FinetuneConfig) -> tuple[nn.Module, Any]:
    """The base model in `config.low_bit` and its tokenizer (None = the packaged SmolLM2-135M)."""
    from xpullm.loading import AutoModelForCausalLM, load_tokenizer
    from xpullm.loading.sources import LOWBIT_MANIFEST
    from xpullm.models import default_llm_path

    path = Path(default_llm_path() if model is None else model)
    if config.low_bit is None and (path / LOWBIT_MANIFEST).is_file():
        base = AutoModelForCausalLM.load_low_bit(path, device=config.device, dtype=torch.float32)
    else:
        base = AutoModelForCausalLM.from_pretrained(str(path), load_in_low_bit=config.low_bit or "sym_int4",
                                                    device=config.device, dtype=torch.float32, progress=False)  # fmt: skip
    return base, load_tokenizer(str(path))


def collate(rows: list[TrainingRow], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (IGNORE_INDEX on padding)."""
    width = max(r.input_ids.numel() for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = r.input_ids.numel()
        ids[i, :n], labels[i, :n], mask[i, :n] = r.input_ids, r.labels, 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _batches(rows: list[TrainingRow], config: FinetuneConfig, epoch: int) -> list[list[TrainingRow]]:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(config.seed + epoch)).tolist()
    return [
        [rows[i] for i in order[j : j + config.batch_size]] for j in range(0, len(order), config.batch_size)
    ]


def finetune(model: nn.Module | str | os.PathLike | None, data: str | os.PathLike | list[dict[str, Any]],
             output_dir: str | os.PathLike, config: FinetuneConfig = FinetuneConfig(), *,
             tokenizer: Any = None, progress: bool = True) -> FinetuneResult:  # fmt: skip
    """Train a LoRA adapter on `data` over a frozen low-bit `model` and save it under `output_dir/adapter`.

    Args:
        model: a loaded model of `LowBitLinear` layers (with `tokenizer`), a model path / hub id, or None for
            the packaged SmolLM2-135M; paths load in `config.low_bit`.
        data: a `.jsonl` file, a document file or folder (see `xpullm.finetune.data`), or records already loaded.
        output_dir: where checkpoints and the adapter go. A checkpoint found there is resumed.
        config: LoRA and optimisation settings.
        progress: show a tqdm bar with the loss and tokens/s.
    """
    from peft import get_peft_model
    from tqdm.auto import tqdm

    if not isinstance(model, nn.Module):
        model, tokenizer = load_base(model, config)
    if tokenizer is None:
        raise ValueError(
            "finetune(model=<nn.Module>, ...) needs tokenizer=: the model alone cannot tokenize the data"
        )
    records = load_records(data) if isinstance(data, (str, os.PathLike)) else data
    rows = tokenize_records(records, tokenizer, config.seq_len)
    prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.malloc_mmap_threshold is not None:
        set_mmap_threshold(config.malloc_mmap_threshold)
    torch.manual_seed(config.seed)  # the adapter's initial A matrices: a run is reproducible from its config
    peft_model = get_peft_model(model, lora_config(config.r, config.alpha, config.targets, config.dropout))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    start = load_checkpoint(output_dir, peft_model, optimizer) or Progress(0, 0, 0)
    per_epoch = math.ceil(len(rows) / config.batch_size)
    total = min(config.max_steps or per_epoch * config.epochs, per_epoch * config.epochs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(p.device for p in trainable)
    peft_model.train()

    step, losses, tokens, began = start.step, [], 0, time.perf_counter()
    bar = tqdm(total=total, initial=step, desc="finetune", unit="step", disable=not progress)
    epoch, batch_index = start.epoch, start.batch
    while step < total:
        batches = _batches(rows, config, epoch)
        while batch_index < len(batches) and step < total:
            batch = {k: v.to(device) for k, v in collate(batches[batch_index], pad_id).items()}
            for group in optimizer.param_groups:
                group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
            torch.manual_seed(config.seed + step)  # dropout masks replay exactly after a resume
            loss = causal_lm_loss(peft_model, batch)  # the head decoded in blocks: no [tokens, vocab] logits
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, batch_index = step + 1, batch_index + 1
            losses.append(float(loss.detach()))
            tokens += int((batch["labels"] != IGNORE_INDEX).sum())
            rate = tokens / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{rate:.0f}")
            bar.update(1)
            if step % config.save_every == 0 or step == total:
                at_end = batch_index >= len(batches)
                save_checkpoint(output_dir, peft_model, optimizer,
                                Progress(step, epoch + at_end, 0 if at_end else batch_index), config.to_dict())  # fmt: skip
        if batch_index >= len(batches):
            epoch, batch_index = epoch + 1, 0
    bar.close()
    adapter = Path(output_dir) / ADAPTER_DIR
    peft_model.save_pretrained(adapter)
    seconds = time.perf_counter() - began
    return FinetuneResult(adapter, step, start.step, losses, tokens / max(seconds, 1e-9), seconds)
