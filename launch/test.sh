#!/usr/bin/env bash
# Installs what is missing, checks the sources' layout (launch/check_format.sh, clang-format), builds,
# and runs the whole test suite (launch/check_layout.py among it: includes point only to lower
# folders): once in the release build, then in an AddressSanitizer + UndefinedBehaviorSanitizer
# build (skip with MLA_TEST_SANITIZE=0), then in a ThreadSanitizer build with clang (skip with
# MLA_TEST_TSAN=0), then a fixed fuzzing budget on the parsers (launch/fuzz.sh, 15 s each; skip
# with MLA_TEST_FUZZ=0).
#   MLA_TEST_REGEX=R    only the ctest tests whose names match R, in every build that runs
#   MLA_TEST_REPEAT=N   the stress mode instead: the release build's timing-sensitive tests (faults,
#                       watchdog, MPI; MLA_TEST_STRESS_REGEX overrides which) N times each, 4 at a
#                       time whatever the cores, stopping at the first failure
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/check_format.sh
bash launch/setup.sh
regex=()
[ -n "${MLA_TEST_REGEX:-}" ] && regex=(-R "$MLA_TEST_REGEX")

if [ -n "${MLA_TEST_REPEAT:-}" ]; then
  stress=${MLA_TEST_STRESS_REGEX:-Faults|DebugFail|Watchdog|Mpi|mpi_world|Outputs|bench_allreduce}
  ctest --test-dir build --output-on-failure -R "$stress" --repeat "until-fail:$MLA_TEST_REPEAT" -j 4
  exit
fi

ctest --test-dir build --output-on-failure -j "$(nproc)" "${regex[@]}"
if [ "${MLA_TEST_SANITIZE:-1}" != 0 ]; then
  MLA_PRESET=sanitize bash launch/setup.sh
  ctest --test-dir build-sanitize --output-on-failure -j "$(nproc)" "${regex[@]}"
fi
if [ "${MLA_TEST_TSAN:-1}" != 0 ]; then
  MLA_PRESET=tsan bash launch/setup.sh
  # clang 14's TSan maps fixed address ranges; a kernel with more mmap randomization than it knows
  # (vm.mmap_rnd_bits > 28) makes it stop at start-up. Then run without randomization (setarch -R).
  no_aslr=()
  ./build-tsan/tests/mla_tests --gtest_list_tests > /dev/null 2>&1 || no_aslr=(setarch "$(uname -m)" -R)
  "${no_aslr[@]}" ctest --test-dir build-tsan --output-on-failure -j "$(nproc)" "${regex[@]}"
fi
if [ "${MLA_TEST_FUZZ:-1}" != 0 ]; then
  MLA_FUZZ_SECONDS=${MLA_FUZZ_SECONDS:-15} bash launch/fuzz.sh
fi
