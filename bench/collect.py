"""Assemble docs/benchmarks.md from the per-area fragments the benchmark scripts write.

python bench/collect.py
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
PARTS = [
    ("benchmarks-core.md", "Core: formats, memory, load time, kernels, perplexity (CPU)"),
    ("benchmarks-engine.md", "Engine: CPU decode speed against llama.cpp and transformers"),
    ("benchmarks-cpu-avx512.md", "CPU with AVX-512 VNNI: every format native, llama.cpp, IPEX-LLM"),
    ("benchmarks-rag.md", "Embeddings and knowledge bases"),
    ("benchmarks-graphrag.md", "GraphRAG indexing"),
    ("benchmarks-scaleout.md", "Scale-out: GraphRAG indexing on Ray workers, and a model of N machines"),
    ("benchmarks-batching.md", "Continuous batching: concurrent streams and prefix caching (CPU, GPU)"),
    (
        "benchmarks-speculative.md",
        "Speculative decoding: prompt lookup and self-speculative (CPU, GPU costs)",
    ),
    ("benchmarks-kvcache.md", "KV cache: 8-bit KV pools and streaming (CPU)"),
    (
        "benchmarks-quality.md",
        "Answer quality with the packaged model: GraphRAG and knowledge-base grounding",
    ),
    ("benchmarks-serve.md", "Serving: xpullm serve vs llama.cpp's server (OpenAI API, streamed)"),
    ("benchmarks-serve-load.md", "Serving under load: 32 streaming clients, 10% disconnecting"),
    ("benchmarks-gpu.md", "GPU kernels and decode (H200, H100)"),
    ("benchmarks-finetune.md", "Fine-tuning (QLoRA) on CPU"),
]

HEADER = """# Benchmarks

Every number here comes from a script under `bench/`; each section names its script, its machine and how to
rerun it. Comparisons are side by side in one run (ratios), never across machines. CPU numbers: the 2-core
AMD EPYC (Zen 3, AVX2, no AVX-512/AMX) VM this project was first developed on; the AVX-512 section names its own
2-vCPU machine (AMD EPYC Zen 5: AVX-512 VNNI/BF16, no AMX), as do the batching, quality, serving and fine-tuning
sections (measured on that machine while it was shared: read their ratios, not absolute speeds). GPU numbers: one NVIDIA H200
or H100 80GB HBM3 (each section names its card), torch 2.11+cu130, Triton 3.6, lent for the measurement; the AVX-512
section's Xeon figures come from that GPU machine's host CPU (an Intel Xeon with AMX).
"""


def main() -> None:
    out = [HEADER]
    for name, title in PARTS:
        path = DOCS / name
        out.append(f"\n---\n\n<!-- from {name} -->\n")
        if path.exists():
            out.append(path.read_text().strip() + "\n")
        else:
            out.append(f"## {title}\n\nNot measured yet (`{name}` missing).\n")
    (DOCS / "benchmarks.md").write_text("\n".join(out))
    print(f"wrote {DOCS / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
