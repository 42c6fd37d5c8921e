#!/usr/bin/env bash
# One device call on what a batched engine step spends besides its projections (issue 29): each part time-boxed,
# results in $OUT/step.tgz.
#   1. paged: bench/paged_gpu.py at $PAGED_BATCHES sequences x $PAGED_CONTEXTS columns over a block table 8192
#      columns wide (as the engine's: 16 splits at any context) - this tree's kernel with the $PAGED_TILES variants
#      and one split, then the old tree's default in the same call (paged_old.txt).
#   2. ab: the engine (sym_int4 g128 at 1 / 16 / 32 streams) from an older source tree ($OLD) against this one,
#      alternating rounds (bench/engine_ab_session.sh with A_TREE). Make the old tree here first and carry it:
#        rm -rf bench/out/old && mkdir -p bench/out/old && \
#          git archive REV sdk kernels bench integrations graphrag apps | tar x -C bench/out/old
#   3. tests: tests/engine/test_engine_gpu.py and the paged attention twin tests on the GPU.
#   4. profile: bench/gpu_profile.py --runner at 32-token prompts, 16 / 32 sequences, XPULLM_PDL=0: the step's
#      kernels one by one.
# Carry bench/out/pydeps (`bash bench/gpu_run.sh prepare`), .cache/xpullm/cuda built here, $OLD.
#
#   OUT=... [STEPS="ab tests paged profile"] [LIMIT=570] [OLD=bench/out/old] bash bench/step_session.sh
set -u
export XPULLM_CACHE=${XPULLM_CACHE:-$PWD/.cache/xpullm} XPULLM_TRITON_AUTOTUNE=0
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.cache/triton}
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
STEPS=" ${STEPS:-ab tests paged profile} "
LIMIT=${LIMIT:-570}
OLD=${OLD:-bench/out/old}
PAGED_BATCHES=${PAGED_BATCHES:-16,32} PAGED_CONTEXTS=${PAGED_CONTEXTS:-72,544}
PAGED_TILES=${PAGED_TILES:-32x4x0x0,64x4x0x0x1,64x4x0x0x2}
T0=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - T0))); }
pack() { tar czf "$OUT/step.tgz" -C "$OUT" --exclude step.tgz . 2>/dev/null; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/env.txt"
if [[ $STEPS == *" paged "* ]] && [ "$(left)" -gt 60 ]; then
  timeout -k 5 $(($(left) < 200 ? $(left) : 200)) bash bench/gpu_run.sh py bench/paged_gpu.py \
    --batches "$PAGED_BATCHES" --contexts "$PAGED_CONTEXTS" --pools auto --tiles "$PAGED_TILES" --splits 1 \
    --table-columns 8192 --rounds 3 --out "$OUT/paged.jsonl" >"$OUT/paged.txt" 2>&1
  if [ -f "$OLD/bench/paged_gpu.py" ]; then
    PYTHONPATH=$PWD/bench/out/pydeps timeout -k 5 $(($(left) < 120 ? $(left) : 120)) bash "$OLD/bench/gpu_run.sh" \
      py "$OLD/bench/paged_gpu.py" --batches "$PAGED_BATCHES" --contexts "$PAGED_CONTEXTS" --pools auto --tiles "" \
      --splits "" --table-columns 8192 --rounds 3 >"$OUT/paged_old.txt" 2>&1
    grep "^| auto" "$OUT/paged_old.txt" | sed 's/^/old /'
  fi
  echo "== paged rc=$? $(($(date +%s) - T0)) s"
  grep "^| auto" "$OUT/paged.txt"
  pack
fi
if [[ $STEPS == *" ab "* ]]; then
  if [ -d "$OLD/sdk" ]; then
    SECS=75 FIRST=60 OUT=$OUT/ab A_TREE=$OLD FORMATS=sym_int4:128 STREAMS=1,16,32 ROUNDS=2 \
      bash bench/engine_ab_session.sh 2>&1 | tail -8
  else
    echo "ab: no $OLD (see the header)"
  fi
  echo "== ab $(($(date +%s) - T0)) s"
  pack
fi
if [[ $STEPS == *" tests "* ]]; then
  timeout -k 5 $(($(left) < 150 ? $(left) : 150)) bash bench/gpu_run.sh py -m pytest -c /dev/null --rootdir "$PWD" \
    --import-mode=importlib -p no:cacheprovider --noconftest -q \
    tests/engine/test_engine_gpu.py tests/kernels/test_triton_paged_attention.py tests/kernels/test_paged_window.py >"$OUT/tests.txt" 2>&1
  echo "== tests rc=$? $(($(date +%s) - T0)) s: $(tail -1 "$OUT/tests.txt")"
  pack
fi
if [[ $STEPS == *" profile "* ]] && [ "$(left)" -gt 60 ]; then
  XPULLM_PDL=0 timeout -k 5 $(($(left) - 5)) bash bench/gpu_run.sh py bench/gpu_profile.py --runner \
    --formats sym_int4:128 --batch 16,32 --prompt 32 --top 24 --out "$OUT/profile.md" >"$OUT/profile.log" 2>&1
  echo "== profile rc=$? $(($(date +%s) - T0)) s"
  grep -E "^###|^step" "$OUT/profile.log"
  pack
fi
echo "done in $(($(date +%s) - T0)) s"
