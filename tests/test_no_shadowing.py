"""The checkout's top-level folders never shadow installed packages in a Python the project starts.

transformers imports the PyPI package `kernels`; a Python started with the repository root on sys.path would find
our `kernels/` folder instead and fail (`cannot import name 'CUDAProperties' from 'kernels'`). The Makefile, the
test suite's subprocesses, the bench scripts and the `xpullm` entry point all start Python without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = "import transformers.integrations.hub_kernels, kernels; print(kernels.__file__)"


def _assert_installed_kernels(out: str) -> None:
    path = Path(out.strip().splitlines()[-1])
    assert "site-packages" in path.parts, f"`kernels` resolved to {path}, not the installed package"
    assert ROOT / "kernels" not in path.parents


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_python_started_the_way_the_makefile_starts_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # the Makefile must set it itself
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "shadow-check", f"PY={sys.executable} -P"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    _assert_installed_kernels(proc.stdout)


def test_the_suites_subprocesses_started_in_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    _assert_installed_kernels(out)


def test_the_entry_point_needs_no_setting() -> None:
    """Console scripts put their own folder on sys.path, not the working directory."""
    script = Path(sys.executable).with_name("xpullm")
    if not script.exists():
        pytest.skip("xpullm is not installed as a console script in this environment")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = subprocess.run(
        [str(script), "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()


def _bench_scripts() -> list[Path]:
    # collect.py rewrites docs/benchmarks.md and rag_fragment.py is a module: neither has a --help to run.
    return sorted(p for p in (ROOT / "bench").glob("*.py") if "argparse" in p.read_text())


# Runs bench scripts' `--help` one after another in one Python started as `python -P bench/X.py` starts one: no
# repository root on sys.path, the script's own folder first (for its sibling imports). One process per half of
# the scripts pays torch's import twice instead of once per script (~50 scripts: 86 s -> ~15 s on 2 vCPU).
_HELP_RUNNER = """
import runpy, sys
bench = sys.argv[1]
sys.path.insert(0, bench)
for script in sys.argv[2:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(f"FAILED {script}: exit {exc.code}", file=sys.stderr)
    except BaseException as exc:
        print(f"FAILED {script}: {type(exc).__name__}: {exc}", file=sys.stderr)
"""


def test_every_bench_script_starts_from_the_repo_root() -> None:
    """`python -P bench/X.py --help` from the root: imports resolve (siblings included) and nothing is shadowed."""
    scripts = [str(s.relative_to(ROOT)) for s in _bench_scripts()]
    assert len(scripts) >= 8

    def run(part: list[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-P", "-c", _HELP_RUNNER, str(ROOT / "bench"), *part]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, [scripts[0::2], scripts[1::2]]))
    failed = [line for p in results for line in p.stderr.splitlines() if line.startswith("FAILED")]
    assert all(p.returncode == 0 for p in results), [p.stderr[-2000:] for p in results]
    assert not failed, failed
    assert sum(p.stdout.count("usage:") for p in results) == len(scripts)  # every script printed its help
