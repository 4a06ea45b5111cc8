#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs one MLA layer on the CPU from the
# example config. Extra arguments go to mla_run (e.g. --set run.compute_dtype=bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
mkdir -p results
./build/mla_run configs/example.yaml "$@"
