"""The demo's look: one Gradio theme (system fonts, so nothing is fetched) and the CSS for cards, tables and phones.

Design rules: one accent colour (indigo) for the primary action of each panel and red only for Stop / Delete;
panels are white cards on a light slate page; every table wraps its text and scrolls sideways on a phone instead
of cutting words; the header is one compact line.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CSS", "theme"]

_SANS = (
    "ui-sans-serif",
    "system-ui",
    "-apple-system",
    "Segoe UI",
    "Roboto",
    "Helvetica",
    "Arial",
    "sans-serif",
)
_MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


def theme() -> Any:
    """The Gradio theme of the demo (imported lazily: building it imports Gradio)."""
    import gradio as gr

    return gr.themes.Base(
        primary_hue="indigo",
        secondary_hue="slate",
        neutral_hue="slate",
        radius_size="md",
        spacing_size="md",
        text_size="md",
        font=_SANS,
        font_mono=_MONO,
    ).set(
        body_background_fill="#f4f6fb",
        block_background_fill="white",
        block_border_width="1px",
        block_border_color="#e2e6f0",
        block_shadow="0 1px 2px rgba(20, 30, 60, 0.05)",
        block_label_text_weight="600",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
        button_primary_text_color="white",
        button_cancel_background_fill="#dc2626",
        button_cancel_text_color="white",
        input_background_fill="#fbfcfe",
    )


CSS = """
.gradio-container { max-width: 1400px !important; margin: 0 auto; }
#app-header { display: flex; align-items: baseline; gap: 0.75rem; flex-wrap: wrap; padding: 0.25rem 0; }
#app-header h1 { font-size: 1.35rem; margin: 0; }
#app-header p { margin: 0; color: var(--body-text-color-subdued); }
#model-status { background: white; border: 1px solid #e2e6f0; border-radius: 8px; padding: 0.4rem 0.8rem; }
#model-status p { margin: 0; }
#chat-stats, #kb-status, #gr-progress, #models-status, #load-status {
    font-size: 0.9em; color: var(--body-text-color-subdued); min-height: 1.4em;
}
.xp-card { background: white; border: 1px solid #e2e6f0; border-radius: 10px; padding: 0.6rem !important; }
.xp-heading h4 { margin: 0.2rem 0 0; font-size: 0.95rem; text-transform: uppercase; letter-spacing: 0.04em;
                 color: var(--body-text-color-subdued); }
/* The conversation list reads as a list, not as radio buttons. */
.xp-list .wrap { flex-direction: column; gap: 2px !important; }
.xp-list label { width: 100%; border-radius: 6px !important; padding: 0.35rem 0.5rem !important; }
.xp-list label span { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.xp-list input[type=radio] { display: none; }
.xp-list label.selected { background: var(--primary-100) !important; color: var(--primary-800); }
/* Tables: whole words wrap inside their cell; wide tables scroll sideways instead of squeezing columns. */
.xp-table table { table-layout: auto; }
.xp-table td, .xp-table th, .xp-table [role=gridcell] { white-space: normal !important;
    word-break: normal !important; overflow-wrap: break-word; vertical-align: top; }
.xp-table .cell-wrap span { white-space: normal !important; font-family: var(--font); }
/* Buttons beside inputs keep a button's height instead of stretching to the row. */
.xp-inline-button { align-self: end; max-height: 48px; }
.xp-stages table { width: 100%; }
/* A wide table scrolls inside its box; the page itself never scrolls sideways. */
.prose table { display: block; max-width: 100%; overflow-x: auto; }
.tabitem, .tabitem .column, .tabitem .block { min-width: 0 !important; max-width: 100%; }
.xp-table { contain: inline-size; overflow-x: auto; }  /* its columns never widen the page */
.xp-plot, .xpullm-plot { background: white; border-radius: 8px; }
#chat-buttons button { flex: 1 1 auto; }
#chat-stop:disabled, #chat-stop[disabled] { background: #e5e7eb !important; color: #9ca3af !important;
                                            border-color: #e5e7eb !important; }
@media (max-width: 720px) {
    .gradio-container { padding: 0 6px !important; }
    #app-header p { display: none; }
    #chatbot { height: 360px !important; }
}
"""
