"""The demo app: one `gr.Blocks` with Chat, Knowledge base, GraphRAG and Models & speed tabs.

    from xpullm.apps.demo import DemoConfig, launch
    launch(DemoConfig(), host="127.0.0.1", port=7860)

The page is served at once; the chat model loads in a background thread and the status line at the top follows it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from xpullm.apps.demo.config import DemoConfig
from xpullm.apps.demo.context import DemoContext
from xpullm.apps.demo.theme import CSS, theme

if TYPE_CHECKING:
    from xpullm.engine import LLM
    from xpullm.protocols import EmbeddingModel

__all__ = ["build_demo", "launch"]

# Gradio phones home for analytics and version checks; the demo is meant to run offline and must not stall on it.
_OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


def build_demo(
    config: DemoConfig | None = None, *, llm: LLM | None = None, embedder: EmbeddingModel | None = None
) -> Any:
    """Build the app (not launched). `llm` / `embedder`: already loaded engines to use instead of loading."""
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio as gr

    from xpullm.apps.demo.chat_tab import build_chat_tab
    from xpullm.apps.demo.graphrag_tab import build_graphrag_tab
    from xpullm.apps.demo.kb_tab import build_kb_tab
    from xpullm.apps.demo.models_tab import build_models_tab

    config = config or DemoConfig()
    ctx = DemoContext.create(config, llm=llm, embedder=embedder)
    with gr.Blocks(title="xpullm demo", analytics_enabled=False) as demo:
        gr.Markdown(
            "# xpullm\nlow-bit LLMs on your own machine: chat, ask your documents, explore a knowledge graph, "
            "compare formats",
            elem_id="app-header",
        )
        status = gr.Markdown(ctx.models.status(), elem_id="model-status")
        tabs = {}
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                tabs["chat"] = build_chat_tab(ctx)
            with gr.Tab("Knowledge base", id="kb", elem_id="tab-kb"):
                tabs["kb"] = build_kb_tab(ctx)
            with gr.Tab("GraphRAG", id="graphrag", elem_id="tab-graphrag"):
                tabs["graphrag"] = build_graphrag_tab(ctx)
            with gr.Tab("Models & speed", id="models", elem_id="tab-models"):
                tabs["models"] = build_models_tab(ctx)
        timer = gr.Timer(2.0)
        timer.tick(
            ctx.models.status, None, status, queue=False, api_visibility="private", show_progress="hidden"
        )
        demo.load(ctx.models.status, None, status, queue=False, api_visibility="private")
        # Each tab refreshes what may have changed since the page was built (stored chats, new bases, projects).
        for built in tabs.values():
            if "page_load" in built:
                fn, inputs, outputs = built["page_load"]
                demo.load(fn, inputs, outputs, queue=False, api_visibility="private", show_progress="hidden")
    demo.queue(default_concurrency_limit=1, max_size=64)
    demo.xpullm_context = ctx  # tests and embedding apps reach the shared state through this
    if config.preload:
        ctx.models.start_background_load()
    return demo


def launch(
    config: DemoConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    open_browser: bool = False,
    block: bool = True,
    quiet: bool = False,
    llm: LLM | None = None,
    embedder: EmbeddingModel | None = None,
) -> tuple[Any, str]:
    """Build and serve the app; returns (demo, local URL). `block=False` returns while the server keeps running."""
    config = config or DemoConfig()
    demo = build_demo(config, llm=llm, embedder=embedder)
    _, url, share_url = demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=open_browser,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        max_file_size=f"{config.max_upload_mb}mb",
        allowed_paths=[str(config.data_dir)],
        footer_links=["api"],
        css=CSS,
        theme=theme(),
    )
    if not quiet:
        print(f"xpullm demo running at {url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
    if block:
        demo.block_thread()
    return demo, url
