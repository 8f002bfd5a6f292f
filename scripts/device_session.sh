#!/usr/bin/env bash
# A device call that fits the per-call limit (10 min), in two modes, after
# scripts/device_build.sh (and, for the Python package, the kvq_c target):
#   check  every staged GPU test binary (in parallel), memcheck/racecheck of the [sanitize]
#          cases of the newest binaries, the torch cross-check, the demo (default, rolling
#          window with sinks, frame selection) and the Python package's pytest suite
#   bench  the costs of rotation and centring (alternating rounds), paged against contiguous
#          (attention and append), the short-query shapes with their chunk-kernel
#          counterparts, the append variants, the torch anchor and the Python op's timing
#   all    check, then bench (one call, about 6 minutes)
#   profile  Nsight Compute sections of the short-query kernel at the decode shape and of the
#          Hopper kernel over contiguous and paged caches at the Wan chunk shape (ncu_*.txt)
# $OUT receives summary.txt and <mode>.tar.gz (every log and JSON).
#   OUT=<dir> scripts/device_session.sh check|bench|all
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$root/build-stage
mode=${1:-check}
if [ -f "$root/build-carry/stage.tar.xz" ]; then
  rm -rf "$stage" && mkdir -p "$stage" && tar -C "$stage" -xJf "$root/build-carry/stage.tar.xz"
elif [ -f "$root/build-carry/stage.tar.gz" ]; then
  rm -rf "$stage" && mkdir -p "$stage" && tar -C "$stage" -xzf "$root/build-carry/stage.tar.gz"
fi
export LD_LIBRARY_PATH="$stage${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
out=${OUT:-$root/out}
mkdir -p "$out"
r=$(mktemp -d)/$mode && mkdir -p "$r"
# $OUT/<mode>.tar.gz is rewritten after each step: a call stopped by its limit still returns
# what was done (and the device tool returns at most 8 files).
snap() { tar -C "$(dirname "$r")" -czf "$out/$mode.tar.gz.part" "$mode" && mv "$out/$mode.tar.gz.part" "$out/$mode.tar.gz"; }
S=$out/summary.txt
say() { echo "$*" >> "$S"; }
{ echo "== mode $mode"; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; } >> "$S"
say "programs built from: $(cat "$stage/BUILT_FROM" 2>/dev/null || echo unknown)"
python_env() {
  export KVQ_LIBRARY=$stage/libkvq_c.so
  # Where python3 has no pytest: pure-Python pytest and its dependencies carried as
  # build-carry/pyvendor.tar.xz (a folder pyvendor/ of packages).
  if ! python3 -c "import pytest" 2>/dev/null && [ -f "$root/build-carry/pyvendor.tar.xz" ]; then
    [ -d "$stage/pyvendor" ] || tar -C "$stage" -xJf "$root/build-carry/pyvendor.tar.xz"
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$stage/pyvendor"
  fi
}

