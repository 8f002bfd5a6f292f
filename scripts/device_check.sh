#!/usr/bin/env bash
# One call on the GPU machine: GPU tests, compute-sanitizer over them, benchmarks,
# the PyTorch cross-check and speed anchor, and the demo on the GPU. Logs and raw
# results go under $OUT (default ./out); a short summary is printed last.
#
# Build first (same nvcc 13.0 on both machines) and copy the archive of staged programs:
#   scripts/device_build.sh                       # -> build-carry/stage.tar.xz
#   on the GPU machine, in a copy of the tree that holds build-carry/:
#     OUT=<dir> scripts/device_check.sh [full|quick]
# `quick` skips the benchmarks and the torch speed anchor. $OUT receives logs.tar.gz (every
# log of the run), summary.txt and the raw JSON results.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=${KVQ_STAGE_DIR:-$root/build-stage}
if [ -f "$root/build-carry/stage.tar.xz" ]; then  # the archive of scripts/device_build.sh
  rm -rf "$stage" && mkdir -p "$stage" && tar -C "$stage" -xJf "$root/build-carry/stage.tar.xz"
fi
final=${OUT:-$root/out}
mode=${1:-full}
# Logs go to a scratch folder, packed into $OUT/logs.tar.gz at the end; the summary and the
# raw JSON results are copied next to the archive.
logs=$(mktemp -d)
mkdir -p "$final"
export LD_LIBRARY_PATH="$stage${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
S=$logs/summary.txt
say() { echo "$*" >> "$S"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader > "$logs/gpu.txt" 2>&1
say "gpu: $(cat "$logs/gpu.txt")"
say "programs built from: $(cat "$stage/BUILT_FROM" 2>/dev/null || echo unknown); tree: $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty')"

# 1. GPU tests, in parallel (each binary is one variant family).
t0=$SECONDS
tests=$(cd "$stage" && ls test_* 2>/dev/null)
for t in $tests; do
  (timeout 300 "$stage/$t" > "$logs/$t.log" 2>&1; echo "$t rc=$?" >> "$logs/rc.txt") &
done
wait
say "== tests ($((SECONDS - t0)) s)"
sort "$logs/rc.txt" >> "$S"
for t in $tests; do say "$t: $(grep -hE '^(All tests passed|test cases:)' "$logs/$t.log" | tail -1)"; done

# 2. compute-sanitizer over the [sanitize] cases of every test binary.
t0=$SECONDS
for t in $tests; do
  timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$stage/$t" "[sanitize]" > "$logs/memcheck_$t.log" 2>&1
  say "memcheck $t: rc=$? $(grep -h 'ERROR SUMMARY' "$logs/memcheck_$t.log" | tail -1)"
done
for t in test_quantize_append test_attention_int2_pt128 test_attention_int2_pc32 test_attention_config test_attention_decode; do
  [ -x "$stage/$t" ] || continue
  for tool in racecheck initcheck; do
    timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$stage/$t" "[sanitize]" > "$logs/${tool}_$t.log" 2>&1
    say "$tool $t: rc=$? $(grep -hE 'ERROR SUMMARY|RACECHECK SUMMARY' "$logs/${tool}_$t.log" | tail -1)"
  done
done
say "== sanitizers ($((SECONDS - t0)) s)"

# 3. PyTorch cross-check of the attention kernel (independent oracle).
mkdir -p "$logs/dump"
timeout 120 "$stage/attention_dump" "$logs/dump" > "$logs/dump.log" 2>&1
timeout 120 python3 "$root/tests/kernels/torch_check.py" "$logs/dump" > "$logs/torch_check.log" 2>&1
say "torch_check: rc=$? $(grep -E 'PASS|FAIL' "$logs/torch_check.log" | tail -3 | tr '\n' ' ')"
rm -rf "$logs/dump"

# 4. Benchmarks and the torch speed anchor, in the same call.
if [ "$mode" = full ]; then
  t0=$SECONDS
  for b in bench_quantize_append bench_attention; do
    [ -x "$stage/$b" ] || continue
    # The host-time benchmarks run apart, without a warmup time (theirs is manual time: a
    # 0.3 s warmup would take ~230 one-second iterations).
    timeout 420 "$stage/$b" --benchmark_filter=-host_run --benchmark_format=json --benchmark_out="$logs/$b.json" \
      --benchmark_min_time=0.3 --benchmark_min_warmup_time=0.3 > "$logs/$b.log" 2>&1
    say "$b: rc=$?"
  done
  if [ -x "$stage/bench_attention" ]; then
    timeout 120 "$stage/bench_attention" --benchmark_filter=host_run --benchmark_format=json \
      --benchmark_out="$logs/host_run.json" > "$logs/host_run.log" 2>&1
    say "bench_attention host_run: rc=$?"
  fi
  timeout 120 python3 "$root/benchmarks/attention/torch_sdpa.py" > "$logs/torch_sdpa.json" 2> "$logs/torch_sdpa.log"
  say "torch_sdpa: rc=$?"
  say "== benchmarks ($((SECONDS - t0)) s)"
  python3 "$root/scripts/summarize_bench.py" "$logs" >> "$S" 2>&1
fi

# 5. The compiler's resource report of the attention kernels (registers, stack, local
# memory) and the MMA instructions of the Hopper kernel.
if [ -x "$stage/bench_attention" ] && command -v cuobjdump > /dev/null; then
  cuobjdump -res-usage "$stage/bench_attention" > "$logs/res_usage.txt" 2>&1
  grep -A1 "4sm9016attention_kernel" "$logs/res_usage.txt" | grep -o "REG:[0-9]* STACK:[0-9]* SHARED:[0-9]* LOCAL:[0-9]*" | sort | uniq -c \
    | sed 's/^/sm90 kernel resources: /' >> "$S"
  cuobjdump -sass "$stage/bench_attention" > "$logs/bench_attention.sass" 2>&1
  say "sm90 SASS (all kernels of bench_attention): HGMMA $(grep -c HGMMA "$logs/bench_attention.sass"), LDL $(grep -c 'LDL' "$logs/bench_attention.sass"), STL $(grep -c 'STL' "$logs/bench_attention.sass")"
  rm -f "$logs/bench_attention.sass"
fi

# 6. The demo on the GPU (and the same run on the CPU reference, for comparison).
timeout 120 "$stage/chunked_video_demo" --json > "$logs/demo.json" 2> "$logs/demo.log"
say "demo gpu: rc=$? $(grep -o '"taylor2_drop_removed".*' "$logs/demo.json")"

cat "$S"
tar -C "$logs" -czf "$final/logs.tar.gz" .
for f in "$S" "$logs"/*.json; do
  [ -f "$f" ] && cp "$f" "$final/"
done
echo "==== summary ===="
cat "$S"
