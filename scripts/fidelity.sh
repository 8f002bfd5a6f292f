#!/usr/bin/env bash
# The fidelity study (docs/fidelity.md): builds tools/fidelity_study.cpp (CPU only), runs its
# sweep on the CPU reference (a few minutes on 2 cores), writes fidelity.csv and
# value_configs.csv, and plots them with tools/plot_fidelity.py (numpy + matplotlib, installed
# from Debian's packages if missing, and run with Debian's python3, where apt puts them).
#
#   scripts/fidelity.sh                    # into docs/fidelity/
#   KVQ_FIDELITY_OUT=dir scripts/fidelity.sh [--seeds N] [--threads N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"

python=/usr/bin/python3
if ! "$python" -c "import numpy, matplotlib" 2>/dev/null; then
  pkgs=()
  for p in python3 python3-numpy python3-matplotlib; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || pkgs+=("$p")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "kvq: installing ${pkgs[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  fi
fi

build=${KVQ_BUILD_DIR:-$root/build-fidelity}
out=${KVQ_FIDELITY_OUT:-$root/docs/fidelity}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVQ_ENABLE_CUDA=OFF -DKVQ_BUILD_TESTS=OFF \
  -DKVQ_BUILD_BENCHMARKS=OFF -DKVQ_BUILD_EXAMPLES=OFF -DKVQ_BUILD_TOOLS=ON >/dev/null
cmake --build "$build" --target fidelity_study -j "$(nproc)" >/dev/null
mkdir -p "$out"
"$build/tools/fidelity_study" --out "$out" "$@"
"$python" "$root/tools/plot_fidelity.py" "$out"