if [ "$mode" = check ] || [ "$mode" = all ]; then
  t0=$SECONDS
  for t in $(cd "$stage" && ls test_*); do
    (timeout 150 "$stage/$t" > "$r/$t.log" 2>&1
     echo "$t rc=$? $(grep -hE '^(All tests passed|test cases:)' "$r/$t.log" | tail -1)" >> "$r/rc.txt") &
  done
  (python_env
   timeout 150 python3 "$root/python/tests/run_pytest.py" "$root/python/tests" --tb=short -q > "$r/pytest.log" 2>&1
   echo "pytest rc=$? $(tail -1 "$r/pytest.log")" >> "$r/py.txt") &
  if [ "$mode" = check ]; then  # 'all': the sanitizers, torch check and demo run alongside
    wait
    say "== tests ($((SECONDS - t0)) s)"
    sort "$r/rc.txt" >> "$S"
    cat "$r/py.txt" >> "$S"
    t0=$SECONDS
  fi
  for t in test_paged test_attention_decode test_quantize_append; do
    [ -x "$stage/$t" ] || continue
    (timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$stage/$t" "[sanitize]" > "$r/memcheck_$t.log" 2>&1
     echo "memcheck $t rc=$? $(grep -h 'ERROR SUMMARY' "$r/memcheck_$t.log" | tail -1)" >> "$r/mc.txt") &
  done
  (timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 "$stage/test_attention_decode" "[sanitize]" > "$r/racecheck_decode.log" 2>&1
   echo "racecheck test_attention_decode rc=$? $(grep -hE 'RACECHECK SUMMARY|ERROR SUMMARY' "$r/racecheck_decode.log" | tail -1)" >> "$r/mc.txt") &
  (mkdir -p "$r/dump" && timeout 120 "$stage/attention_dump" "$r/dump" > "$r/dump.log" 2>&1
   timeout 120 python3 "$root/tests/kernels/torch_check.py" "$r/dump" > "$r/torch_check.log" 2>&1
   echo "torch_check rc=$? $(grep -E 'PASS|FAIL' "$r/torch_check.log" | tail -2 | tr '\n' ' ')" >> "$r/tc.txt"; rm -rf "$r/dump") &
  (timeout 120 "$stage/chunked_video_demo" --json > "$r/demo.json" 2> "$r/demo.log"; echo "demo rc=$?" >> "$r/demo.txt"
   timeout 120 "$stage/chunked_video_demo" --window 6 --sinks 2 --chunks 40 --json > "$r/demo_rolling.json" 2> "$r/demo_rolling.log"
   echo "demo rolling rc=$?" >> "$r/demo.txt"
   timeout 120 "$stage/chunked_video_demo" --select --json > "$r/demo_select.json" 2> "$r/demo_select.log"
   echo "demo select rc=$?" >> "$r/demo.txt") &
  wait
  if [ "$mode" = all ]; then
    say "== tests, sanitizers, torch check, demo ($((SECONDS - t0)) s)"
    sort "$r/rc.txt" >> "$S"
    cat "$r/py.txt" >> "$S"
  else
    say "== sanitizers, torch check, demo ($((SECONDS - t0)) s)"
  fi
  cat "$r/mc.txt" "$r/tc.txt" "$r/demo.txt" >> "$S"
  snap
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  bench() {  # name filter min_time
    timeout 120 "$stage/bench_attention" --benchmark_filter="$2" --benchmark_min_time="${3:-0.3}" \
      --benchmark_format=json --benchmark_out="$r/$1.json" > /dev/null 2>&1 || say "bench $1 rc=$?"
    snap
  }
  t0=$SECONDS
  passes="1 2"
  [ "$mode" = all ] && passes=1
  for pass in $passes; do
    for v in int2_pt128_taylor2 int2_pt128rot_taylor2 int2_pt128rotcen_taylor2; do
      bench "attn_${v}_$pass" "rot_pair/${v}_d128"
    done
  done
  bench short 'short/'
  bench paged_pair 'paged_pair/'
  say "attention benches: $((SECONDS - t0)) s"
  tsh=""
  [ "$mode" = all ] && tsh=short  # 'all': only the short-query shapes
  timeout 100 python3 "$root/benchmarks/attention/torch_sdpa.py" $tsh > "$r/torch_sdpa.json" 2> "$r/torch_sdpa.log"
  say "torch rc=$? ($((SECONDS - t0)) s)"
  snap
  (python_env
   timeout 90 python3 "$root/python/benchmarks/bench_ops.py" --cpp-bench "$stage/bench_attention" --cpp-reps 2 > "$r/bench_ops.log" 2>&1
   echo "python bench_ops rc=$? ($((SECONDS - t0)) s)" >> "$S")
  snap
  timeout 100 "$stage/bench_quantize_append" \
    --benchmark_filter='BM_quantize_append/int2_pt128_d128(_rot|_rotcen)?/n:8192/h:24/|paged_append_pair/' \
    --benchmark_min_time=0.2 --benchmark_format=json --benchmark_out="$r/quantize_append.json" > /dev/null 2>&1
  say "quantize bench rc=$? ($((SECONDS - t0)) s)"
  snap
  (python_env
   timeout 90 python3 "$root/python/examples/self_forcing_like.py" --layers 4 --chunks 3 --steps 2 > "$r/example.log" 2>&1
   echo "python example rc=$?" >> "$S")
  say "total: $((SECONDS - t0)) s"
  snap
fi
if [ "$mode" = profile ]; then
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  if [ -z "$ncu" ]; then
    say "profile: no ncu on this machine"
  else
    prof() {  # out-name kernel-regex benchmark-filter
      timeout 150 "$ncu" --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
        --section MemoryWorkloadAnalysis --section LaunchStats --kernel-name-base demangled -k "regex:$2" -c 1 \
        "$stage/bench_attention" --benchmark_filter="$3" --benchmark_min_time=0.01 > "$out/$1.txt" 2>&1
      say "profile $1 rc=$?"
    }
    prof ncu_decode 'decode::attention_kernel' 'short/int2_pt128_taylor2_d128/short/b:8/nq:1/'
    prof ncu_contiguous 'sm90::attention_kernel' 'paged_pair/int2_pt128_taylor2_d128_sm90ov/contiguous/nq:4680/'
    prof ncu_paged128 'sm90::attention_kernel' 'paged_pair/int2_pt128_taylor2_d128_sm90ov/paged128/nq:4680/'
  fi
fi
