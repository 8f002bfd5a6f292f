#!/usr/bin/env bash
# On the GPU machine: Nsight Compute stall reasons (aggregate and per SASS line) and the
# SASS of the attention kernels, for reading offline (writes $OUT/profile.tar.gz; prints the
# key metrics).
#   scripts/device_build.sh    # then, on the GPU machine, in a copy of the tree that holds
#                              # build-carry/: OUT=<dir> scripts/device_profile.sh [FILTER [BENCH_FILTER]]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
stage=${KVQ_STAGE_DIR:-$root/build-stage}
carried=${KVQ_CARRY_DIR:-$root/build-carry}
if [ -f "$carried/stage.tar.xz" ]; then
  rm -rf "$stage" && mkdir -p "$stage" && tar -C "$stage" -xJf "$carried/stage.tar.xz"
fi
out=${OUT:-$root/out}
mkdir -p "$out"
logs=$(mktemp -d)
export LD_LIBRARY_PATH="$stage${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
filter=${1:-int2_pt128_none_d128_sm90/nq:4096}
bench="$stage/bench_attention --benchmark_filter=$filter --benchmark_min_time=0.01"
timeout 240 ncu -k regex:attention -c 1 --section SpeedOfLight --section WarpStateStats --section SourceCounters \
  --metrics regex:smsp__average_warps_issue_stalled_.*_per_issue_active.ratio -o "$logs/prof" $bench > "$logs/ncu_run.txt" 2>&1
echo "ncu rc=$?"
ncu -i "$logs/prof.ncu-rep" --page raw --csv > "$logs/raw.csv" 2>&1
ncu -i "$logs/prof.ncu-rep" --page source --csv --print-source sass > "$logs/source.csv" 2> "$logs/source.err"
ncu -i "$logs/prof.ncu-rep" > "$logs/details.txt" 2>&1
# Plain timing of the same kernels (no profiler).
$stage/bench_attention --benchmark_filter="${2:-sm90}" --benchmark_min_time=0.2 > "$logs/bench.txt" 2>&1
rm -f "$logs/prof.ncu-rep"
tar -C "$logs" -czf "$out/profile.tar.gz" .
python3 - "$logs/raw.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
hdr, vals = rows[0], rows[2] if len(rows) > 2 else []
pairs = [(h, v) for h, v in zip(hdr, vals) if "issue_stalled" in h]
def num(v):
    try: return float(v.replace(",", ""))
    except ValueError: return 0.0
for h, v in sorted(pairs, key=lambda p: -num(p[1]))[:14]:
    print(f"{num(v):8.2f}  {h.replace('smsp__average_warps_issue_stalled_', '').replace('_per_issue_active.ratio', '')}")
PY
grep -E "Duration|SM Frequency" "$logs/details.txt" | head -4
grep -E "^BM_" "$logs/bench.txt" | awk '{print $1, $2, $3, $NF}'
