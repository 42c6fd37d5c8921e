"""Applications built on xpullm: `xpullm.apps.demo` is the Gradio demo (`xpullm demo`, `make demo`)."""
