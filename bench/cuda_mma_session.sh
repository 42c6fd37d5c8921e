#!/usr/bin/env bash
# One device call for the CUDA C++ low-bit kernel (`cuda_mma`, issue 29), each step time-boxed and its results
# packed into $OUT/r.tgz as soon as it ends (a call cut short keeps what finished):
#   1. bench/gpu_cuda_diag.py: every format / group mode vs the twin at 2 / 9 / 33 rows        -> r/diag.txt
#   2. tests/kernels/test_cuda_mma.py (the GPU half)                                          -> r/tests.txt
#   3. if sym_int4 g128 is right in step 1: bench/gpu_narrow.py --pool cuda for FORMATS at NARROW_ROWS on the
#      Llama-3-8B layer shapes and the LM head, winners written as tuning records            -> r/narrow.txt, r/cuda.json
#   4. bench/engine_gpu.py: ENGINE_FORMAT with those records, without them, and bf16 (1 / 8 / 16 / 32 streams)
#                                                                                             -> r/eng_*.txt, r/*.jsonl
#   5. builds: bench/gpu_cuda_builds.py on the builds in $VARIANTS (default bench/out/variants/*.so.gz, the first
#      one the baseline; each built here from another source revision or with other flags), FORMATS x SHAPES x
#      BUILD_ROWS                                                                           -> r/builds.txt, r/builds.jsonl
#   6. profile: Nsight Compute (stall reasons and source counters included) on the launches PROFILE_CASES names
#      (NxK:ROWS:TILES:WARPS:SPLIT,..., of FORMATS' first format; bench/gpu_cuda_profile.py)  -> r/profile.txt
# STEPS: which of diag, tests, narrow, eng (the engine), builds, profile run (default the first four; the last four
# need sym_int4 g128 right in diag, or diag left out). NARROW_ROWS / NARROW_SECS / ENGINE_STREAMS: step 3's rows
# (8,16,32) and time box (200 s), step 4's stream counts (1,8,16,32). A second call tunes other formats:
# STEPS="narrow eng" FORMATS=nf4:32,fp8_e4m3
# Carry bench/out/pydeps (`bash bench/gpu_run.sh prepare`) and, to skip the ~80 s build, a .cache/xpullm/cuda
# built here for the current source (kernels/cuda/README.md, Building). LIMIT: seconds for all steps (default 580).
#
#   OUT=... LIMIT=580 bash bench/cuda_mma_session.sh
set -u
export XPULLM_CACHE=${XPULLM_CACHE:-$PWD/.cache/xpullm} XPULLM_TRITON_AUTOTUNE=0 XPULLM_CUDA_KERNELS=1
OUT=${OUT:-bench/out/gpu}
R=$OUT/r
mkdir -p "$R"
FORMATS=${FORMATS:-sym_int4:128}
ENGINE_FORMAT=${ENGINE_FORMAT:-sym_int4:128}
SHAPES=${SHAPES:-6144x4096,4096x4096,28672x4096,4096x14336,128256x4096}
LIMIT=${LIMIT:-580}
STEPS=" ${STEPS:-diag tests narrow eng} "
BUILD_ROWS=${BUILD_ROWS:-8,16,32,64}
PROFILE_CASES=${PROFILE_CASES:-}
NARROW_ROWS=${NARROW_ROWS:-8,16,32}
NARROW_SECS=${NARROW_SECS:-200}
ENGINE_STREAMS=${ENGINE_STREAMS:-1,8,16,32}
VARIANTS=${VARIANTS:-$(ls bench/out/variants/*.so.gz 2>/dev/null)}
T0=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - T0))); }
pack() { tar czf "$OUT/r.tgz" -C "$OUT" r 2>/dev/null; }
step() {  # step NAME SECONDS CMD...: at most SECONDS, and never past LIMIT
  local name=$1 secs=$2 l
  shift 2
  case "$STEPS" in *" ${name%%_*} "*) ;; *) return ;; esac
  l=$(left)
  if [ "$l" -lt 20 ]; then echo "skip $name (${l}s left)"; return; fi
  [ "$secs" -gt $((l - 10)) ] && secs=$((l - 10))
  local s
  s=$(date +%s)
  timeout -k 5 "$secs" "$@" >"$R/$name.txt" 2>&1
  echo "== $name rc=$? $(($(date +%s) - s))s"
  pack
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$R/env.txt" 2>&1
nvcc --version | tail -1 >>"$R/env.txt" 2>&1
cat "$R/env.txt"
step diag 90 bash bench/gpu_run.sh py bench/gpu_cuda_diag.py
[ -f "$R/diag.txt" ] && grep -v Warn "$R/diag.txt" | tail -36
step tests 200 bash bench/gpu_run.sh py -m pytest -c /dev/null --rootdir "$PWD" --import-mode=importlib \
  -p no:cacheprovider --noconftest -q -rs --durations=5 --maxfail=30 -k "not compiles" tests/kernels/test_cuda_mma.py
[ -f "$R/tests.txt" ] && tail -25 "$R/tests.txt"
ok=1
[[ "$STEPS" == *" diag "* ]] && ok=$(python3 - "$R/diag.txt" <<'PY'
import re, sys
errs = [float(m.group(1)) for line in open(sys.argv[1]) if line.startswith("sym_int4  g128")
        for m in [re.search(r"max_err_half_steps=\s*(\S+)", line)] if m]
print(int(len(errs) == 3 and max(errs) < 3))
PY
)
echo "sym_int4 g128 right: $ok"
if [ "$ok" = 1 ]; then
  var=()
  for v in $VARIANTS; do var+=(--variant "$(basename "$v" .so.gz)=$v"); done
  [ ${#var[@]} -gt 0 ] && step builds 400 bash bench/gpu_run.sh py bench/gpu_cuda_builds.py "${var[@]}" \
    --formats "$FORMATS" --shapes "$SHAPES" --rows "$BUILD_ROWS" --out "$R/builds.jsonl"
  [ -f "$R/builds.txt" ] && grep '^|' "$R/builds.txt"
  [ -n "$PROFILE_CASES" ] && step profile 240 ncu --clock-control none -k regex:lowbit_mma \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section SchedulerStats \
    --section WarpStateStats --section SourceCounters --section InstructionStats --section MemoryWorkloadAnalysis \
    bash bench/gpu_run.sh py bench/gpu_cuda_profile.py --fmt "${FORMATS%%,*}" --cases "$PROFILE_CASES"
  [ -f "$R/profile.txt" ] && grep -E "lowbit_mma_kernel<|Duration|DRAM Throughput|Issue Slots Busy" "$R/profile.txt"
  step narrow "$NARROW_SECS" bash bench/gpu_run.sh py bench/gpu_narrow.py --pool cuda --formats "$FORMATS" --rows "$NARROW_ROWS" \
    --shapes "$SHAPES" --keep 3 --rounds 3 --tuned "$R/cuda.json"
  [ -f "$R/narrow.txt" ] && tail -12 "$R/narrow.txt"
  eng=(bash bench/gpu_run.sh py bench/engine_gpu.py --streams "$ENGINE_STREAMS" --static-batches= --no-llm)
  secs=$((20 + 40 * $(echo "$ENGINE_FORMAT" | tr ',' '\n' | wc -l)))  # ~30 s a format
  [ -s "$R/cuda.json" ] && step eng_cuda "$secs" env XPULLM_TRITON_TUNED="$R/cuda.json" "${eng[@]}" \
    --formats "$ENGINE_FORMAT" --out "$R/engine_cuda.jsonl"
  step eng_table "$secs" "${eng[@]}" --formats "$ENGINE_FORMAT" --out "$R/engine.jsonl"
  step eng_bf16 90 "${eng[@]}" --formats bf16 --out "$R/engine.jsonl"
  cat "$R"/eng_*.txt 2>/dev/null | grep '^{' | cut -c1-220
fi
pack
echo "done in $(($(date +%s) - T0)) s"
