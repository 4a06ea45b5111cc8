#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs one MLA layer from the example config,
# tensor-parallel over MLA_WORLD CPU ranks (default 2) under mpirun. Extra arguments go to mla_run
# (e.g. --set run.compute_dtype=bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/mpirun_local.sh "${MLA_WORLD:-2}" configs/example.yaml "$@"
