#!/usr/bin/env bash
# One machine, WORLD ranks (one per process; on CPU the cores are split between them).
# Usage: launch/mpirun_local.sh WORLD CONFIG.yaml [mla_run arguments...]
# Example: launch/mpirun_local.sh 4 configs/example.yaml --set run.output=results/y_world4.safetensors
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,4p' "$0"; exit 2; fi
world=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
mla_run=${MLA_RUN:-$here/build/mla_run}
flags=()
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
# More ranks than cores is fine for correctness runs; say so rather than have mpirun refuse.
[ "$world" -gt "$(nproc)" ] && flags+=(--oversubscribe)
exec mpirun -np "$world" "${flags[@]}" "$mla_run" "$@"
