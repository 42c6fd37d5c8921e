"""QLoRA on a GPU: a Llama-3-8B-shaped decoder with random weights, nf4 `LowBitLinear` + LoRA vs bf16 LoRA.

Training tokens/s and peak GPU memory, each variant in its own process (same shapes, batches and LoRA):

- `nf4`: every projection and the (untied) head a `LowBitLinear` in nf4 (quantized on the GPU from random bf16
  weights, layer by layer), LoRA on all seven projections, xpullm's chunked head loss;
- `bf16`: the same model as bf16 `nn.Linear` layers, the same LoRA, logits + cross-entropy as transformers
  computes them (the usual non-quantized recipe);
- `bf16-chunked`: the bf16 model with xpullm's chunked head loss (which part of the saving is the loss);
- `bnb-nf4`: bitsandbytes' `Linear4bit` (nf4, bf16 compute) with the same LoRA, when bitsandbytes imports.

The GPU image has torch + triton only (no transformers / peft): the decoder is written out below (RMSNorm, RoPE,
grouped-query SDPA, SwiGLU; per-layer non-reentrant activation checkpointing) and LoRA is a small wrapper, so
all variants run exactly the same code around their linear layers. One call on the device machine:

    bash bench/gpu_run.sh py bench/finetune_gpu.py --out bench/out/gpu/finetune_gpu.md

`--shape tiny --device cpu` runs the same code on a small model (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Shape:
    """Decoder dimensions (Llama-3-8B: 32 layers, 4096 wide, 14336 MLP, 32 heads / 8 KV heads, 128k vocab)."""

    layers: int = 32
    hidden: int = 4096
    mlp: int = 14336
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256


SHAPES = {"llama3-8b": Shape(), "tiny": Shape(layers=2, hidden=256, mlp=512, heads=4, kv_heads=2, vocab=2048)}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VARIANTS = ("nf4", "bf16", "bf16-chunked", "bnb-nf4")


class LoRA(nn.Module):
    """y = base(x) + B(A(x)) * alpha / r; A, B in fp32 (trainable), the base frozen."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, r: int, alpha: int,
                 device: torch.device) -> None:  # fmt: skip
        super().__init__()
        self.base, self.scaling = base, alpha / r
        self.lora_a = nn.Parameter(torch.randn(r, in_features, device=device) / math.sqrt(in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, r, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(x.float(), self.lora_a), self.lora_b) * self.scaling
        return self.base(x) + delta.to(x.dtype)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Block(nn.Module):
    """One pre-norm decoder layer; `linear(name, in, out)` builds each projection."""

    def __init__(self, shape: Shape, linear, device: torch.device) -> None:
        super().__init__()
        self.shape = shape
        head_dim = shape.hidden // shape.heads
        dims = {"q_proj": (shape.hidden, shape.hidden), "k_proj": (shape.hidden, shape.kv_heads * head_dim),
                "v_proj": (shape.hidden, shape.kv_heads * head_dim), "o_proj": (shape.hidden, shape.hidden),
                "gate_proj": (shape.hidden, shape.mlp), "up_proj": (shape.hidden, shape.mlp),
                "down_proj": (shape.mlp, shape.hidden)}  # fmt: skip
        for name in PROJECTIONS:
            setattr(self, name, linear(name, *dims[name]))
        self.norm1 = nn.Parameter(torch.ones(shape.hidden, device=device), requires_grad=False)
        self.norm2 = nn.Parameter(torch.ones(shape.hidden, device=device), requires_grad=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        s, head_dim = self.shape, self.shape.hidden // self.shape.heads
        h = _rms_norm(x, self.norm1)
        q = self.q_proj(h).view(b, t, s.heads, head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, s.kv_heads, head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, s.kv_heads, head_dim).transpose(1, 2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        k = k.repeat_interleave(s.heads // s.kv_heads, dim=1)
        v = v.repeat_interleave(s.heads // s.kv_heads, dim=1)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o_proj(attn)
        h = _rms_norm(x, self.norm2)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


def _random_linear(in_features: int, out_features: int, device: torch.device, seed: int) -> nn.Linear:
    gen = torch.Generator(device=device).manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=False, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, device=device, generator=gen) * 0.02)
    return layer.requires_grad_(False)


def _base_linear(
    variant: str, in_features: int, out_features: int, device: torch.device, seed: int
) -> nn.Module:
    dense = _random_linear(in_features, out_features, device, seed)
    if variant == "nf4":
        from xpullm.linear import LowBitLinear

        return LowBitLinear.from_linear(dense, "nf4", 64, device=device).train()
    if variant == "bnb-nf4":
        import bitsandbytes as bnb

        layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.bfloat16,
                                  quant_type="nf4", device="cpu")  # fmt: skip
        # The bf16 weight stays on the GPU: moving the layer there quantizes it there (no host round trip).
        layer.weight = bnb.nn.Params4bit(dense.weight.data, requires_grad=False, quant_type="nf4")
        return layer.to(device)
    return dense


def _lora_factory(variant: str, r: int, device: torch.device, seed: int):
    """Builds each projection of one block: a random base layer (seeded per projection) wrapped in LoRA."""
    seeds = iter(range(seed, seed + len(PROJECTIONS)))

    def make(name: str, in_features: int, out_features: int) -> LoRA:
        base = _base_linear(variant, in_features, out_features, device, next(seeds))
        return LoRA(base, in_features, out_features, r, 2 * r, device)

    return make


class Model(nn.Module):
    """Embedding (bf16, frozen) -> blocks with LoRA on every projection -> final norm -> head (frozen)."""

    def __init__(self, shape: Shape, variant: str, r: int, device: torch.device) -> None:
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab, shape.hidden, device=device, dtype=torch.bfloat16)
        self.embed.weight.requires_grad_(False)
        blocks = [
            Block(shape, _lora_factory(variant, r, device, 1000 * i), device) for i in range(shape.layers)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.Parameter(torch.ones(shape.hidden, device=device), requires_grad=False)
        head_variant = "nf4" if variant == "nf4" else "bf16"  # bitsandbytes' recipe keeps the head in bf16
        self.head = _base_linear(head_variant, shape.hidden, shape.vocab, device, 10**6)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        t, head_dim = ids.shape[1], self.shape.hidden // self.shape.heads
        inv = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=ids.device).float() / head_dim))
        angles = torch.outer(torch.arange(t, device=ids.device).float(), inv)
        cos = torch.cat((angles, angles), -1).cos().to(torch.bfloat16)
        sin = torch.cat((angles, angles), -1).sin().to(torch.bfloat16)
        x = self.embed(ids)
        for block in self.blocks:
            x = checkpoint(block, x, cos, sin, use_reentrant=False)
        return _rms_norm(x, self.norm)


