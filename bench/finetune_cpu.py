"""QLoRA on the packaged SmolLM2-135M, CPU: domain perplexity before/after, general perplexity, tokens/s, memory.

Domain: paragraphs of a few Wikipedia articles from exllamav2's installed `wiki.utf8` (read at run time, never
copied); 85% of each article's paragraphs train the adapter, the other 15% measure held-out perplexity.
General text: the first paragraphs of `c4.utf8` from the same package. Each variant runs in its own process:

- `qlora`: xpullm's low-bit model (asym_int4 g32 + sym_int8 head, as packaged) + LoRA through `xpullm.finetune`
  (fused low-bit head + cross-entropy);
- `bf16`: the same weights as a bf16 `nn.Linear` model + PEFT's own LoRA and transformers' loss, the usual
  non-quantized recipe, run for a few steps with the same batches for tokens/s and memory;
- `bf16-fused`: the bf16 run with xpullm's chunked head loss (shows which part of the saving is the loss).

Peak memory: the process's peak RSS while training (the high-water mark is reset once the model is loaded, so
loading transients do not count) minus its RSS before the model loaded: weights + everything training adds.
`--mmap-threshold` applies the same glibc allocator setting to every variant (0: glibc's adaptive default).

    .venv/bin/python -P bench/finetune_cpu.py --threads 1 --articles 3 --epochs 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _package_text(name: str) -> str:
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs exllamav2's package data: pip install --no-deps exllamav2==0.3.2")
    return (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / name
    ).read_text(encoding="utf-8")


def domain_split(articles: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(train paragraphs, held-out paragraphs, titles) from the first `articles` articles with >= 12 paragraphs."""
    docs = re.split(r"<doc [^>]*>", _package_text("wiki.utf8"))
    train, held, titles = [], [], []
    gen = torch.Generator().manual_seed(seed)
    for doc in docs:
        paras = [p.strip() for p in doc.replace("</doc>", "").split("\n") if len(p.strip()) > 120]
        if len(paras) < 12:
            continue
        titles.append(doc.strip().split("\n", 1)[0])
        order = torch.randperm(len(paras), generator=gen).tolist()
        cut = max(2, round(0.15 * len(paras)))
        held += [paras[i] for i in order[:cut]]
        train += [paras[i] for i in order[cut:]]
        if len(titles) == articles:
            break
    return train, held, titles


def general_text(n: int = 40) -> list[str]:
    return [p.strip() for p in _package_text("c4.utf8").split("\n") if len(p.strip()) > 200][:n]


@torch.no_grad()
def perplexity(model: torch.nn.Module, tokenizer, texts: list[str], seq_len: int) -> float:
    """exp(mean NLL) over the texts packed into rows of `seq_len` tokens (all tokens scored)."""
    from xpullm.finetune import tokenize_records

    rows = tokenize_records([{"text": t} for t in texts], tokenizer, seq_len)
    nll, count = 0.0, 0
    for r in rows:
        ids = r.input_ids[None]
        logits = model(input_ids=ids).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return math.exp(nll / count)


def _bf16_model(model: torch.nn.Module) -> torch.nn.Module:
    """The same (dequantized) weights as plain bf16 nn.Linear / nn.Embedding layers."""
    from xpullm.linear import LowBitEmbedding, LowBitLinear
    from xpullm.optimize import set_module

    for name, mod in list(model.named_modules()):
        if isinstance(mod, LowBitLinear):
            lin = torch.nn.Linear(
                mod.in_features, mod.out_features, bias=mod.bias is not None, dtype=torch.bfloat16
            )
            lin.weight.data = mod.dequantize(torch.bfloat16)
            set_module(model, name, lin)
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LowBitEmbedding):
            emb = torch.nn.Embedding(mod.num_embeddings, mod.embedding_dim, dtype=torch.bfloat16)
            emb.weight = model.lm_head.weight  # tied, as in the checkpoint
            set_module(model, name, emb)
    return model.to(torch.bfloat16)


