"""The server stays optional: `import xpullm` and building the CLI parser import no FastAPI/uvicorn."""

from __future__ import annotations

import subprocess
import sys


def test_import_and_cli_parser_do_not_import_the_asgi_stack() -> None:
    code = (
        "import sys, xpullm; from xpullm.cli.main import build_parser; "
        "p = build_parser(); p.parse_args(['serve', '--port', '1']); "
        "print([m for m in ('fastapi', 'uvicorn', 'starlette', 'xpullm.server') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
