#!/usr/bin/env bash
# One device call after scripts/device_build.sh: the quick check (tests, sanitizers, the
# torch cross-check, the demo), then the rotated/centered cost benchmarks (two alternating
# passes of attention, the quantize-append pairs) and the torch anchor. $OUT receives the
# check's files and bench.tar.gz.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=$root/build-stage
OUT=${OUT:-$root/out} "$root/scripts/device_check.sh" quick
export LD_LIBRARY_PATH="$stage${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
r=$(mktemp -d)/bench && mkdir -p "$r"
for pass in 1 2; do
  for v in int2_pt128_taylor2 int2_pt128rot_taylor2 int2_pt128rotcen_taylor2; do
    timeout 60 "$stage/bench_attention" --benchmark_filter="rot_pair/${v}_d128" --benchmark_min_time=0.3 \
      --benchmark_format=json --benchmark_out="$r/attn_${v}_$pass.json" > /dev/null 2>&1 || echo "attn $v $pass rc=$?"
  done
done
timeout 90 "$stage/bench_quantize_append" --benchmark_filter='int2_pt128_d128(_rot|_rotcen|_rotcen_first)?/' \
  --benchmark_min_time=0.3 --benchmark_format=json --benchmark_out="$r/quantize_append.json" > /dev/null 2>&1
echo "quantize bench rc=$?"
timeout 150 python3 "$root/benchmarks/attention/torch_sdpa.py" > "$r/torch_sdpa.json" 2> /dev/null
echo "torch rc=$?"
tar -C "$(dirname "$r")" -czf "${OUT:-$root/out}/bench.tar.gz" bench
