#!/usr/bin/env bash
# Checks that every C++ and CUDA source is laid out as .clang-format says (clang-format 14, Debian
# 12's), installing clang-format when it is missing. With --fix, formats them in place instead.
# Usage: bash launch/check_format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install_packages.sh clang-format
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  mapfile -t sources < <(git ls-files '*.h' '*.cpp' '*.cu' '*.cuh')
else
  mapfile -t sources < <(find runtime parallel kernels tests \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) | sort)
fi
if [ "${1:-}" = --fix ]; then
  clang-format -i "${sources[@]}"
  echo "check_format: formatted ${#sources[@]} files"
  exit 0
fi
report=$(mktemp)
trap 'rm -f "$report"' EXIT
if ! clang-format --dry-run --Werror "${sources[@]}" 2> "$report"; then
  grep -E '^[^ ].*: (error|warning):' "$report" | cut -d: -f1 | sort -u | sed 's/^/  not formatted: /' >&2
  echo "check_format: run 'bash launch/check_format.sh --fix' (clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1))" >&2
  exit 1
fi
echo "check_format: ${#sources[@]} files as .clang-format says"
