#!/usr/bin/env bash
# Build the wheel, install it into a clean venv (no editable paths) and import every module it ships.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONSAFEPATH=1  # the checkout's kernels/ must not shadow the PyPI package `kernels`
.venv/bin/python -P -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" . >/dev/null
python3 -m venv "$work/venv"
# The wheel's declared dependencies resolve here, held to the lock's versions (the ones the suite ran with).
uv=".venv/bin/uv pip install -q --python $work/venv/bin/python"
if [ -f /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl ]; then
  $uv --find-links /opt/wheels "torch==2.13.0+cpu"
else
  $uv torch==2.13.0
fi
$uv --constraint requirements/lock.txt "$(ls "$work"/dist/xpullm-*.whl)[rag,langchain,llamaindex,graphrag,demo,server,finetune]"
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
