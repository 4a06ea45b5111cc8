#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite: once in the release build, then
# in an AddressSanitizer + UndefinedBehaviorSanitizer build (skip with MLA_TEST_SANITIZE=0), then in
# a ThreadSanitizer build with clang (skip with MLA_TEST_TSAN=0), then a fixed fuzzing budget on the
# parsers (launch/fuzz.sh, 15 s each; skip with MLA_TEST_FUZZ=0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
if [ "${MLA_TEST_SANITIZE:-1}" != 0 ]; then
  MLA_PRESET=sanitize bash launch/setup.sh
  ctest --test-dir build-sanitize --output-on-failure -j "$(nproc)"
fi
if [ "${MLA_TEST_TSAN:-1}" != 0 ]; then
  MLA_PRESET=tsan bash launch/setup.sh
  # clang 14's TSan maps fixed address ranges; a kernel with more mmap randomization than it knows
  # (vm.mmap_rnd_bits > 28) makes it stop at start-up. Then run without randomization (setarch -R).
  no_aslr=()
  ./build-tsan/tests/mla_tests --gtest_list_tests > /dev/null 2>&1 || no_aslr=(setarch "$(uname -m)" -R)
  "${no_aslr[@]}" ctest --test-dir build-tsan --output-on-failure -j "$(nproc)"
fi
if [ "${MLA_TEST_FUZZ:-1}" != 0 ]; then
  MLA_FUZZ_SECONDS=${MLA_FUZZ_SECONDS:-15} bash launch/fuzz.sh
fi
