#!/usr/bin/env bash
# A short device call for little device time: every GPU test binary (in parallel),
# memcheck of the newest binaries' [sanitize] cases, the demo on the GPU, and the
# rotated/centered attention and append costs. $OUT receives short.tar.gz and summary.txt.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$root/build-stage
[ -f "$root/build-carry/stage.tar.xz" ] && rm -rf "$stage" && mkdir -p "$stage" && tar -C "$stage" -xJf "$root/build-carry/stage.tar.xz"
export LD_LIBRARY_PATH="$stage${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
out=${OUT:-$root/out}
r=$(mktemp -d)/short && mkdir -p "$r"
S=$out/summary.txt
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$S"
echo "programs built from: $(cat "$stage/BUILT_FROM")" >> "$S"
for t in $(cd "$stage" && ls test_*); do
  (timeout 90 "$stage/$t" > "$r/$t.log" 2>&1; echo "$t rc=$? $(grep -hE '^(All tests passed|test cases:)' "$r/$t.log" | tail -1)" >> "$r/rc.txt") &
done
wait
sort "$r/rc.txt" >> "$S"
for t in test_merge test_attention_centered test_attention_centered_sm90 test_quantize_append test_paged; do
  (timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$stage/$t" "[sanitize]" > "$r/memcheck_$t.log" 2>&1
   echo "memcheck $t rc=$? $(grep -h 'ERROR SUMMARY' "$r/memcheck_$t.log" | tail -1)" >> "$r/mc.txt") &
done
wait
cat "$r/mc.txt" >> "$S"
timeout 60 "$stage/chunked_video_demo" --json > "$r/demo.json" 2> "$r/demo.log"
echo "demo rc=$? $(grep -o '"taylor2_drop_removed".*' "$r/demo.json" | head -c 1500)" >> "$S"
for pass in 1 2; do
  for v in int2_pt128_taylor2 int2_pt128rot_taylor2 int2_pt128rotcen_taylor2; do
    timeout 40 "$stage/bench_attention" --benchmark_filter="rot_pair/${v}_d128" --benchmark_min_time=0.2 \
      --benchmark_format=json --benchmark_out="$r/attn_${v}_$pass.json" > /dev/null 2>&1 || echo "attn $v $pass rc=$?" >> "$S"
  done
done
timeout 40 "$stage/bench_quantize_append" --benchmark_filter='int2_pt128_d128(_rot|_rotcen|_rotcen_first)?/n:8192/h:24/' \
  --benchmark_min_time=0.2 --benchmark_format=json --benchmark_out="$r/quantize_append.json" > /dev/null 2>&1
echo "quantize bench rc=$?" >> "$S"
tar -C "$(dirname "$r")" -czf "$out/short.tar.gz" short
