#!/usr/bin/env bash
# Installs what is missing (Debian 12 packages) and builds a CMake preset (CMakePresets.json):
# release into build/ (default), sanitize into build-sanitize/ or tsan into build-tsan/.
# Usage: [MLA_PRESET=sanitize|tsan] [MLA_SETUP_SLURM=1] bash launch/setup.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."

# The build. ocl-icd-opencl-dev: Debian's oneDNN CMake config asks for OpenCL even in a CPU build.
packages=(cmake ninja-build g++ pkg-config libopenblas-openmp-dev libyaml-cpp-dev nlohmann-json3-dev
          libcli11-dev libgtest-dev openmpi-bin libopenmpi-dev libdnnl-dev ocl-icd-opencl-dev)
# What the tests and launch scripts call besides the build: python3 (the benchmark checks), procps
# (ps, pgrep), iproute2 (ip: the two-host test's network namespaces). util-linux (unshare, setarch)
# and coreutils (timeout) are essential packages, on every Debian root.
packages+=(python3 procps iproute2)
# ThreadSanitizer builds with clang, its OpenMP runtime and libarcher (CMakePresets.json "tsan").
if [ "${MLA_PRESET:-release}" = tsan ]; then
  packages+=(clang libomp-dev libclang-rt-dev)
fi
# A real Slurm for tests/multinode/slurm.sh (the test starts its own daemons): only when asked.
if [ "${MLA_SETUP_SLURM:-0}" = 1 ]; then
  packages+=(slurmctld slurmd slurm-client munge)
fi
# The benchmarks' PyTorch baseline and plots (docs/performance.md); MLA_SETUP_BENCH=0 leaves them out.
if [ "${MLA_SETUP_BENCH:-1}" != 0 ]; then
  packages+=(python3-torch python3-matplotlib)
fi
bash launch/install_packages.sh "${packages[@]}"

preset=${MLA_PRESET:-release}
cmake --preset "$preset" "$@"
cmake --build "$([ "$preset" = release ] && echo build || echo "build-$preset")" -j "$(nproc)"
