"""The Models & speed tab: weight memory, load time, decode speed and perplexity per low-bit format of the current
model, as a table and a chart.

Public API endpoint: `/measure` (formats) -> the results table.
"""

from __future__ import annotations

import gc
from typing import Any

import gradio as gr

from xpullm.apps.demo.context import EXCLUSIVE_QUEUE, DemoContext
from xpullm.apps.demo.errors import UserFacingError, friendly
from xpullm.apps.demo.models import ModelSpec, load

__all__ = ["build_models_tab", "measure_format"]

HEADERS = ["format", "memory_mib", "load_s", "first_token_s", "decode_tok_s", "perplexity"]
PROMPT = "Write a short paragraph about the history of the printing press."


def _wiki_text(chars: int = 20000) -> str:
    from xpullm.apps.demo.samples import sample_articles

    _, articles = sample_articles(40)
    return "\n\n".join(a.text for a in articles)[:chars]


def measure_format(ctx: DemoContext, fmt: str, text: str) -> dict[str, Any]:
    """Load the current model in `fmt` (or reuse it when already loaded that way) and measure it."""
    from xpullm.cli.ppl import perplexity

    current = ctx.models.get()
    spec = ModelSpec(current.spec.model, fmt, current.spec.device)
    loaded = current if spec == current.spec else load(spec)
    llm = loaded.llm
    try:
        messages = [{"role": "user", "content": PROMPT}]
        llm.chat(messages, max_new_tokens=2)  # warm-up: cache allocation and first-call kernel setup
        c = llm.chat(messages, max_new_tokens=ctx.config.bench_new_tokens)
        ppl, _ = perplexity(llm.model, llm.tokenizer, text, window=256, max_tokens=ctx.config.ppl_tokens)
        return {
            "format": fmt,
            "memory_mib": round(loaded.nbytes / 2**20, 1),
            "load_s": None if loaded.load_s is None else round(loaded.load_s, 2),
            "first_token_s": round(c.first_token_s, 3),
            "decode_tok_s": round(c.decode_tok_s, 1),
            "perplexity": round(ppl, 2),
        }
    finally:
        if loaded is not current:
            del llm, loaded
            gc.collect()


def current_model_markdown(ctx: DemoContext) -> str:
    """Facts about the loaded chat model."""
    c = ctx.models.current
    if c is None:
        return "The chat model is still loading; its facts appear here when it is ready."
    return (
        f"| model | format | device | decoder | weights | load time |\n|---|---|---|---|---|---|\n"
        f"| {c.spec.label.rsplit(' (', 1)[0]} | {c.spec.low_bit} | {c.device} | {c.decoder} | "
        f"{c.nbytes / 2**20:.1f} MiB | {'n/a' if c.load_s is None else f'{c.load_s:.1f} s'} |"
    )


def build_models_tab(ctx: DemoContext) -> dict[str, Any]:
    """Lay out the Models & speed tab and wire its events."""
    import xpullm

    results: dict[str, dict[str, Any]] = {}
    info = gr.Markdown(current_model_markdown(ctx), elem_id="models-current")
    gr.Markdown(
        "Each format re-loads the current model quantized that way, generates "
        f"{ctx.config.bench_new_tokens} tokens (greedy) and scores {ctx.config.ppl_tokens} tokens of Wikipedia "
        "text. The packaged checkpoint is already Q4_1 (asym_int4): other formats are re-quantized from it."
    )
    formats = gr.CheckboxGroup(
        xpullm.list_formats(),
        value=[ctx.config.low_bit],
        label="Formats to measure",
        elem_id="models-formats",
    )
    run = gr.Button("Measure", variant="primary", elem_id="models-measure")
    status = gr.Markdown("", elem_id="models-status")
    table = gr.Dataframe(
        headers=HEADERS, label="Results", interactive=False, elem_id="models-table", elem_classes=["xp-table"]
    )
    chart = gr.HTML("", elem_id="models-chart")

    def on_measure(chosen: list[str] | None, progress=gr.Progress()):
        try:
            if not chosen:
                raise UserFacingError("pick at least one format to measure")
            text = _wiki_text()
            with ctx.slots.enter() as turn:  # measuring generates: it takes a slot like an answer
                for _line in turn.waiting():
                    progress(0.0, desc="waiting for a free generation slot")
                for i, fmt in enumerate(chosen):
                    progress(i / len(chosen), desc=f"measuring {fmt} ({i + 1}/{len(chosen)})")
                    results[fmt] = measure_format(ctx, fmt, text)
            rows = [[r[h] for h in HEADERS] for r in results.values()]
            from xpullm.apps.demo.plots import plot_iframe, speed_figure

            html = plot_iframe(speed_figure(list(results.values())), height=380, title="speed per format")
            return rows, f"Measured {', '.join(chosen)}", html, current_model_markdown(ctx)
        except Exception as exc:
            return gr.update(), f"Error: {friendly(exc)}", gr.update(), current_model_markdown(ctx)

    run.click(
        on_measure,
        formats,
        [table, status, chart, info],
        api_name="measure",
        concurrency_id=EXCLUSIVE_QUEUE,
        concurrency_limit=1,
        show_progress_on=[status],  # one progress bar, under the button (not one per output)
    )
    refresh = gr.Button("Refresh model info", size="sm")
    refresh.click(lambda: current_model_markdown(ctx), None, info, queue=False, api_visibility="private")
    return {"info": info, "page_load": (lambda: current_model_markdown(ctx), None, [info])}