def _rss_mb(key: str = "VmRSS") -> float:
    """VmRSS (now) or VmHWM (peak since start or since the last reset) of this process, MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its measurements."""
    from peft import get_peft_model

    from xpullm.finetune import FinetuneConfig, finetune, load_base, lora_config
    from xpullm.finetune.allocator import set_mmap_threshold
    from xpullm.finetune.loss import causal_lm_loss
    from xpullm.finetune.trainer import collate

    torch.set_num_threads(args.threads)
    if args.mmap_threshold:
        set_mmap_threshold(args.mmap_threshold)
    train, held, _ = domain_split(args.articles)
    general = general_text()
    rss0 = _rss_mb()
    config = FinetuneConfig(r=args.rank, alpha=2 * args.rank, seq_len=args.seq_len, batch_size=args.batch_size,
                            epochs=args.epochs, lr=args.lr, save_every=10_000, warmup_steps=5,
                            max_steps=args.max_steps, malloc_mmap_threshold=None)  # fmt: skip
    model, tok = load_base(None, config)
    out: dict = {"variant": args.variant}
    if args.variant == "qlora":
        out["domain_ppl_before"] = perplexity(model, tok, held, args.seq_len)
        out["general_ppl_before"] = perplexity(model, tok, general, args.seq_len)
        out["setup_mb"] = _rss_mb() - rss0
        _reset_peak()
        with tempfile.TemporaryDirectory() as tmp:
            result = finetune(model, [{"text": t} for t in train], tmp, config, tokenizer=tok, progress=False)
        out.update(steps=result.steps, tokens_per_s=result.tokens_per_s, seconds=result.seconds,
                   first_loss=result.losses[0], last_loss=result.losses[-1])  # fmt: skip
        out["peak_mb"] = _rss_mb("VmHWM") - rss0
        model.eval()  # `finetune` injected the adapter into this model object in place
        out["domain_ppl_after"] = perplexity(model, tok, held, args.seq_len)
        out["general_ppl_after"] = perplexity(model, tok, general, args.seq_len)
    else:
        from xpullm.finetune import tokenize_records

        model = _bf16_model(model)
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in model.parameters():
            p.requires_grad_(False)
        peft_model = get_peft_model(
            model, lora_config(config.r, config.alpha, config.targets, config.dropout)
        )
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=config.lr)
        rows = tokenize_records([{"text": t} for t in train], tok, args.seq_len)
        peft_model.train()
        out["setup_mb"] = _rss_mb() - rss0
        _reset_peak()
        tokens, began = 0, time.perf_counter()
        for i in range(args.bf16_steps):
            batch = collate(rows[i * args.batch_size : (i + 1) * args.batch_size], tok.eos_token_id)
            torch.manual_seed(config.seed + i)
            loss = (
                causal_lm_loss(peft_model, batch)
                if args.variant == "bf16-fused"
                else peft_model(**batch).loss
            )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            tokens += int((batch["labels"] != -100).sum())
        out.update(steps=args.bf16_steps, tokens_per_s=tokens / (time.perf_counter() - began))
        out["peak_mb"] = _rss_mb("VmHWM") - rss0
    return out


VARIANTS = ("bf16", "bf16-fused", "qlora")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default=None, help="run one variant (internal)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--articles", type=int, default=6)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--bf16-steps", type=int, default=6)
    p.add_argument("--max-steps", type=int, default=None, help="cap the QLoRA run (memory-only runs)")
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=1 << 20,
        help="glibc mmap threshold for every variant, bytes (0: glibc's adaptive default)",
    )
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    train, held, titles = domain_split(args.articles)
    flags = [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "variant" and v is not None
    ]
    results = {}
    for variant in VARIANTS:
        proc = subprocess.run([sys.executable, "-P", __file__, "--variant", variant, *flags],
                              capture_output=True, text=True, check=True)  # fmt: skip
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    q, b, f = results["qlora"], results["bf16"], results["bf16-fused"]
    drop = 1 - q["domain_ppl_after"] / q["domain_ppl_before"]
    allocator = (
        f"glibc mmap threshold {args.mmap_threshold} B" if args.mmap_threshold else "glibc default allocator"
    )
    print(f"Domain: {len(titles)} Wikipedia articles ({'; '.join(titles)}): {len(train)} training paragraphs, "
          f"{len(held)} held out. General: 40 C4 paragraphs. rank {args.rank}, lr {args.lr}, {args.epochs} epochs, "
          f"batch {args.batch_size} x {args.seq_len} tokens, {args.threads} thread(s), gradient checkpointing, "
          f"{allocator}.\n")  # fmt: skip
    print("| | domain ppl (held out) | general ppl | train tokens/s | RSS after setup | peak RSS training |")
    print("|---|---|---|---|---|---|")
    print(f"| base (packaged asym_int4 + sym_int8) | {q['domain_ppl_before']:.2f} | {q['general_ppl_before']:.2f} "
          "| | | |")  # fmt: skip
    print(f"| after QLoRA ({q['steps']} steps, {q['seconds']:.0f} s) | {q['domain_ppl_after']:.2f} "
          f"(**{-100 * drop:+.1f}%**) | {q['general_ppl_after']:.2f} "
          f"({100 * (q['general_ppl_after'] / q['general_ppl_before'] - 1):+.1f}%) | {q['tokens_per_s']:.1f} | "
          f"{q['setup_mb']:.0f} MB | **{q['peak_mb']:.0f} MB** |")  # fmt: skip
    for name, r in (("LoRA on the bf16 model", b), ("bf16 LoRA + xpullm's chunked head loss", f)):
        print(f"| {name} ({r['steps']} steps, same batches) | | | {r['tokens_per_s']:.1f} | {r['setup_mb']:.0f} MB "
              f"| {r['peak_mb']:.0f} MB |")  # fmt: skip
    print(f"\nQLoRA / bf16-LoRA peak memory: **{q['peak_mb'] / b['peak_mb']:.2f}x** "
          f"({q['peak_mb'] / f['peak_mb']:.2f}x of bf16 LoRA with the chunked loss); tokens/s: "
          f"{q['tokens_per_s'] / b['tokens_per_s']:.2f}x; loss {q['first_loss']:.3f} -> {q['last_loss']:.3f}.")  # fmt: skip


if __name__ == "__main__":
    main()
