"""End-to-end batch-1 decode on a GPU: xpullm low-bit layers vs the plain-PyTorch peer, in one run.

A Llama-3-8B-shaped decoder with random weights (32 layers, d 4096, ffn 14336, 32/8 heads, vocab 128256), a
static KV cache and the decode step compiled with `torch.compile(mode="reduce-overhead")` (CUDA graphs) - the
same model code as `gpu_peer_decode.py`, except that every linear layer is an `xpullm.LowBitLinear` running the
registered Triton kernel for its format (q/k/v and gate/up fused with `xpullm.linear.fuse_linears`).

    python bench/gpu_decode.py [--layers 32] [--tokens 128] [--formats bf16,sym_int4,...] [--batches 8,16]
                               [--engine bf16,sym_int4:128] [--peer gpu_peer_decode.py] [--out rows.jsonl]

`--engine` also decodes a transformers Llama of the same shape through `xpullm.engine` (optimize_model +
build_decoder), once with eager steps and once with the engine's CUDA graphs.

The peer (`--peer path/to/gpu_peer_decode.py`) and transformers eager `generate` run in the same process
invocation, so every ratio compares numbers from the same GPU and the same minute.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from xpullm.formats import get_format
from xpullm.kernels.triton.pdl import pdl_enabled
from xpullm.linear import LowBitLinear

D, FF, H, KV, V, MAXLEN = 4096, 14336, 32, 8, 128256, 1024
HD = D // H
DT = torch.bfloat16
DEV = "cuda"
_PDL_MODES = {"on": ("1",), "off": ("0",), "both": ("1", "0")}  # XPULLM_PDL values


class TinyGemmLinear(torch.nn.Module):
    """The peer's int4 path in this file's model: PyTorch's tinygemm (`_weight_int4pack_mm`), for A/B profiles.

    Quantized the way tinygemm reads it: w ~ (q - 8) * scale + zero per group of `group` along K, with
    scales_and_zeros [K / group, N, 2] in bf16.
    """

    def __init__(self, w: torch.Tensor, group: int) -> None:
        super().__init__()
        n, k = w.shape
        g = w.float().reshape(n, k // group, group)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = (hi - lo).clamp(min=1e-6) / 15
        q = ((g - lo) / scale).round().clamp(0, 15).to(torch.uint8).reshape(n, k)
        sz = torch.stack([scale.squeeze(-1), (lo + 8 * scale).squeeze(-1)], -1).transpose(0, 1)
        self.group, self.n = group, n
        self.register_buffer(
            "packed", torch.ops.aten._convert_weight_to_int4pack(q[:, ::2] << 4 | q[:, 1::2], 8)
        )
        self.register_buffer("sz", sz.contiguous().to(DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, x.shape[-1]), self.packed, self.group, self.sz)
        return y.reshape(*x.shape[:-1], self.n)


def _linear(n: int, k: int, fmt: str, group: int | None) -> torch.nn.Module:
    w = torch.randn(n, k, device=DEV, dtype=DT) / math.sqrt(k)
    if fmt == "tinygemm":
        return TinyGemmLinear(w, group or 128)
    if fmt == "bf16":
        lin = torch.nn.Linear(k, n, bias=False, device="meta")
        lin.weight = torch.nn.Parameter(w, requires_grad=False)
        return lin
    return LowBitLinear(get_format(fmt).quantize(w, group), None, DEV)


def _rms(x, w):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(DT) * w


def _rope(x, cos, sin):
    x1, x2 = x[..., : HD // 2], x[..., HD // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Block(torch.nn.Module):
    def __init__(self, fmt: str, group: int | None, batch: int) -> None:
        super().__init__()
        self.wqkv = _linear((H + 2 * KV) * HD, D, fmt, group)
        self.wo = _linear(D, D, fmt, group)
        self.w13 = _linear(2 * FF, D, fmt, group)
        self.w2 = _linear(D, FF, fmt, group)
        self.register_buffer("n1", torch.ones(D, device=DEV, dtype=DT))
        self.register_buffer("n2", torch.ones(D, device=DEV, dtype=DT))
        self.register_buffer("k", torch.zeros(batch, KV, MAXLEN, HD, device=DEV, dtype=DT))
        self.register_buffer("v", torch.zeros(batch, KV, MAXLEN, HD, device=DEV, dtype=DT))

    def forward(self, x, pos, cos, sin, mask):
        b, t, _ = x.shape
        q, k, v = self.wqkv(_rms(x, self.n1)).split([H * HD, KV * HD, KV * HD], -1)
        q = _rope(q.view(b, t, H, HD), cos, sin).transpose(1, 2)
        k = _rope(k.view(b, t, KV, HD), cos, sin).transpose(1, 2)
        v = v.view(b, t, KV, HD).transpose(1, 2)
        self.k.index_copy_(2, pos, k)
        self.v.index_copy_(2, pos, v)
        a = F.scaled_dot_product_attention(q, self.k, self.v, attn_mask=mask, enable_gqa=True)
        x = x + self.wo(a.transpose(1, 2).reshape(b, t, D))
        g, u = self.w13(_rms(x, self.n2)).chunk(2, -1)
        return x + self.w2(F.silu(g) * u)


class Model(torch.nn.Module):
    def __init__(self, layers: int, fmt: str, group: int | None, batch: int) -> None:
        super().__init__()
        self.register_buffer("emb", torch.randn(V, D, device=DEV, dtype=DT) * 0.02)
        self.blocks = torch.nn.ModuleList(Block(fmt, group, batch) for _ in range(layers))
        self.register_buffer("norm", torch.ones(D, device=DEV, dtype=DT))
        self.head = _linear(V, D, fmt, group)
        inv = 1.0 / (500000.0 ** (torch.arange(0, HD, 2, device=DEV).float() / HD))
        ang = torch.outer(torch.arange(MAXLEN, device=DEV).float(), inv)
        self.register_buffer("cos", ang.cos().to(DT))
        self.register_buffer("sin", ang.sin().to(DT))
        self.register_buffer("causal", torch.tril(torch.ones(MAXLEN, MAXLEN, dtype=torch.bool, device=DEV)))

    def forward(self, ids, pos):
        x = self.emb[ids]
        cos, sin = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        mask = self.causal[pos][None, None]
        for blk in self.blocks:
            x = blk(x, pos, cos, sin, mask)
        return self.head(_rms(x[:, -1:], self.norm))


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the projection weights a decode step streams from GPU memory (codes, scales, zero points)."""
    from xpullm.linear import state_nbytes

    total = 0
    for mod in model.modules():
        if isinstance(mod, LowBitLinear):
            total += state_nbytes(mod.state)  # not the host-side portable copy a kernel may keep
        elif isinstance(mod, torch.nn.Linear):
            total += mod.weight.numel() * mod.weight.element_size()
        elif isinstance(mod, TinyGemmLinear):
            total += sum(t.numel() * t.element_size() for t in (mod.packed, mod.sz))
    return total


