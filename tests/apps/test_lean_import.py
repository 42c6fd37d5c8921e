"""Importing the demo package or its CLI plug-in must not import Gradio (the `xpullm` CLI loads every plug-in)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_package_and_cli_do_not_import_gradio():
    code = (
        "import sys, xpullm.apps.demo, xpullm.apps.cli, xpullm.cli.main as m; m.build_parser();"
        "print(sorted(k for k in ('gradio', 'plotly', 'torch') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
