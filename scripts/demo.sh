#!/usr/bin/env bash
# The main job: builds and runs the chunk-wise video generation demo. It uses the
# GPU kernels when built with CUDA and a GPU is present, the CPU reference otherwise.
# Arguments are passed to the demo (e.g. --json, --chunks 6, --cpu).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
build=${KVQ_BUILD_DIR:-$root/build-demo}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_BUILD_TESTS=OFF -DKVQ_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$build" --target chunked_video_demo -j "$(nproc)" >/dev/null
exec "$build/examples/chunked_video_demo/chunked_video_demo" "$@"