def _set_batch(model: torch.nn.Module, batch: int) -> None:
    """Fresh KV caches for `batch` rows (the weights stay: one quantized model serves every batch size)."""
    for blk in model.blocks:
        blk.k = torch.zeros(batch, KV, MAXLEN, HD, device=DEV, dtype=DT)
        blk.v = torch.zeros(batch, KV, MAXLEN, HD, device=DEV, dtype=DT)


@torch.no_grad()
def _timed_decode(model: torch.nn.Module, batch: int, tokens: int) -> float:
    """Seconds for `tokens` compiled decode steps of `batch` rows (after prefill, tuning and capture)."""
    _set_batch(model, batch)
    prompt = torch.randint(0, V, (batch, 32), device=DEV)
    tok = model(prompt, torch.arange(32, device=DEV)).argmax(-1).view(batch, 1)
    for i in range(2):  # eager decode steps tune the Triton configs for these shapes before graph capture
        tok = model(tok, torch.tensor([32 + i], device=DEV)).argmax(-1).view(batch, 1)
    step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
    for i in range(3):
        tok = step(tok, torch.tensor([34 + i], device=DEV)).argmax(-1).view(batch, 1).clone()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(tokens):
        tok = step(tok, torch.tensor([40 + i], device=DEV)).argmax(-1).view(batch, 1).clone()
    torch.cuda.synchronize()
    secs = time.perf_counter() - start
    del step
    torch._dynamo.reset()
    return secs


@torch.no_grad()
def run(fmt: str, group: int | None, layers: int, tokens: int, batches: list[int]) -> list[dict]:
    """One row per batch size for one format (the model is built and quantized once)."""
    torch.manual_seed(0)
    model = Model(layers, fmt, group, batches[0])
    gb = weight_bytes(model) / 1e9
    rows = []
    for batch in batches:
        secs = _timed_decode(model, batch, tokens)
        rows.append({"engine": "xpullm", "format": fmt if group is None else f"{fmt} g{group}", "batch": batch,
                     "tok_s": batch * tokens / secs, "step_ms": secs / tokens * 1e3, "weights_gb": gb,
                     "tb_s": gb * tokens / secs / 1e3})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def build_engine(fmt: str, group: int | None, layers: int, graphs: bool = True):
    """`xpullm.engine`'s decoder for a transformers Llama of this file's shape (random weights) in `fmt`.

    The engine path users get from `xpullm.LLM`: `optimize_model` quantizes the transformers model, and
    `build_decoder` returns the static-cache decoder (wrapped in `GraphedDecoder` on CUDA unless not `graphs`).
    """
    import transformers

    from xpullm import optimize_model
    from xpullm.engine.decode import build_decoder

    cfg = transformers.LlamaConfig(hidden_size=D, intermediate_size=FF, num_attention_heads=H, num_key_value_heads=KV,
                                   num_hidden_layers=layers, vocab_size=V, max_position_embeddings=MAXLEN)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(DEV):
        model = transformers.LlamaForCausalLM(cfg).to(DT).eval()
    if fmt != "bf16":
        optimize_model(model, fmt, group_size=group, device=DEV)
    dec = build_decoder(model, DT, torch.device(DEV))
    return dec if graphs else getattr(dec, "inner", dec)


