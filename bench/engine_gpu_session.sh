#!/usr/bin/env bash
# One device call for the continuous-batching engine on a GPU (issue 20), everything into $OUT:
#   1. tests/engine/test_engine_gpu.py, sym_int4 and bf16 (untuned kernels: correctness only; TESTS_K="" for
#      sym_int8 too)                                                            -> tests.txt
#   2. bench/engine_gpu.py: sym_int4 g128 engine at 1/8/32/64 streams, then the
#      static decoder at batch 1 on the same model                             -> engine_int4.log
#   3. the peer (gpu_peer_decode.py) int4 tinygemm at the same batches (one process per batch, compiling at
#      once, timed one at a time)                                               -> peer_int4_<S>.log
#   4. bf16 engine + static decoder, 5. bf16 peer (two waves)                   -> engine_bf16.log, peer_bf16_<S>.log
#   then engine_gpu.md: the table (rows in engine_gpu.jsonl, one JSON line per measurement).
# Each stage runs under its own time limit, cut to what is left of BUDGET_S (default 480 s), so the call ends
# within ~8 minutes and keeps every row measured so far.
#
#   OUT=... bash bench/engine_gpu_session.sh
# Carry bench/out/pydeps (`bash bench/gpu_run.sh prepare`) and bench/out/gpu_peer_decode.py (a copy of
# ../shared/bench/gpu_peer_decode.py; PEER=path to use another place).
# Knobs: STREAMS (1,8,32,64), TOKENS (128), BUDGET_S, TESTS_S / INT4_S / PEER_INT4_S / BF16_S / PEER_BF16_S (per wave),
# BENCH_ARGS (extra bench arguments; a CPU dry run: BENCH_ARGS="--shape tiny --device cpu" PYTHON=.venv/bin/python).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/out/engine_gpu}"
mkdir -p "$OUT"
BUDGET_S="${BUDGET_S:-480}"
STREAMS="${STREAMS:-1,8,32,64}"
TOKENS="${TOKENS:-128}"
PEER="${PEER:-bench/out/gpu_peer_decode.py}"
ROWS="$OUT/engine_gpu.jsonl"
P="bash bench/gpu_run.sh py"
B="$P bench/engine_gpu.py ${BENCH_ARGS:-}"
START=$(date +%s)

# The smaller of a stage's own limit and what is left of the budget (at least 1 s).
limit() {
  local want=$1 left=$((BUDGET_S - ($(date +%s) - START)))
  [ "$left" -lt "$want" ] && want=$left
  [ "$want" -lt 1 ] && want=1
  echo "$want"
}
stage() {  # stage NAME SECONDS command...
  local name=$1 secs
  secs=$(limit "$2")
  shift 2
  echo "$(date -u +%T) $name (limit ${secs}s)" >> "$OUT/env.txt"
  timeout "$secs" "$@" > "$OUT/$name.log" 2>&1
  echo "exit $? after $(($(date +%s) - START))s" >> "$OUT/$name.log"
}

# peers NAME MODE SECONDS WAVE...: the peer at each stream count of a wave ("1,8,32,64") in its own process; a
# wave's processes compile at the same time and then time one after another (engine_gpu.py --peer-sync), so
# its torch.compile per batch size (~50 s each) is paid once per wave instead of once per stream count.
peers() {
  local name=$1 mode=$2 secs wave s n=0
  secs=$(limit "$3")
  shift 3
  echo "$(date -u +%T) $name (limit ${secs}s, waves $*)" >> "$OUT/env.txt"
  for wave in "$@"; do
    n=$((n + 1))
    rm -rf "$OUT/sync_${name}_$n"
    for s in ${wave//,/ }; do
      timeout "$secs" $B --stage peer --peer "$PEER" --peer-modes "$mode" --streams "$s" --tokens "$TOKENS" \
        --out "$ROWS" --peer-sync "$OUT/sync_${name}_$n:$(echo "${wave//,/ }" | wc -w)" > "$OUT/${name}_$s.log" 2>&1 &
    done
    wait
    secs=$(limit "$secs")
  done
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
  date -u; } > "$OUT/env.txt" 2>&1
[ -f "$PEER" ] || echo "no peer at $PEER: copy ../shared/bench/gpu_peer_decode.py there (peer stages skipped)" \
  >> "$OUT/env.txt"

XPULLM_TRITON_AUTOTUNE=0 stage tests "${TESTS_S:-150}" $P -m pytest -c /dev/null --rootdir . \
  --import-mode=importlib -p no:cacheprovider --noconftest -q -rs --durations=10 -k "${TESTS_K-not sym_int8}" \
  tests/engine/test_engine_gpu.py
cp "$OUT/tests.log" "$OUT/tests.txt"

stage engine_int4 "${INT4_S:-170}" $B --formats sym_int4:128 --streams "$STREAMS" \
  --tokens "$TOKENS" --out "$ROWS" --tuned-out "$OUT/tuned_engine_int4.json"
[ -f "$PEER" ] && peers peer_int4 int4 "${PEER_INT4_S:-150}" "$STREAMS"
stage engine_bf16 "${BF16_S:-70}" $B --formats bf16 --streams "$STREAMS" --tokens "$TOKENS" \
  --out "$ROWS"
# bf16: two waves of two processes (four 16 GB models and the 64-row KV cache do not fit one 80 GB card)
[ -f "$PEER" ] && peers peer_bf16 bf16 "${PEER_BF16_S:-150}" ${PEER_BF16_WAVES:-1,64 8,32}

[ -s "$ROWS" ] && $B --summarize "$ROWS" --md "$OUT/engine_gpu.md" > /dev/null 2>&1
echo "$(date -u +%T) done after $(($(date +%s) - START))s" >> "$OUT/env.txt"
exit 0
