#!/usr/bin/env bash
# One device call for issue 29's table: the engine per low-bit format at 1 / 8 / 16 / 32 / 64 streams beside bf16
# (cuBLAS) and the peer's tinygemm int4, on the shipped tuned tables (XPULLM_TRITON_AUTOTUNE=0: no tuning in the run),
# every step time-boxed; rows in $OUT/table.jsonl, the table in $OUT/table.md, both and the logs in $OUT/table.tgz.
# Carry bench/out/pydeps (`bash bench/gpu_run.sh prepare`), bench/out/gpu_peer_decode.py (a copy of
# ../shared/bench/gpu_peer_decode.py) and, to skip the ~80 s build, .cache/xpullm/cuda built here.
#
#   OUT=... [FORMATS=sym_int4:128,...] [STREAMS=1,8,16,32,64] [LIMIT=560] bash bench/engine_table_session.sh
set -u
export XPULLM_CACHE=${XPULLM_CACHE:-$PWD/.cache/xpullm} XPULLM_TRITON_AUTOTUNE=0
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
FORMATS=${FORMATS:-sym_int4:128,asym_int4:128,nf4,fp4,sym_int8,fp8_e4m3}
STREAMS=${STREAMS:-1,8,16,32,64}
LIMIT=${LIMIT:-560}
PEER=${PEER:-bench/out/gpu_peer_decode.py}
ROWS=$OUT/table.jsonl
T0=$(date +%s)
left() { echo $((LIMIT - ($(date +%s) - T0))); }
E=(bash bench/gpu_run.sh py bench/engine_gpu.py --streams "$STREAMS" --static-batches= --no-llm --out "$ROWS")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/env.txt" 2>&1
for fmt in bf16 ${FORMATS//,/ }; do  # one process per format, ~25-40 s each
  l=$(left)
  [ "$l" -lt 60 ] && { echo "skip $fmt (${l}s left)"; continue; }
  s=$(date +%s)
  timeout -k 5 $((l - 50 < 90 ? l - 50 : 90)) "${E[@]}" --formats "$fmt" >"$OUT/eng_${fmt%%:*}.txt" 2>&1
  echo "== $fmt rc=$? $(($(date +%s) - s))s"
done
l=$(left)
if [ -f "$PEER" ] && [ "$l" -gt 60 ]; then  # the peer's int4 at every stream count, compiled side by side
  rm -rf "$OUT/sync"
  n=$(echo "${STREAMS//,/ }" | wc -w)
  for s in ${STREAMS//,/ }; do
    timeout -k 5 $((l - 15)) bash bench/gpu_run.sh py bench/engine_gpu.py --stage peer --peer "$PEER" \
      --peer-modes int4 --streams "$s" --out "$ROWS" --peer-sync "$OUT/sync:$n" >"$OUT/peer_$s.txt" 2>&1 &
  done
  wait
  echo "== peer $(($(date +%s) - T0))s"
fi
bash bench/gpu_run.sh py bench/engine_gpu.py --summarize "$ROWS" --md "$OUT/table.md" 2>&1 | tail -30
# few files come back from a device call: the rows, the table and the logs in one archive
rm -rf "$OUT/sync"
tar czf "$OUT/table.tgz" -C "$OUT" --exclude table.tgz . 2>/dev/null
echo "done in $(($(date +%s) - T0)) s"
