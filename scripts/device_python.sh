#!/usr/bin/env bash
# The Python package on the GPU machine: pytest of python/tests, the Self-Forcing-shaped
# example (short: --layers 4 --chunks 3 --steps 2 unless EXAMPLE_ARGS says otherwise; then its
# rolling paged mode over 40 chunks), the context-parallel example where there are two GPUs,
# and the host/GPU time benchmark (compared with bench_attention where BENCH_ATTENTION names it).
# Logs go to $OUT (default ./out).
#   KVQ_LIBRARY=build/python/libkvq_c.so [BENCH_ATTENTION=build/benchmarks/bench_attention] \
#     OUT=<dir> scripts/device_python.sh
# Where python3 has no pytest, a folder of pure-Python packages named by KVQ_PYVENDOR (pytest
# and its dependencies, e.g. copied from a venv) is appended to PYTHONPATH.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$root/out}
mkdir -p "$out"
export KVQ_LIBRARY=${KVQ_LIBRARY:-$root/build/python/libkvq_c.so}
export PYTHONUNBUFFERED=1
if ! python3 -c "import pytest" 2>/dev/null && [ -n "${KVQ_PYVENDOR:-}" ]; then
  export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$KVQ_PYVENDOR"
fi
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$out/python_env.txt"
echo "== pytest"
timeout 480 python3 "$root/python/tests/run_pytest.py" "$root/python/tests" --tb=short 2>&1 | tee "$out/pytest.log" | tail -40
echo "pytest rc=${PIPESTATUS[0]}"
echo "== example"
timeout 300 python3 "$root/python/examples/self_forcing_like.py" ${EXAMPLE_ARGS:---layers 4 --chunks 3 --steps 2} 2>&1 \
  | tee "$out/example.log" | tail -20
echo "== example, rolling paged window"
timeout 300 python3 "$root/python/examples/self_forcing_like.py" --layers 2 --chunks 40 --steps 1 --window 3 --sinks 1 \
  2>&1 | tee "$out/example_rolling.log" | tail -8
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null)" -ge 2 ] 2>/dev/null; then
  echo "== context parallel (2 GPUs)"
  for mode in heads tokens; do
    timeout 300 python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
      "$root/python/examples/context_parallel.py" --mode "$mode" --check 2>&1 | tee "$out/context_parallel_$mode.log" | tail -12
  done
fi
echo "== benchmark"
timeout 300 python3 "$root/python/benchmarks/bench_ops.py" ${BENCH_ATTENTION:+--cpp-bench "$BENCH_ATTENTION"} 2>&1 \
  | tee "$out/bench_ops.log" | tail -25
if [ -f "$(dirname "$KVQ_LIBRARY")/libkvq_torch.so" ]; then
  # The same with the ops' Python kernels (libkvq_torch left out), for the host-time comparison,
  # and the tests on that path.
  echo "== benchmark, Python kernels"
  KVQ_TORCH_OPS=0 timeout 300 python3 "$root/python/benchmarks/bench_ops.py" 2>&1 | tee "$out/bench_ops_python.log" | tail -12
  echo "== pytest, Python kernels"
  KVQ_TORCH_OPS=0 timeout 300 python3 "$root/python/tests/run_pytest.py" "$root/python/tests" --tb=short -q 2>&1 \
    | tee "$out/pytest_python_kernels.log" | tail -5
fi
