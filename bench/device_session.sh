#!/usr/bin/env bash
# The device calls for the GPU work of issues 20, 22, 23, 24 and 29 (~12 minutes in all: split with STAGES), everything packed into
# $OUT/all.tgz (the device returns at most 8 files) plus the short summaries beside it:
#   1. the host CPU's name and vector flags (AMX?)                                   -> cpu.txt
#   2. the batched kernels' GPU tests (tests/kernels/test_triton_mma.py, test_triton_w8a8.py, the dequantizer's in
#      test_triton_kernels.py: by default the selection of 2026-12-06) while the sweep's tiles compile; the engine
#      stage uses the batched tiles only if those tests pass                                                              -> mma/tests_mma.txt
#   3. bench/gpu_batched.py (stage `sweep`): sym_int4 (g128, g32), nf4 (g64, g128), fp8_e4m3, sym_int8, every `mma_t`
#      tile and `w8a8` at 8..64 rows beside bf16 cuBLAS (~9 minutes with stage `mma`: one call) -> mma/batched.md
#   3b. stage `prefill`: the same at 64..2048 rows, the crossover to dequantize + cuBLAS  -> mma/prefill.md
#   4. bench/engine_gpu_session.sh (engine tests, engine vs peer at 1/8/32/64 streams; ~4.5 minutes) -> engine/
#   4b. stage `splits`: the engine at 32- and 768-token prompts, paged attention split 16 ways vs unsplit
#       (XPULLM_PAGED_SPLITS=1)                                            -> engine/splits.jsonl, splits.md
#   4c. stage `attn`: the paged-attention GPU tests (twin at head size 128, splits, batch invariance; the decode
#       attention's), then bench/paged_gpu.py (per pool kind, context and batch: tiles, unsplit, the SDPA peer, the
#       read floor)                                                          -> attn/tests.txt, attn/paged_gpu.md
#   4d. stage `kv`: the engine at KV_PROMPT-token prompts (default 4096) with bf16, int8 and fp8 e4m3 pools
#                                                                            -> engine/kv.jsonl, kv.md
#   5. bench/spec_gpu.py: speculative decoding's verify / draft costs, modelled speed-up -> spec_gpu.md
#   6. the GPU training path's tests, then bench/finetune_gpu.py (nf4 QLoRA vs bf16 LoRA vs bitsandbytes nf4)
#                                                                                    -> finetune_tests.txt, finetune_gpu.md
#   6b. stage `profile`: Nsight Compute on the tuner's tile for PROFILE_CASES (format@shape@rows) -> profile.txt
#       (PROFILE_KERNEL: the kernel-name regex, default mma_t; PROFILE_ARGS: more gpu_tile_profile.py arguments,
#       e.g. --config with a LaunchConfig as JSON without spaces)
#   7. on an Intel host CPU: native CPU kernel tests (AMX hardware vs its C model included) and the AMX prefill
#      table of bench/cpu_kernels.py at 1 / 2 threads (~3 min; CPU_FULL=1 adds the decode/M=128 table) -> cpu/
#
#   OUT=... bash bench/device_session.sh
#   STAGES="mma engine spec" OUT=... bash bench/device_session.sh   # a subset (the default runs all, in order:
#                                   mma sweep engine spec finetune cpu); knobs: *_S time limits, SPEC_FORMATS,
#                                   WARM_FORMATS (space-separated), SWEEP_FORMATS, SWEEP_ROWS, SWEEP_PATHS, FT_VARIANTS
# Carry: bench/out/pydeps (`bash bench/gpu_run.sh prepare`), bench/out/gpu_peer_decode.py (a copy of
# ../shared/bench/gpu_peer_decode.py) and bench/out/bnb (bitsandbytes unpacked, its cuda130 library only).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-bench/out/device}"
STAGES="${STAGES:-mma sweep engine spec finetune cpu}"
W="$(mktemp -d)"
mkdir -p "$OUT" "$W/mma" "$W/engine" "$W/cpu"
P="${P_OVERRIDE:-bash bench/gpu_run.sh py}"
START=$(date +%s)
# Everything so far is packed after every step, so a call cut at its time limit still returns what it measured.
mark() { echo "$(date -u +%T) +$(($(date +%s) - START))s $*" >> "$W/steps.txt"; tar czf "$OUT/all.tgz" -C "$W" .; }
want() { [[ " $STAGES " == *" $1 "* ]]; }

