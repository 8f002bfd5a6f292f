#!/usr/bin/env bash
# The test command: installs missing build dependencies, builds kvq's tests (CPU
# tests always; GPU tests too when nvcc is found) and runs them with CTest. GPU
# tests exit 77 on a machine without a GPU and CTest reports them as skipped.
#
#   scripts/test.sh                 build into ./build and run every test
#   KVQ_BUILD_DIR=dir scripts/test.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
build=${KVQ_BUILD_DIR:-$root/build}
jobs=$(nproc)
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_BUILD_BENCHMARKS=OFF
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
