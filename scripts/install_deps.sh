#!/usr/bin/env bash
# Installs what kvq's build needs from Debian's packages, if missing: a C++17
# compiler, CMake, Ninja, Catch2 2.13 (tests) and Google Benchmark (benchmarks).
# The CUDA toolkit is optional and not installed here: without nvcc the CPU part
# (specs, math, layout, reference, demo on the reference) builds and tests.
set -euo pipefail

pkgs=()
for p in g++ cmake ninja-build catch2 libbenchmark-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
done
[ ${#pkgs[@]} -eq 0 ] && exit 0

echo "kvq: installing ${pkgs[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
