#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
ctest --test-dir build --output-on-failure -j "$(nproc)"