{ lscpu | grep 'Model name'; lscpu | grep Flags | tr ' ' '\n' | grep -E 'amx|avx512_vnni|avx512_bf16|avx512_fp16' \
  | tr '\n' ' '; echo; nproc; } > "$W/cpu.txt" 2>&1
mark "start: $STAGES"

# An earlier sweep's --all lines (default: the 12 fastest candidates per format and row count of the H100 sweep of
# 2026-12-05 on the qkv shape, bench/results/mma_shortlist_h100.jsonl): time only the KEEP fastest of them, so every
# layer shape fits one call; DEEPEN: also its DEEPEN fastest one and two pipeline stages deeper (the table has
# no pair tile past 3 stages). SHORTLIST="" times every candidate.
SHORTLIST="${SHORTLIST-bench/results/mma_shortlist_h100.jsonl}"
SHORT=""
[ -n "$SHORTLIST" ] && [ -s "$SHORTLIST" ] && SHORT="--shortlist $SHORTLIST --keep ${KEEP:-8} --deepen ${DEEPEN:-2}"

# batched NAME LIMIT FORMATS ROWS PATHS [ARGS]: bench/gpu_batched.py's timed run -> mma/NAME.md (.log: its lines); a
# run cut at its limit still printed one line per shape, and its tables are built from those
batched() {
  local name=$1 limit=$2 formats=$3 rows=$4 paths=$5
  shift 5
  timeout "$limit" $P bench/gpu_batched.py --formats "$formats" --rows "$rows" --paths "$paths" --all $SHORT \
    --out "$W/mma/$name.md" "$@" > "$W/mma/$name.log" 2>&1
  [ -s "$W/mma/$name.md" ] || $P bench/gpu_batched.py --summarize "$W/mma/$name.log" --out "$W/mma/$name.md" \
    > /dev/null 2>&1
}

