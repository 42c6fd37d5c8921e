"""What the `w8a8` path's per-token activation rounding costs in perplexity (issue 29), on this CPU.

The packaged model (SmolLM2-135M, its Q4_1 GGUF dequantized to fp32: the baseline), every projection of its decoder layers replaced by the numbers a GPU
computes for 8-bit per-channel weights: weight-only (bf16 activations times the dequantized weight: the `mma` /
`mma_t` tiles) and `w8a8` (each activation row rounded to the weight's 8-bit type first: `kernels/triton/w8a8.py`'s
twin, which its GPU tests hold the cuBLAS path to). Perplexity on exllamav2's `wiki.utf8`.

    python -P bench/w8a8_quality.py [--tokens 8192] [--window 512] [--md docs/...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_formats import perplexity, wiki_ids  # bench/ is not a package

ROUNDING = {"fp8_e4m3": (torch.float8_e4m3fn, 448.0), "sym_int8": (torch.int8, 127.0)}


class Projection(torch.nn.Module):
    """y = x @ W^T as the GPU paths compute it: W the 8-bit weight dequantized; x in bf16, and with `per_token`
    each row rounded to the weight's 8-bit type at scale absmax / qmax (the quantizer's rule)."""

    def __init__(self, dense: torch.Tensor, bias: torch.Tensor | None, fmt: str, per_token: bool) -> None:
        super().__init__()
        from xpullm.formats import get_format

        codec = get_format(fmt)
        self.weight = torch.nn.Parameter(codec.dequantize(codec.quantize(dense, 0)), False)
        self.bias = bias
        self.fmt, self.per_token = fmt, per_token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.bfloat16).float()
        if self.per_token:
            dtype, qmax = ROUNDING[self.fmt]
            scale = torch.clamp(xf.abs().amax(-1, keepdim=True), min=1e-20) / qmax
            v = xf / scale
            q = torch.clamp(torch.floor(v + 0.5), -qmax, qmax) if dtype == torch.int8 else v.to(dtype).float()
            xf = q * scale
        y = xf @ self.weight.t()
        return y if self.bias is None else y + self.bias


def swap(model: torch.nn.Module, fmt: str, per_token: bool) -> None:
    from xpullm.linear import LowBitLinear

    for layer in model.model.layers:
        for name, child in list(layer.named_modules()):
            if isinstance(child, LowBitLinear):
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                dense = child.dequantize(torch.float32)
                setattr(parent, name.rpartition(".")[2], Projection(dense, child.bias, fmt, per_token))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--md", default=None, help="also write the table here")
    args = ap.parse_args()
    import transformers

    import xpullm
    from xpullm.models import default_llm_gguf, default_llm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_llm_path())
    ids = wiki_ids(tokenizer, args.tokens)
    rows = ["| weights | activations | perplexity | vs fp32 |", "|---|---|---:|---:|"]
    base = None
    for fmt, per_token in [(None, False), ("fp8_e4m3", False), ("fp8_e4m3", True), ("sym_int8", False),
                           ("sym_int8", True)]:  # fmt: skip
        model = xpullm.AutoModelForCausalLM.from_pretrained(
            default_llm_gguf(), load_in_low_bit="fp32", device="cpu", progress=False
        ).eval()
        if fmt:
            swap(model, fmt, per_token)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ppl = perplexity(model, ids, args.window)
        base = base or ppl
        acts = "fp32" if fmt is None else (f"{fmt} per token (w8a8)" if per_token else "bf16 (weight-only)")
        rows.append(f"| {fmt or 'fp32'} | {acts} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    text = (
        f"Perplexity of the packaged model (SmolLM2-135M), {ids.numel()} tokens of exllamav2's `wiki.utf8`, "
        f"windows of {args.window}; every decoder projection as the GPU path computes it (`bench/w8a8_quality.py`)."
        "\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
