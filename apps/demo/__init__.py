"""The Gradio demo: `xpullm demo` (or `make demo`) serves it on http://127.0.0.1:7860 by default.

Importing this package does not import Gradio; `build_demo` and `launch` do.
"""

from xpullm.apps.demo.app import build_demo, launch
from xpullm.apps.demo.config import DemoConfig

__all__ = ["DemoConfig", "build_demo", "launch"]