if want mma; then
  # fp8 w8a8 joins the tuner's candidates (opt-in for users: it rounds the activations); every tile family is
  # switched off again below if a test fails
  export XPULLM_TRITON_W8A8=fp8
  # MMA_TESTS: the test files (default: the tiles, the w8a8 path, the dequantizer); MMA_TESTS_K: -k filters, one
  # pytest process each, separated by ';' (they compile in parallel; default: the three groups that passed on an
  # H100 on 2026-12-06 - the joined pair dots; the in-kernel split sums and pair decodes; the per-group scale
  # loads (groups of 32 / 64), sym_int8 stored signed, the coalesced dequantizer and w8a8); MMA_TESTS_K="" runs
  # them all, ~6 minutes
  K="${MMA_TESTS_K-joined;split_sum or codebook_pair or bf16x2_pair;(tiles_match and (32 or 64 or sym_int8)) or dequant or w8a8 or buffer or declined or tuner or product or quantizer}"
  IFS=';' read -ra KS <<< "${K:-}"
  [ ${#KS[@]} -eq 0 ] && KS=("")
  for i in "${!KS[@]}"; do
    # SIGINT at the limit: pytest still prints the names of the failures so far (-rfE)
    timeout -s INT "${MMA_TESTS_S:-230}" $P -m pytest -c /dev/null --rootdir . --import-mode=importlib \
      -p no:cacheprovider --noconftest -v --tb=short -rfEs ${KS[$i]:+-k "${KS[$i]}"} \
      ${MMA_TESTS:-tests/kernels/test_triton_kernels.py tests/kernels/test_triton_w8a8.py tests/kernels/test_triton_mma.py} \
      > "$W/mma/tests_mma_$i.txt" 2>&1 &
  done
  for f in ${WARM_FORMATS:-sym_int4:128,sym_int4:32 nf4:64,nf4:128 fp8_e4m3,sym_int8}; do
    timeout "${WARM_S:-230}" $P bench/gpu_batched.py --warm-only --formats "$f" --rows "${SWEEP_ROWS:-8,16,32,64}" \
      --paths "${SWEEP_PATHS:-mma_t,w8a8}" $SHORT \
      > "$W/mma/warm_${f%%:*}.log" 2>&1 &
  done
  wait
  mark mma tests done
  ok=1
  for i in "${!KS[@]}"; do
    summary="$(grep -E '^=+ .* in [0-9.]+s' "$W/mma/tests_mma_$i.txt" | tail -1)"
    echo "tests ${KS[$i]:-all}: ${summary:-no summary}" >> "$W/mma/tests_mma.txt"
    [[ "$summary" == *passed* && "$summary" != *failed* && "$summary" != *error* ]] || ok=0
    grep -q KeyboardInterrupt "$W/mma/tests_mma_$i.txt" && ok=0
    grep -E '^(FAILED|ERROR)' "$W/mma/tests_mma_$i.txt" >> "$W/mma/tests_mma.txt"
  done
  if [ $ok = 1 ]; then
    mark "mma tests passed"
  else  # the engine stage must not run tiles that failed their tests
    export XPULLM_TRITON_MMA=0 XPULLM_TRITON_MORE_PAIRS=0 XPULLM_TRITON_FIXUP=0 XPULLM_TRITON_W8A8=off XPULLM_TRITON_W8A8_T=off
    mark "mma tests did not pass: XPULLM_TRITON_MMA=0"
  fi
fi

# The batched tiles per format and row count (before the engine, which then uses the winners).
if want sweep; then
  batched batched "${SWEEP_S:-150}" "${SWEEP_FORMATS:-sym_int4:128,sym_int4:32,nf4:64,nf4:128,fp8_e4m3,sym_int8}" \
    "${SWEEP_ROWS:-8,16,32,64}" "${SWEEP_PATHS:-mma_t,w8a8}" --tuned "$W/mma/tuned_batched.json"
  mark sweep done
  # the engine stage below starts from these measured tiles (the tuner would time them all at warm-up)
  [ -s "$W/mma/tuned_batched.json" ] && export XPULLM_TRITON_TUNED="$W/mma/tuned_batched.json"
fi

# The prefill crossover: the tiles against dequantize + cuBLAS and bf16 from 64 to 2048 rows (stage `prefill`).
if want prefill; then
  batched prefill "${PREFILL_S:-150}" "${PREFILL_FORMATS:-sym_int4:128,sym_int4:32,nf4:64,fp8_e4m3}" \
    "${PREFILL_ROWS:-64,128,256,512,1024,2048}" "${PREFILL_PATHS:-mma_t,w8a8}" --tuned "$W/mma/tuned_prefill.json"
  mark prefill done
fi

# Nsight Compute on the tuner's tile for a few (format, shape, rows) cases (stage `profile`): throughput against
# the memory and issue ceilings, occupancy, warp stall reasons -> profile.txt
if want profile; then
  for case in ${PROFILE_CASES:-sym_int4:128@28672x4096@16 nf4:64@28672x4096@16}; do
    IFS=@ read -r fmt shape rows <<< "$case"
    XPULLM_TRITON_AUTOTUNE=0 timeout "${PROFILE_S:-90}" ncu --clock-control none --section SpeedOfLight \
      --section Occupancy --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis \
      --section MemoryWorkloadAnalysis -k "regex:${PROFILE_KERNEL:-mma_t}" --launch-skip 2 --launch-count 1 \
      $P bench/gpu_tile_profile.py --profile --format "$fmt" --shape "$shape" --rows "$rows" ${PROFILE_ARGS:-} \
      >> "$W/profile.txt" 2>&1
    $P bench/gpu_tile_profile.py --format "$fmt" --shape "$shape" --rows "$rows" ${PROFILE_ARGS:-} >> "$W/profile.txt" 2>&1
  done
  mark profile done
fi

if want engine; then
  OUT="$W/engine" BUDGET_S="${ENGINE_S:-270}" bash bench/engine_gpu_session.sh
  mark engine done
fi

# The paged attention's context split (stage `splits`): the engine at short and long prompts with the default
# split count and with XPULLM_PAGED_SPLITS=1 (the unsplit kernel), interleaved by prompt, one process each.
if want splits; then
  for p in ${SPLIT_PROMPTS:-32 768}; do
    for sp in 16 1; do
      XPULLM_PAGED_SPLITS=$sp timeout "${SPLITS_S:-120}" $P bench/engine_gpu.py --formats "${SPLIT_FORMATS:-sym_int4:128}" \
        --streams "${SPLIT_STREAMS:-1,8,16}" --prompt "$p" --no-llm --static-batches "" \
        --out "$W/engine/splits.jsonl" > "$W/engine/splits_p${p}_s${sp}.log" 2>&1
    done
  done
  $P bench/engine_gpu.py --summarize "$W/engine/splits.jsonl" --md "$W/engine/splits.md" > /dev/null 2>&1
  mark splits done
fi

# The paged attention kernels alone (stage `attn`): their GPU tests, then the tile / split sweep beside the peer.
if want attn; then
  mkdir -p "$W/attn"
  timeout -s INT "${ATTN_TESTS_S:-200}" $P -m pytest -c /dev/null --rootdir . --import-mode=importlib \
    -p no:cacheprovider --noconftest -q --tb=short -rfEs \
    -k "${ATTN_TESTS_K:-split or invariant or dispatch or (twin and 128-16) or test_triton_attention}" \
    tests/kernels/test_triton_paged_attention.py tests/kernels/test_triton_attention.py > "$W/attn/tests.txt" 2>&1
  mark attn tests done
  timeout "${ATTN_S:-240}" $P bench/paged_gpu.py --batches "${ATTN_BATCHES:-1,16,64}" \
    --contexts "${ATTN_CONTEXTS:-512,4096}" --pools "${ATTN_POOLS:-auto,int8,fp8_e4m3}" \
    --tiles "${ATTN_TILES:-32x4,32x8,64x4,64x8}" --out "$W/attn/paged_gpu.jsonl" > "$W/attn/paged_gpu.md" 2>&1
  mark attn done
fi

# The engine over 8-bit KV pools at a long prompt (stage `kv`, issue 22): bf16 vs int8 vs fp8 e4m3 pools.
if want kv; then
  for kv in auto int8 fp8_e4m3; do
    timeout "${KV_S:-150}" $P bench/engine_gpu.py --formats "${KV_FORMATS:-sym_int4:128}" \
      --streams "${KV_STREAMS:-1,16}" --prompt "${KV_PROMPT:-4096}" --tokens "${KV_TOKENS:-64}" --no-llm \
      --static-batches "" --kv-cache-dtype "$kv" --out "$W/engine/kv.jsonl" > "$W/engine/kv_$kv.log" 2>&1
    mark "kv $kv done"
  done
  $P bench/engine_gpu.py --summarize "$W/engine/kv.jsonl" --md "$W/engine/kv.md" > /dev/null 2>&1
  mark kv done
fi

# 3. speculative decoding's costs on the GPU (issue 22): verified rows and layer-skipped drafts, modelled speed-up.
if want spec; then
  timeout "${SPEC_S:-90}" $P bench/spec_gpu.py --formats "${SPEC_FORMATS:-bf16,sym_int4:128,fp8_e4m3}" \
    --out "$W/spec_gpu.jsonl" --md "$W/spec_gpu.md" > "$W/spec_gpu.log" 2>&1
  [ -f "$W/spec_gpu.md" ] || $P bench/spec_gpu.py --summarize "$W/spec_gpu.jsonl" --md "$W/spec_gpu.md" \
    >> "$W/spec_gpu.log" 2>&1
  mark spec done
fi

if want finetune; then
  # The training path on the GPU first: export / row decode of the device layout, gradients against the dense twin.
  timeout "${FT_TESTS_S:-90}" $P -m pytest -c /dev/null --rootdir . --import-mode=importlib -p no:cacheprovider \
    --noconftest -q -rs tests/kernels/test_triton_kernels.py -k "export or dequantize or gpu_layer" \
    > "$W/finetune_tests.txt" 2>&1
  mark finetune tests done
  [ -d bench/out/bnb ] && export PYTHONPATH="$PWD/bench/out/bnb${PYTHONPATH:+:$PYTHONPATH}"
  # Untuned kernels (the tuner's timing of every training shape took the whole stage on 2026-12-05); each variant
  # under its own limit, its table row written as soon as it finishes.
  XPULLM_TRITON_AUTOTUNE=0 PYTHONUNBUFFERED=1 timeout "${FT_S:-300}" $P bench/finetune_gpu.py --steps 3 --warmup 1 \
    --variants "${FT_VARIANTS:-nf4,bf16,bf16-chunked,bnb-nf4}" --variant-timeout "${FT_VARIANT_S:-100}" --out "$W/finetune_gpu.md" > "$W/finetune.log" 2>&1
  mark finetune done
fi


# 6. The host's CPU (issue 23 wants Xeon figures; this machine's CPU may be one): the native kernels' twin tests on
#    every path it runs (avx2, avx512_vnni, amx, and the amx kernel over its C model: tests/kernels/test_cpu_amx.py
#    holds the model to the hardware), then the AMX prefill table: the integer formats and fp8_e4m3 on a Llama
#    square and the packaged model's MLP shapes at M = 1..256 on each path (amx as it dispatches, and its tiles
#    forced at M < 16: whether the threshold of 16 should move; fp8 on its opt-in bf16 tiles). CPU_FULL=1 adds
#    the decode / M=128 table with PyTorch's int4/int8 ops (oneDNN: AMX where the CPU has it) beside. Outputs
#    under cpu/ (and cpu_amx.md beside all.tgz).
if want cpu && grep -q GenuineIntel /proc/cpuinfo; then
  timeout "${CPU_TESTS_S:-100}" $P -m pytest -c /dev/null --rootdir . --import-mode=importlib -p no:cacheprovider \
    --noconftest -q -rs tests/kernels/test_cpu_amx.py tests/kernels/test_cpu_fused_layer.py \
    tests/kernels/test_cpu_kernels.py > "$W/cpu/tests_cpu.txt" 2>&1
  $P -c 'from xpullm.cli.main import main; main(["info"])' > "$W/cpu/info.txt" 2>&1
  mark cpu tests done
  for t in 1 2; do
    timeout "${CPU_AMX_S:-60}" $P bench/cpu_kernels.py --threads $t --repeat 5 --rows 1,8,16,64,256 --amx-fp8 \
      --formats sym_int4,asym_int4,nf4,sym_int8,fp8_e4m3 --shapes 4096x4096,3072x576,576x1536 > "$W/cpu/amx_t$t.md" 2>&1
    mark cpu amx bench t$t done
  done
  if [ "${CPU_FULL:-0}" = 1 ]; then
    for t in 1 2; do
      timeout "${CPU_BENCH_S:-45}" $P bench/cpu_kernels.py --threads $t --repeat 7 \
        --kernels cpu_int4pack,cpu_int8pack > "$W/cpu/kernels_t$t.md" 2>&1
    done
  fi
  mark cpu done
fi

mark end
cp "$W/cpu.txt" "$W/steps.txt" "$OUT/"
[ -f "$W/cpu/amx_t1.md" ] && cat "$W/cpu/tests_cpu.txt" "$W/cpu/info.txt" "$W/cpu"/amx_t*.md > "$OUT/cpu_amx.md" 2>/dev/null
for f in engine/engine_gpu.md mma/batched.md mma/prefill.md finetune_gpu.md spec_gpu.md profile.txt; do
  [ -f "$W/$f" ] && cp "$W/$f" "$OUT/$(basename "$f")"
done
cat "$W/cpu.txt" "$W/steps.txt"
tail -4 "$W/cpu/tests_cpu.txt" 2>/dev/null; grep -h "native CPU" "$W/cpu/info.txt" 2>/dev/null
cat "$W/cpu/amx_t1.md" "$W/cpu/amx_t2.md" 2>/dev/null
cat "$W/mma/tests_mma.txt" 2>/dev/null; tail -3 "$W/engine/tests.txt" "$W/finetune_tests.txt" 2>/dev/null
cat "$W/engine/engine_gpu.md" "$W/spec_gpu.md" "$W/finetune_gpu.md" 2>/dev/null
tail -25 "$W/mma/batched.md" "$W/mma/prefill.md" 2>/dev/null
