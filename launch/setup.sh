#!/usr/bin/env bash
# Installs what is missing (Debian 12 packages) and builds a CMake preset (CMakePresets.json):
# release into build/ (default), sanitize into build-sanitize/ or tsan into build-tsan/.
# Usage: [MLA_PRESET=sanitize|tsan] bash launch/setup.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ pkg-config libopenblas-openmp-dev libyaml-cpp-dev nlohmann-json3-dev
          libcli11-dev libgtest-dev openmpi-bin libopenmpi-dev libdnnl-dev)
# ThreadSanitizer builds with clang, its OpenMP runtime and libarcher (CMakePresets.json "tsan").
if [ "${MLA_PRESET:-release}" = tsan ]; then
  packages+=(clang libomp-dev libclang-rt-dev)
fi
# The benchmarks' PyTorch baseline and plots (docs/performance.md); MLA_SETUP_BENCH=0 leaves them out.
if [ "${MLA_SETUP_BENCH:-1}" != 0 ]; then
  packages+=(python3-torch python3-matplotlib)
fi
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

preset=${MLA_PRESET:-release}
cmake --preset "$preset" "$@"
cmake --build "$([ "$preset" = release ] && echo build || echo "build-$preset")" -j "$(nproc)"
