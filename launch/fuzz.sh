#!/usr/bin/env bash
# Fuzzes the parsers of user data (safetensors files, YAML configs with --set overrides, the
# Hugging Face index) with libFuzzer under ASan + UBSan, for a fixed budget each, starting from the
# seed corpus in tests/fuzz/corpus (a copy: the committed corpus does not grow).
# Usage: [MLA_FUZZ_SECONDS=15] bash launch/fuzz.sh        exit 1 on any finding
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${MLA_FUZZ_SECONDS:-15}
bash launch/install_packages.sh clang libclang-rt-14-dev
CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DMLA_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build build-fuzz -j "$(nproc)"
work=$(mktemp -d)
trap 'rm -rf "$work" /tmp/mla_fuzz_safetensors.*' EXIT
status=0
for target in safetensors config hf_index; do
  mkdir -p "$work/$target" "$work/$target-findings"
  cp tests/fuzz/corpus/$target/* "$work/$target/"
  # rss and malloc limits: an input must not make the parser allocate what it cannot justify.
  if ./build-fuzz/tests/fuzz/fuzz_$target "$work/$target" -max_total_time="$seconds" -timeout=5 \
       -rss_limit_mb=1024 -malloc_limit_mb=256 -max_len=65536 -artifact_prefix="$work/$target-findings/" \
       -print_final_stats=1 > "$work/$target.log" 2>&1; then
    runs=$(grep -m1 'stat::number_of_executed_units' "$work/$target.log" | awk '{print $2}')
    echo "fuzz $target: ${runs:-?} runs in ${seconds} s, no finding"
  else
    status=1
    echo "fuzz $target: FINDING"
    tail -40 "$work/$target.log"
    for artifact in "$work/$target-findings"/*; do [ -e "$artifact" ] && echo "input: $(base64 -w0 < "$artifact")"; done
  fi
done
exit $status
