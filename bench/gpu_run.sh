#!/usr/bin/env bash
# Run the Triton kernel tests and the kernel benchmark on a GPU machine that has python3 with torch + triton
# but no xpullm install and no network. Results go under $OUT (default: bench/out/gpu).
#
#   bash bench/gpu_run.sh            # tests, then benchmark
#   bash bench/gpu_run.sh tests      # only the GPU kernel tests (~3-5 min, mostly Triton compiles; the CUDA C++
#                                    # kernel's too, which its tests switch on even under XPULLM_CUDA_KERNELS=0)
#   bash bench/gpu_run.sh py bench/gpu_cuda_diag.py  # the CUDA C++ kernel per format / group mode vs its twin
#   bash bench/gpu_run.sh bench      # only the benchmark        (~4-6 min on an H100)
#   bash bench/gpu_run.sh py SCRIPT [ARGS]  # any python script with the shim on PYTHONPATH (e.g. gpu_profile.py)
#   bash bench/gpu_run.sh prepare    # run HERE (dev machine): copy pure-python pytest, and platformdirs and gguf
#                                    # (which xpullm needs and the GPU image lacks) into bench/out/pydeps,
#                                    # to be carried to a GPU machine whose python3 lacks them
# Extra benchmark arguments may follow the mode, e.g. `bash bench/gpu_run.sh bench --formats sym_int4:128`.
set -euo pipefail
# Keep the working directory off sys.path: our top-level kernels/ would shadow the PyPI package `kernels`.
export PYTHONSAFEPATH=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-all}"
[ $# -gt 0 ] && shift
OUT="${OUT:-$ROOT/bench/out/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

if [ "$MODE" = prepare ]; then
  SITE="$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  DEST="$ROOT/bench/out/pydeps"
  rm -rf "$DEST" && mkdir -p "$DEST"
  for pkg in pytest _pytest pluggy iniconfig packaging pygments py.py platformdirs gguf; do
    [ -e "$SITE/$pkg" ] && cp -r "$SITE/$pkg" "$DEST/"
  done
  cp -r "$SITE"/gguf-*.dist-info "$DEST/"  # transformers checks gguf's installed version
  echo "pytest copied to $DEST (pass it in the device run's carry list)"
  exit 0
fi

# xpullm without installing it: a folder `xpullm` of symlinks mirroring setup.py's package-dir mapping.
SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/xpullm"
for entry in "$ROOT"/sdk/*; do ln -s "$entry" "$SHIM/xpullm/$(basename "$entry")"; done
for sub in kernels integrations graphrag apps; do
  [ -d "$ROOT/$sub" ] && ln -sfn "$ROOT/$sub" "$SHIM/xpullm/$sub"
done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$ROOT/bench/out/pydeps" ] && export PYTHONPATH="$PYTHONPATH:$ROOT/bench/out/pydeps"
# Compiled kernels persist between runs on the same (warm) machine: .cache/ is git-ignored.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$ROOT/.cache/triton}"
# Benchmarks and tests run on the packaged tables (and XPULLM_TRITON_TUNED), not on winners an earlier run timed.
export XPULLM_TRITON_TUNE_CACHE="${XPULLM_TRITON_TUNE_CACHE:-0}"
unset TRITON_INTERPRET

if [ "$MODE" = py ]; then
  exec "$PY" "$@"
fi

{
  echo "# environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || true
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
  "$PY" -c 'import xpullm.kernels.triton as t; print("xpullm triton kernels import ok:", t.__file__)'
} 2>&1 | tee "$OUT/env.txt"

status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
  if "$PY" -c 'import pytest' 2>/dev/null; then
    # -c /dev/null: ignore the dev-machine pytest config/plugins; --noconftest: only this file's fixtures.
    (cd "$ROOT" && "$PY" -m pytest -c /dev/null --rootdir "$ROOT" --import-mode=importlib -p no:cacheprovider \
      --noconftest -q -rs --durations=15 tests/kernels/test_triton_kernels.py \
      tests/kernels/test_triton_decode_ops.py tests/kernels/test_triton_attention.py \
      tests/kernels/test_triton_mma.py tests/kernels/test_cuda_mma.py) 2>&1 | tee "$OUT/tests.txt" \
      || status=1
  else
    echo "pytest is not importable by $PY: run 'bash bench/gpu_run.sh prepare' on the dev machine and carry" \
      "bench/out/pydeps" | tee "$OUT/tests.txt"
    status=1
  fi
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
  (cd "$ROOT" && "$PY" bench/gpu_kernels.py --out "$OUT/gpu_kernels.md" "$@") 2>&1 | tee "$OUT/bench.log" \
    || status=1
fi
exit $status
