#!/usr/bin/env bash
# Build the wheel, install it into a clean venv (no editable paths) and import every module it ships.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . >/dev/null
python3 -m venv "$work/venv"
pip="$work/venv/bin/python -m pip install -q --disable-pip-version-check"
$pip torch==2.13.0
$pip "$(ls "$work"/dist/xpullm-*.whl)[rag,langchain,llamaindex,graphrag,demo]"
cd "$work"  # away from the source tree, so only the installed wheel can be imported
"$work/venv/bin/python" - <<'PY'
import importlib, importlib.util, pkgutil, sys
import xpullm

assert "site-packages" in xpullm.__file__, xpullm.__file__
optional_backends = {"triton"}  # GPU-only backends: their modules need the [cuda]/[xpu] extra
names, skipped = [], []
for info in pkgutil.walk_packages(xpullm.__path__, "xpullm."):
    names.append(info.name)
for name in sorted(names):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name in optional_backends and importlib.util.find_spec(exc.name) is None:
            skipped.append(f"{name} (needs {exc.name})")
            continue
        raise
print(f"wheel check: imported {len(names) - len(skipped)} modules; skipped {len(skipped)}: {skipped}")
PY