def _loss(model: Model, ids: torch.Tensor, chunked: bool) -> torch.Tensor:
    hidden = model.hidden(ids)
    if chunked:
        from xpullm.finetune.loss import head_cross_entropy

        return head_cross_entropy(hidden, model.head, ids)
    logits = model.head(hidden).float()  # what transformers' causal-LM loss does
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _progress(text: str) -> None:
    """A line on stderr, which the parent shows when a variant runs out of time (where it stood)."""
    print(f"# {text}", file=sys.stderr, flush=True)


def run_variant(args: argparse.Namespace) -> dict:
    """Build one variant, train `--steps` timed steps after `--warmup`; tokens/s and peak memory."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    shape = SHAPES[args.shape]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = Model(shape, args.variant, args.rank, device).train()
    _progress(f"model built in {time.perf_counter() - t0:.1f} s")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    if cuda:
        torch.cuda.synchronize()
        setup = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator().manual_seed(1)
    chunked = args.variant in ("nf4", "bf16-chunked")
    losses, began = [], 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
        ids = torch.randint(0, shape.vocab, (args.batch_size, args.seq_len), generator=gen).to(device)
        loss = _loss(model, ids, chunked)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
        _progress(f"step {step + 1}/{args.warmup + args.steps} done at {time.perf_counter() - t0:.1f} s")
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    out = {"variant": args.variant, "tokens_per_s": args.steps * args.batch_size * args.seq_len / seconds,
           "step_s": seconds / args.steps, "losses": losses,
           "trainable_m": sum(p.numel() for p in params) / 1e6}  # fmt: skip
    if cuda:
        out.update(setup_gib=setup / 2**30, peak_gib=torch.cuda.max_memory_allocated() / 2**30,
                   device=torch.cuda.get_device_name(device))  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=VARIANTS, default=None, help="run one variant (internal)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants to compare")
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (Triton compiles, allocator warm-up)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--variant-timeout", type=int, default=240, help="seconds each variant's process may run")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    flags = [f"--shape={args.shape}", f"--device={args.device}", f"--batch-size={args.batch_size}",
             f"--seq-len={args.seq_len}", f"--rank={args.rank}", f"--warmup={args.warmup}", f"--steps={args.steps}"]  # fmt: skip
    results, notes = {}, []
    for variant in args.variants.split(","):
        if variant == "bnb-nf4":
            probe = subprocess.run(
                [sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True
            )
            if probe.returncode != 0:
                notes.append("bnb-nf4 skipped: bitsandbytes does not import here")
                continue
        print(f"# {variant}: started", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--variant", variant, *flags], capture_output=True, text=True,
                timeout=args.variant_timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
            last = (
                err.strip().splitlines()[-1] if err.strip() else "nothing printed: still building the model"
            )
            notes.append(f"{variant} stopped after its {args.variant_timeout} s limit (last: {last})")
            print(f"# {variant}: timed out", file=sys.stderr, flush=True)
            continue
        if proc.returncode != 0:
            notes.append(
                f"{variant} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else '?'}"
            )
            print(proc.stderr[-4000:], file=sys.stderr)
            continue
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"# {variant}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        _write(args, results, notes)  # a run cut short keeps every finished variant
    print(_write(args, results, notes))


def _write(args: argparse.Namespace, results: dict, notes: list[str]) -> str:
    """The markdown table of the variants measured so far (also written to `--out` and its .json)."""
    lines = [f"Shape {args.shape} {asdict(SHAPES[args.shape])}, batch {args.batch_size} x {args.seq_len} tokens, "
             f"LoRA r={args.rank} on all 7 projections, bf16 activations, per-layer activation checkpointing, "
             f"{args.steps} timed steps after {args.warmup}; torch {torch.__version__}, device "
             f"{next((r['device'] for r in results.values() if 'device' in r), args.device)}.", "",
             "| variant | train tokens/s | step s | memory after setup GiB | peak GiB | loss first -> last |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results.items():
        mem = f"{r['setup_gib']:.2f} | {r['peak_gib']:.2f}" if "peak_gib" in r else "n/a | n/a"
        lines.append(f"| {name} | {r['tokens_per_s']:.0f} | {r['step_s']:.3f} | {mem} | "
                     f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} |")  # fmt: skip
    if "nf4" in results and "bf16" in results and "peak_gib" in results["nf4"]:
        q, b = results["nf4"], results["bf16"]
        lines.append(f"\nnf4 / bf16 peak memory: **{q['peak_gib'] / b['peak_gib']:.2f}x**; tokens/s: "
                     f"{q['tokens_per_s'] / b['tokens_per_s']:.2f}x.")  # fmt: skip
    lines += [f"\n{n}" for n in notes]
    text = "\n".join(lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    return text


if __name__ == "__main__":
    main()
