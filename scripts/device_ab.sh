#!/usr/bin/env bash
# Same-call A/B of two builds of bench_attention on the GPU machine: runs A and B
# alternately on one benchmark filter, then the torch anchor (benchmarks/attention/
# torch_sdpa.py) on the same shapes, and prints each run's TFLOP/s with its ratio to
# cuDNN's steady time. Raw JSON goes to $OUT (default ./out).
#
#   scripts/device_ab.sh BENCH_A BENCH_B FILTER [ROUNDS]
#   e.g. scripts/device_ab.sh old/bench_attention build-stage/bench_attention \
#          'int2_pt128_taylor2_d128_sm90ov/nq:8192/cache:65536/h:24/' 3
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
a=$1 b=$2 filter=$3 rounds=${4:-3}
out=${OUT:-$root/out}
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for side in a b; do
    bin=$a; [ $side = b ] && bin=$b
    "$bin" --benchmark_filter="$filter" --benchmark_format=json --benchmark_out="$out/ab_${side}_$r.json" \
      --benchmark_min_time=0.3 --benchmark_min_warmup_time=0.3 > /dev/null 2>&1 || echo "$side round $r: rc=$?"
  done
done
python3 "$root/benchmarks/attention/torch_sdpa.py" > "$out/ab_torch_sdpa.json" 2> /dev/null || echo "torch_sdpa failed"
python3 - "$out" "$rounds" <<'PY'
import json, re, sys
out, rounds = sys.argv[1], int(sys.argv[2])
torch = {}
try:
    for r in json.load(open(f"{out}/ab_torch_sdpa.json"))["results"]:
        torch[(r["nq"], r["cache"], r["hq"], r["hkv"], r["backend"])] = r["tflops"]
except (OSError, ValueError, KeyError):
    pass
for side in "ab":
    for i in range(1, rounds + 1):
        try:
            data = json.load(open(f"{out}/ab_{side}_{i}.json"))
        except (OSError, ValueError):
            continue
        for bm in data["benchmarks"]:
            m = re.search(r"nq:(\d+)/cache:(\d+)/h:(\d+)(?:/hkv:(\d+))?", bm["name"])
            key = (int(m[1]), int(m[2]), int(m[3]), int(m[4] or m[3])) if m else None
            cu = torch.get(key + ("cudnn",)) if key else None
            ratio = f" | time / cuDNN steady time {cu / bm['TFLOP/s']:.3f} (cuDNN {cu:.1f})" if cu else ""
            print(f"{side} round {i}: {bm['name'].replace('/manual_time', '')} | {bm['TFLOP/s']:.1f} TFLOP/s{ratio}")
PY
