#!/usr/bin/env bash
# One device call: the engine (bench/engine_gpu.py, CUDA graphs) under two settings on one machine, alternating
# rounds, so that a change is judged where it matters - whole decode steps - and not in isolated layer timings
# (session 24: LM-head records that timed 0.9x alone cost sym_int4 3-7% in the engine). A and B are environment
# assignments ("" for none), e.g. a candidate tuning table against the shipped one:
#
#   OUT=... A="XPULLM_TRITON_TUNED=$PWD/cand.json" B="" FORMATS=sym_int4:128,asym_int4:128 STREAMS=8,16,32 \
#     ROUNDS=2 bash bench/engine_ab_session.sh
#
# A_TREE / B_TREE (default .): the source tree each variant runs, e.g. an older revision unpacked beside this one to
# judge an engine change (`git archive REV sdk kernels bench integrations graphrag apps | tar x -C bench/out/old`,
# carried with the call); both share this tree's kernel caches.
#
# A_ARGS / B_ARGS: more engine_gpu.py arguments for one variant, e.g. launch-ahead on against off in one tree:
#
#   OUT=... A_ARGS="--launch-ahead off" B_ARGS="--launch-ahead on" FORMATS=sym_int4:128,bf16 STREAMS=1,16,32 \
#     bash bench/engine_ab_session.sh
#
# Rows go to $OUT/ab.jsonl with "variant" (A / B) and "round"; a table of medians and B / A ratios is printed.
# Carry bench/out/pydeps and, to skip the ~80 s build, .cache/xpullm/cuda built for the current source.
set -u
export XPULLM_CACHE=${XPULLM_CACHE:-$PWD/.cache/xpullm} XPULLM_TRITON_AUTOTUNE=0
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.cache/triton}  # shared by both trees
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
A=${A:-}
B=${B:-}
FORMATS=${FORMATS:-sym_int4:128}
STREAMS=${STREAMS:-8,16,32}
ROUNDS=${ROUNDS:-2}
SECS=${SECS:-120}
FIRST=${FIRST:-60}  # more seconds for the first run of all: it compiles the Triton kernels (then cached)
EXTRA=${EXTRA:-}  # more engine_gpu.py arguments (a dry run on a CPU: EXTRA="--shape tiny --device cpu")
A_TREE=${A_TREE:-.}
B_TREE=${B_TREE:-.}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
for r in $(seq "$ROUNDS"); do
  for v in A B; do
    rows="$OUT/$v.$r.jsonl"
    secs=$SECS
    [ "$r$v" = 1A ] && secs=$((SECS + FIRST))
    tree=${v}_TREE
    args=${v}_ARGS
    # shellcheck disable=SC2206  # EXTRA is words
    E=(bash "${!tree}/bench/gpu_run.sh" py "${!tree}/bench/engine_gpu.py" --streams "$STREAMS" --static-batches= --no-llm
       --formats "$FORMATS" $EXTRA ${!args:-})
    # shellcheck disable=SC2086  # the settings are words of NAME=VALUE
    env ${!v} timeout -k 5 "$secs" "${E[@]}" --out "$rows" >"$OUT/$v.$r.txt" 2>&1
    echo "== $v round $r rc=$?"
  done
done
python3 - "$OUT" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
rows = {}
with open(f"{out}/ab.jsonl", "w") as fh:
    for path in sorted(glob.glob(f"{out}/[AB].*.jsonl")):
        variant, rnd = path.rsplit("/", 1)[1].split(".")[:2]
        for line in open(path):
            r = json.loads(line)
            r.update(variant=variant, round=int(rnd))
            fh.write(json.dumps(r) + "\n")
            rows.setdefault((r["format"], r["streams"], variant), []).append(r["tok_s"])
print("| format | streams | A tok/s (median) | B tok/s (median) | B / A |")
print("|---|---:|---:|---:|---:|")
for fmt, streams in sorted({k[:2] for k in rows}):
    a, b = (statistics.median(rows.get((fmt, streams, v), [float("nan")])) for v in "AB")
    print(f"| {fmt} | {streams} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
PY
