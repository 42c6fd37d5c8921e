"""Suite-wide settings: offline hub, a per-run model cache, and the shared default-model fixtures."""

from __future__ import annotations

import os

# Every Python the suite starts (subprocess tests, `python -c`) keeps the working directory off sys.path: the
# checkout's top-level `kernels/` would otherwise shadow the PyPI package `kernels` that transformers imports.
os.environ["PYTHONSAFEPATH"] = "1"
# Tests never reach the network: hub look-ups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One cache for the whole run (and across runs on one machine): the GGUF is converted once.
os.environ.setdefault(
    "XPULLM_CACHE", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "xpullm")
)
