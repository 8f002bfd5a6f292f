#!/usr/bin/env bash
# Builds everything for the GPU machine (sm_90a) into build-device/, stages the programs a
# GPU run needs into build-stage/ (GPU test binaries, benchmarks, the dump program of the
# PyTorch cross-check, the demo, the CUDA consumer projects, and the Google Benchmark shared library) and packs them into
# one archive, build-carry/stage.tar.xz, to copy to the GPU machine.
#
#   [KVQ_STAGE_ONLY="test_paged bench_attention libkvq_c.so libkvq_torch.so ..."] \
#     [KVQ_TORCH_PYTHON=<python3 with torch>] scripts/device_build.sh
#                               # then, on the GPU machine, in a copy of the tree that holds
#                               # build-carry/: OUT=<dir> scripts/device_check.sh [full|quick]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${KVQ_BUILD_DIR:-$root/build-device}
stage=$root/build-stage
"$root/scripts/install_deps.sh"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_CUDA_ARCHITECTURES=90a \
  -DKVQ_BUILD_TESTS=ON -DKVQ_BUILD_BENCHMARKS=ON -DKVQ_BUILD_EXAMPLES=ON \
  ${KVQ_TORCH_PYTHON:+-DKVQ_TORCH_PYTHON=$KVQ_TORCH_PYTHON} >/dev/null
if [ -n "${KVQ_STAGE_ONLY:-}" ]; then  # build only the programs to stage
  targets=$(for n in $KVQ_STAGE_ONLY; do
    case $n in libkvq_c.so) echo kvq_c ;; libkvq_torch.so) echo kvq_torch ;; *) echo "$n" ;; esac
  done)
  cmake --build "$build" -j "$(nproc)" --target $targets
else
  cmake --build "$build" -j "$(nproc)"
fi
# The CUDA consumer projects (built by their CTest tests: add_subdirectory and find_package).
[ -n "${KVQ_STAGE_ONLY:-}" ] || ctest --test-dir "$build" -R 'consumer_cuda_build' --output-on-failure >/dev/null
rm -rf "$stage" && mkdir -p "$stage"
find "$build/tests" "$build/benchmarks" "$build/examples" -type f -perm -u+x \
  \( -name 'test_quantize_append' -o -name 'test_paged' -o -name 'test_rotation' -o -name 'test_merge' -o -name 'test_attention_*' -o -name 'attention_dump' -o -name 'bench_*' \
     -o -name 'chunked_video_demo' \) -exec cp {} "$stage"/ \;
for way in subdirectory package; do
  c=$build/tests/consumer/cuda_$way/build/cuda_consumer
  [ -f "$c" ] && cp "$c" "$stage/test_consumer_cuda_$way"
done
cp -L /lib/x86_64-linux-gnu/libbenchmark.so.1debian "$stage"/
[ -f "$build/python/libkvq_c.so" ] && cp "$build/python/libkvq_c.so" "$stage"/
# libkvq_torch (the ops' C++ kernels): built where the configure found a python3 with torch
# (KVQ_TORCH_PYTHON=<python> names one); the package loads it from libkvq_c's directory.
[ -f "$build/python/libkvq_torch.so" ] && cp "$build/python/libkvq_torch.so" "$stage"/
strip --strip-debug "$stage"/test_* "$stage"/bench_* "$stage"/attention_dump "$stage"/chunked_video_demo "$stage"/libkvq_c.so 2>/dev/null || true
# KVQ_STAGE_ONLY="name ...": stage only these programs (and libbenchmark): every program
# together is larger than a device call carries (64 MiB with the tree, ~84 MiB as .tar.xz).
if [ -n "${KVQ_STAGE_ONLY:-}" ]; then
  for f in "$stage"/*; do
    n=$(basename "$f")
    case " $KVQ_STAGE_ONLY libbenchmark.so.1debian " in *" $n "*) ;; *) rm -f "$f" ;; esac
  done
fi
# One archive of the staged programs: a single artifact to copy to the GPU machine.
mkdir -p "$root/build-carry"
# The commit the programs were built from (the GPU machine's copy of the tree may not carry git state).
echo "$(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- . ':!benchmarks/results' || echo '+dirty')" > "$stage/BUILT_FROM"
# xz: the archive must stay within the device call's carry limit (64 MiB).
rm -f "$root/build-carry/stage.tar.gz"
tar -C "$stage" -cf - . | xz -T0 -6 > "$root/build-carry/stage.tar.xz"
du -sh "$stage" "$root/build-carry/stage.tar.xz"
size=$(stat -c %s "$root/build-carry/stage.tar.xz")
[ "$size" -le $((60 * 1024 * 1024)) ] || echo "device_build: stage.tar.xz is $((size / 1048576)) MiB, more than a device call carries (64 MiB with the tree): set KVQ_STAGE_ONLY" >&2
