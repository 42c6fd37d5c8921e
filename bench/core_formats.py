"""Core benchmark: per format on this CPU - memory, load time, kernel time per layer shape, perplexity.

    python bench/core_formats.py [--ppl-tokens 16384] [--window 512] [--threads N] [--out docs/benchmarks-core.md]

The default model's checkpoint is already Q4_1, so "bf16" below is its dequantized copy, not an original
fp16 model: asym_int4 g32 reproduces the checkpoint exactly and every other format is a second rounding.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import xpullm
from xpullm.formats import get_format
from xpullm.kernels import select_kernel
from xpullm.models import default_llm_gguf, default_llm_path

FORMATS = ["bf16", "asym_int4", "sym_int4", "nf4", "fp4", "sym_int8", "fp8_e4m3", "fp8_e5m2"]
SHAPES = [
    (576, 576),
    (1536, 576),
    (576, 1536),
    (49152, 576),
    (4096, 4096),
]  # (N, K): SmolLM2 layers + 4k square


def _timeit(fn, repeat: int = 20) -> float:
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def kernel_table(rows: int) -> list[str]:
    lines = [
        f"| N x K | M | {' | '.join(FORMATS[1:])} | bf16 F.linear | fp32 F.linear |",
        "|---" * (len(FORMATS) + 3) + "|",
    ]
    for n, k in SHAPES:
        w = torch.randn(n, k) * 0.02
        for m in (1, rows):
            x = torch.randn(m, k, dtype=torch.bfloat16)
            cells = []
            for fmt in FORMATS[1:]:
                qw = get_format(fmt).quantize(w)
                kernel = select_kernel(qw, torch.device("cpu"))
                state = kernel.prepare(qw, torch.device("cpu"))
                run = lambda k=kernel, s=state, x=x: k.matmul(x, s)  # noqa: E731
                cells.append(f"{_timeit(run) * 1e3:.2f} ({kernel.name.replace('cpu_', '')})")
            wb, xf = w.bfloat16(), x.float()
            cells.append(f"{_timeit(lambda: F.linear(x, wb)) * 1e3:.2f}")  # noqa: B023
            cells.append(f"{_timeit(lambda: F.linear(xf, w)) * 1e3:.2f}")  # noqa: B023
            lines.append(f"| {n}x{k} | {m} | " + " | ".join(cells) + " |")
    return lines


def wiki_ids(tokenizer, tokens: int) -> torch.Tensor:
    spec = importlib.util.find_spec("exllamav2")
    path = (
        Path(next(iter(spec.submodule_search_locations))) / "conversion" / "standard_cal_data" / "wiki.utf8"
    )
    text = path.read_text(encoding="utf-8")
    return tokenizer(text[: tokens * 8], return_tensors="pt").input_ids[0, :tokens]


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, window: int) -> float:
    nll, count = 0.0, 0
    for start in range(0, ids.numel() - 1, window):
        chunk = ids[start : start + window + 1]
        if chunk.numel() < 2:
            break
        logits = model(chunk[None, :-1]).logits.float()[0]
        nll += F.cross_entropy(logits, chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    return float(torch.exp(torch.tensor(nll / count)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ppl-tokens", type=int, default=16384)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default="docs/benchmarks-core.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    folder = default_llm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = wiki_ids(tokenizer, args.ppl_tokens)
    gguf = default_llm_gguf()
    model_rows = [
        "| format | memory MB | x bf16 | load from GGUF s | reload low-bit s | perplexity |",
        "|---|---|---|---|---|---|",
    ]
    bf16_mb = None
    for fmt in FORMATS:
        t = time.perf_counter()
        model = xpullm.AutoModelForCausalLM.from_pretrained(
            gguf, load_in_low_bit=fmt, device="cpu", progress=False
        )
        gguf_s = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            model.save_low_bit(Path(tmp) / "m")
            t = time.perf_counter()
            model = xpullm.AutoModelForCausalLM.load_low_bit(Path(tmp) / "m")
            reload_s = time.perf_counter() - t
        mb = model.memory_footprint() / 1e6
        bf16_mb = bf16_mb or mb
        ppl = perplexity(model, ids, args.window)
        model_rows.append(
            f"| {fmt} | {mb:.1f} | {mb / bf16_mb:.2f} | {gguf_s:.1f} | {reload_s:.2f} | {ppl:.3f} |"
        )
        print(model_rows[-1], flush=True)
    kernels = kernel_table(128)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    cpu = (
        Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(": \t")
        if Path("/proc/cpuinfo").exists()
        else "?"
    )
    text = "\n".join([
        "## Core: formats on the default model (CPU)",
        "",
        f"Machine: {cpu}; {machine}. Written by `bench/core_formats.py`.",
        "The checkpoint is SmolLM2-135M-Instruct **Q4_1** GGUF: `bf16` is its dequantized copy and `asym_int4` (g32)",
        "reproduces it exactly; every other format rounds a second time. Perplexity: first "
        f"{ids.numel()} tokens of exllamav2's `wiki.utf8`, windows of {args.window}.",
        "",
        *model_rows,
        "",
        "Kernel time per call in ms (median), activations bf16; M = tokens in the call (1 = decode, 128 = prefill).",
        "The kernel that ran is in brackets; `reference` decodes the weight on every call.",
        "",
        *kernels,
        "",
    ])  # fmt: skip
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
