#!/usr/bin/env bash
# One device call for the batched kernels (issue 29): kernel tests, the per-row-count sweep of the `mma` tiles
# (bench/gpu_batched.py, its compiles spread over the cores first), then end-to-end engine decode at batch
# 1..64 with the sweep's winners loaded (XPULLM_TRITON_TUNED). Everything lands in $OUT.
#   OUT=... bash bench/gpu_batched_session.sh [engine formats, default sym_int4:128,bf16,nf4:64] [batches]
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/out/gpu}"
mkdir -p "$OUT"
ENGINE="${1:-sym_int4:128,bf16,nf4:64}"
BATCHES="${2:-8,16,32,64}"
P="bash bench/gpu_run.sh py"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date; } \
  > "$OUT/env.txt" 2>&1
$P -m pytest -c /dev/null --rootdir . --import-mode=importlib -p no:cacheprovider --noconftest -q \
  tests/kernels/test_triton_mma.py > "$OUT/tests_mma.txt" 2>&1 &
for f in sym_int4:128 asym_int4:128 nf4:64 sym_int8 fp8_e4m3; do
  timeout "${WARM_S:-170}" $P bench/gpu_batched.py --warm-only --lm-head --formats "$f" > "$OUT/warm_${f%%:*}.log" 2>&1 &
done
wait
date >> "$OUT/env.txt"
timeout "${SWEEP_S:-200}" $P bench/gpu_batched.py --lm-head --out "$OUT/batched.md" --tuned "$OUT/tuned_batched.json" \
  > "$OUT/batched.log" 2>&1
date >> "$OUT/env.txt"
[ -s "$OUT/tuned_batched.json" ] && export XPULLM_TRITON_TUNED="$OUT/tuned_batched.json"
export XPULLM_TRITON_MMA=1  # the tuner times the mma tiles (opt-in until verified on a GPU)
timeout "${DECODE_S:-200}" $P bench/gpu_decode.py --peer gpu_peer_decode.py --formats "" --batches "$BATCHES" \
  --engine "$ENGINE" --no-engine-eager --no-eager --out "$OUT/decode.jsonl" > "$OUT/decode.log" 2>&1
date >> "$OUT/env.txt"
