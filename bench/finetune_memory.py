"""Where a fine-tuning step's memory goes: RSS per step, glibc's heap, and the live tensors at the step's peak.

One process, one variant, a few steps of LoRA on the packaged SmolLM2-135M (batch 4 x 128 tokens, r=16 on all 7
projections, non-reentrant activation checkpointing), after the model is loaded:

- RSS after setup, peak RSS of each step (VmHWM, reset once setup is done), both minus the RSS before loading;
- glibc's `mallinfo2` after the steps (heap size vs bytes in use: the rest is freed memory glibc kept);
- `--track`: a dispatch mode follows every tensor of >= 1 MB the last step allocates and prints those alive
  at the step's peak, by the op that made them (forward F:, backward B:, optimizer O:).

    .venv/bin/python -P bench/finetune_memory.py --variant qlora --loss chunked --track
    MALLOC_MMAP_THRESHOLD_=1048576 .venv/bin/python -P bench/finetune_memory.py --variant bf16 --loss model
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import weakref
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_cpu import _bf16_model, _reset_peak, _rss_mb, domain_split


class LiveTensors(TorchDispatchMode):
    """Bytes of the live storages (>= 1 MB) made inside the mode, their peak, and what was alive then."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, str]] = {}
        self.now = self.peak = 0
        self.at_peak: dict[int, tuple[int, str]] = {}
        self.phase = ""

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, (0, ""))[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or storage.nbytes() < 1 << 20:
                continue
            self.live[key] = (storage.nbytes(), f"{self.phase}{func.__name__} {tuple(t.shape)} {t.dtype}")
            self.now += storage.nbytes()
            weakref.finalize(storage, self._free, key)
            if self.now > self.peak:
                self.peak, self.at_peak = self.now, dict(self.live)
        return out

    def report(self, top: int = 12) -> None:
        print(f"live tensors >= 1 MB made by the step, at its peak: {self.peak / 1e6:.0f} MB")
        totals: Counter[str] = Counter()
        for size, label in self.at_peak.values():
            totals[label] += size
        for label, size in totals.most_common(top):
            print(f"  {size / 1e6:8.1f} MB  {label}")


def _mallinfo() -> dict[str, float]:
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ["arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"]]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Info
    info = libc.mallinfo2()
    return {
        "heap_mb": info.arena / 1e6,
        "in_use_mb": info.uordblks / 1e6,
        "free_kept_mb": info.fordblks / 1e6,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=["qlora", "bf16"], default="qlora")
    p.add_argument(
        "--loss", choices=["chunked", "model"], default="chunked", help="xpullm's or the model's loss"
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--track", action="store_true", help="list the live tensors at the last step's peak")
    args = p.parse_args()

    from peft import get_peft_model

    from xpullm.finetune import (
        FinetuneConfig,
        load_base,
        lora_config,
        prepare_model_for_kbit_training,
        tokenize_records,
    )
    from xpullm.finetune.loss import causal_lm_loss
    from xpullm.finetune.trainer import collate

    torch.set_num_threads(1)
    train, _, _ = domain_split(3)
    rss0 = _rss_mb()
    model, tok = load_base(None, FinetuneConfig())
    if args.variant == "bf16":  # as bench/finetune_cpu.py: no fp32 upcast of the (bf16 nn.Linear) weights
        model = _bf16_model(model)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.requires_grad_(False)
    else:
        prepare_model_for_kbit_training(model)
    peft_model = get_peft_model(model, lora_config(16, 32))
    opt = torch.optim.AdamW([q for q in peft_model.parameters() if q.requires_grad], lr=1e-3)
    rows = tokenize_records([{"text": t} for t in train], tok, 128)
    peft_model.train()
    print(f"{args.variant}, {args.loss} loss: RSS after setup {_rss_mb() - rss0:.0f} MB")
    _reset_peak()
    tracker = LiveTensors()
    for i in range(args.steps):
        batch = collate(rows[4 * i : 4 * i + 4], tok.eos_token_id)
        track = args.track and i == args.steps - 1
        if track:
            tracker.__enter__()
        tracker.phase = "F:"
        loss = causal_lm_loss(peft_model, batch) if args.loss == "chunked" else peft_model(**batch).loss
        tracker.phase = "B:"
        loss.backward()
        tracker.phase = "O:"
        opt.step()
        opt.zero_grad(set_to_none=True)
        if track:
            tracker.__exit__(None, None, None)
        print(f"step {i}: RSS {_rss_mb() - rss0:.0f} MB, peak so far {_rss_mb('VmHWM') - rss0:.0f} MB")
    print("glibc heap: " + ", ".join(f"{k} {v:.0f}" for k, v in _mallinfo().items()))
    if args.track:
        tracker.report()


if __name__ == "__main__":
    main()