@torch.no_grad()
def engine(
    fmt: str, group: int | None, layers: int, tokens: int, graphs: bool, batches: list[int]
) -> list[dict]:
    """`xpullm.engine` (`build_engine`) decoding with eager or CUDA-graph steps: one row per batch size
    (aggregate tok/s); eager steps are timed at batch 1 only."""
    dec = build_engine(fmt, group, layers, graphs)
    label = fmt if group is None else f"{fmt} g{group}"
    mode = "CUDA graphs" if graphs else "eager"
    rows = []
    for batch in batches if graphs else batches[:1]:
        prompt = torch.randint(0, V, (batch, 32), device=DEV)
        logits = dec.start(prompt, torch.zeros(batch, dtype=torch.long), 32 + tokens + 8)
        for _ in range(3):  # tunes kernels and records the graph
            logits = dec.step(logits.argmax(-1))
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(tokens):
            logits = dec.step(logits.argmax(-1))
        torch.cuda.synchronize()
        secs = time.perf_counter() - start
        rows.append({"engine": f"xpullm engine ({mode})", "format": label, "batch": batch,
                     "tok_s": batch * tokens / secs, "step_ms": secs / tokens * 1e3})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    del dec
    torch.cuda.empty_cache()
    return rows


@torch.no_grad()
def transformers_eager(layers: int, tokens: int) -> dict:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=D, intermediate_size=FF, num_attention_heads=H, num_key_value_heads=KV,
                                   num_hidden_layers=layers, vocab_size=V, max_position_embeddings=MAXLEN)  # fmt: skip
    with torch.device(DEV):
        model = transformers.LlamaForCausalLM(cfg).to(DT).eval()
    ids = torch.randint(0, V, (1, 32), device=DEV)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    torch.cuda.synchronize()
    secs = time.perf_counter() - start
    del model
    torch.cuda.empty_cache()
    return {"engine": "transformers eager generate", "format": "bf16", "batch": 1, "tok_s": tokens / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--formats", default="bf16,sym_int4:128,sym_int4,asym_int4,nf4,fp4,sym_int8,fp8_e4m3")
    ap.add_argument(
        "--batches", default="8,16", help="batch sizes besides 1, for every format (aggregate tok/s)"
    )
    ap.add_argument(
        "--engine", default="bf16,sym_int4:128", help="formats to decode through xpullm.engine too"
    )
    ap.add_argument("--no-eager", action="store_true", help="skip transformers' eager generate")
    ap.add_argument("--no-engine-eager", action="store_true", help="time the engine's CUDA-graph steps only")
    ap.add_argument(
        "--pdl", choices=("on", "off", "both"), default="on",
        help="engine kernels with programmatic dependent launch (Hopper+), without (XPULLM_PDL=0), or both",
    )  # fmt: skip
    ap.add_argument("--peer", default=None, help="path to gpu_peer_decode.py, run in the same invocation")
    ap.add_argument("--out", default=None, help="write the results as JSON lines here")
    args = ap.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    rows = []
    if args.peer:
        peer = subprocess.run([sys.executable, args.peer, "--layers", str(args.layers), "--tokens", str(args.tokens)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
        print(peer, flush=True)
        for line in peer.splitlines():
            if " tok/s" in line:
                mode, rest = line.split(":", 1)
                rows.append({"engine": "peer (gpu_peer_decode.py)", "format": mode.strip(), "batch": 1,
                             "tok_s": float(rest.split("tok/s")[0])})  # fmt: skip
    if not args.no_eager:
        rows.append(transformers_eager(args.layers, min(args.tokens, 32)))
        print(json.dumps(rows[-1]), flush=True)

    def save() -> None:  # after every measurement, so a run cut short keeps what it measured
        if args.out:
            with open(args.out, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    save()
    batches = [1] + [int(b) for b in args.batches.split(",") if b]
    for spec in (s for s in args.formats.split(",") if s):
        fmt, _, group = spec.partition(":")
        rows += run(fmt, int(group) if group else None, args.layers, args.tokens, batches)
        save()
    for spec, pdl in itertools.product((s for s in args.engine.split(",") if s), _PDL_MODES[args.pdl]):
        fmt, _, group = spec.partition(":")
        os.environ["XPULLM_PDL"] = (
            pdl  # read at every launch, so the decoder built next records its graphs so
        )
        print(f"# engine {spec}, XPULLM_PDL={pdl}", flush=True)
        for graphs in (False, True) if not args.no_engine_eager else (True,):
            for row in engine(fmt, int(group) if group else None, args.layers, args.tokens, graphs, batches):
                rows.append({**row, "pdl": pdl == "1" and pdl_enabled(torch.device(DEV))})
            save()


if __name__ == "__main__":
    main()
