"""What the `w8a8` / `w4a8` paths' activation rounding costs in perplexity (issue 29), on this CPU.

The packaged model (SmolLM2-135M, its Q4_1 GGUF dequantized to fp32: the baseline), every projection of its decoder layers replaced by the numbers a GPU
computes for 8-bit per-channel weights: weight-only (bf16 activations times the dequantized weight: the `mma` /
`mma_t` tiles) and `w8a8` (each activation row rounded to the weight's 8-bit type first: `kernels/triton/w8a8.py`'s
twin, which its GPU tests hold the cuBLAS path to). `--set w4a8`: sym_int4 g128 weights, weight-only against
`w4a8` (each row rounded to int8 per group of 128 elements: `kernels/triton/w4a8.py`) and against the batch-1
GEMV's int8 rows (`gemv_q8`: per block of 32, the default for one-row decode steps). `--set w8a8_t`: 8-bit
per-channel weights, weight-only against per-token rows and against the `w8a8_t` tiles' blocks
(`kernels/triton/w8a8_tile.py`: fp8 per 128, int8 per 64), with int8 per 128 / 32 for scale. Perplexity on exllamav2's
`wiki.utf8`.

    python -P bench/w8a8_quality.py [--set w8a8|w8a8_t|w4a8] [--tokens 8192] [--window 512] [--md docs/...]
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
# (weight format, group, activation rounding: None = bf16; "token" = per row to the weight's 8-bit type;
# an int = int8 per block of that many elements), per --set
SETS = {
    "w8a8": [
        ("fp8_e4m3", 0, None),
        ("fp8_e4m3", 0, "token"),
        ("sym_int8", 0, None),
        ("sym_int8", 0, "token"),
    ],
    "w8a8_t": [
        ("fp8_e4m3", 0, None),
        ("fp8_e4m3", 0, "token"),
        ("fp8_e4m3", 0, "w8a8_t"),
        ("sym_int8", 0, None),
        ("sym_int8", 0, "token"),
        ("sym_int8", 0, "w8a8_t"),
        ("sym_int8", 0, 128),
        ("sym_int8", 0, 32),
    ],
    "w4a8": [
        ("sym_int4", 128, None),
        ("sym_int4", 128, "w4a8"),
        ("sym_int4", 128, 128),
        ("sym_int4", 128, 64),
        ("sym_int4", 128, 32),
    ],
}


def _w4a8_rows(xf: torch.Tensor) -> torch.Tensor:
    """Rows rounded as `kernels/triton/w4a8.py`'s quantizer rounds them (its twin: a scale per half group of 64
    interleaved elements), back in element order."""
    from xpullm.kernels.triton import w4a8

    rows = xf.reshape(-1, xf.shape[-1])
    k = rows.shape[-1]
    kx = -(-k // w4a8.ACT_GROUP) * w4a8.ACT_GROUP
    q, s = w4a8.reference_quantize(rows, kx)
    v = (q.float().view(rows.shape[0], -1, 64) * s[:, :, None]).reshape(rows.shape[0], -1, w4a8.ACT_GROUP)
    out = torch.empty_like(v)
    out[:, :, w4a8._order(xf.device)] = v
    return out.reshape(rows.shape[0], kx)[:, :k].reshape(xf.shape)


def _w8a8_t_rows(xf: torch.Tensor, fmt: str) -> torch.Tensor:
    """Rows rounded as `kernels/triton/w8a8_tile.py`'s quantizer rounds them (its twin: fp8 per 128 elements,
    int8 per 64)."""
    from xpullm.kernels.triton import w8a8_tile

    rows = xf.reshape(-1, xf.shape[-1])
    k = rows.shape[-1]
    q, s = w8a8_tile.reference_quantize(rows, fmt)
    block = w8a8_tile.act_block(fmt)
    v = (q.view(rows.shape[0], -1, block) * s[:, :, None]).reshape(rows.shape[0], -1)
    return v[:, :k].reshape(xf.shape)


def _int8_blocks(xf: torch.Tensor, block: int) -> torch.Tensor:
    """Rows rounded to int8 per block of `block` elements (absmax / 127, ties to even), as the GPU quantizers do."""
    k = xf.shape[-1]
    pad = -k % block
    v = torch.nn.functional.pad(xf, (0, pad)).unflatten(-1, (-1, block))
    scale = v.abs().amax(-1, keepdim=True) / 127.0
    q = torch.round(v / torch.where(scale > 0, scale, 1.0)) * scale
    return q.flatten(-2)[..., :k]


class Projection(torch.nn.Module):
    """y = x @ W^T as the GPU paths compute it: W the low-bit weight dequantized; x in bf16, then rounded as
    `rounding` says (None: kept; "token": each row to the weight's 8-bit type at absmax / qmax; an int: int8 per
    block of that many elements)."""

    def __init__(
        self, dense: torch.Tensor, bias: torch.Tensor | None, fmt: str, group: int, rounding: str | int | None
    ) -> None:
        super().__init__()
        from xpullm.formats import get_format

        codec = get_format(fmt)
        self.weight = torch.nn.Parameter(codec.dequantize(codec.quantize(dense, group)), False)
        self.bias = bias
        self.fmt, self.rounding = fmt, rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.bfloat16).float()
        if self.rounding == "token":
            dtype, qmax = ROUNDING[self.fmt]
            scale = torch.clamp(xf.abs().amax(-1, keepdim=True), min=1e-20) / qmax
            v = xf / scale
            q = torch.clamp(torch.floor(v + 0.5), -qmax, qmax) if dtype == torch.int8 else v.to(dtype).float()
            xf = q * scale
        elif self.rounding == "w4a8":
            xf = _w4a8_rows(xf)
        elif self.rounding == "w8a8_t":
            xf = _w8a8_t_rows(xf, self.fmt)
        elif self.rounding is not None:
            xf = _int8_blocks(xf, self.rounding)
        y = xf @ self.weight.t()
        return y if self.bias is None else y + self.bias


def swap(model: torch.nn.Module, fmt: str, group: int, rounding: str | int | None) -> None:
    from xpullm.linear import LowBitLinear

    for layer in model.model.layers:
        for name, child in list(layer.named_modules()):
            if isinstance(child, LowBitLinear):
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                dense = child.dequantize(torch.float32)
                setattr(parent, name.rpartition(".")[2], Projection(dense, child.bias, fmt, group, rounding))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--md", default=None, help="also write the table here")
    ap.add_argument("--set", choices=sorted(SETS), default="w8a8", help="which paths' rounding to measure")
    args = ap.parse_args()
    import transformers

    import xpullm
    from xpullm.models import default_llm_gguf, default_llm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_llm_path())
    ids = wiki_ids(tokenizer, args.tokens)
    rows = ["| weights | activations | perplexity | vs fp32 |", "|---|---|---:|---:|"]
    base = None
    for fmt, group, rounding in [(None, 0, None), *SETS[args.set]]:
        model = xpullm.AutoModelForCausalLM.from_pretrained(
            default_llm_gguf(), load_in_low_bit="fp32", device="cpu", progress=False
        ).eval()
        if fmt:
            swap(model, fmt, group, rounding)
        t0 = time.perf_counter()
        with torch.inference_mode():
            ppl = perplexity(model, ids, args.window)
        base = base or ppl
        acts = {None: "bf16 (weight-only)", "token": f"{fmt} per token (w8a8)", "w4a8": "int8, a scale per 64 interleaved (w4a8)",
                "w8a8_t": f"{'fp8 per 128' if fmt == 'fp8_e4m3' else 'int8 per 64'} (w8a8_t)", 128: "int8 per 128", 64: "int8 per 64",
                32: "int8 per 32 (gemv_q8, one-row steps)"}[rounding] if fmt else "fp32"  # fmt: skip
        label = f"{fmt} g{group}" if group else fmt
        rows.append(f"| {label or 'fp32'} | {acts} | {ppl:.3f} | {100 * (ppl / base - 1):+.2f}% |")
        print(rows[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    text = (
        f"Perplexity of the packaged model (SmolLM2-135M), {ids.numel()} tokens of exllamav2's `wiki.utf8`, "
        f"windows of {args.window}; every decoder projection as the GPU path computes it (`bench/w8a8_quality.py --set {args.set}`)."
        "\n\n" + "\n".join(rows) + "\n"
    )
    print(text)
    if args.md:
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
