#!/usr/bin/env bash
# Runs a whole benchmark sweep: every world size it names under `mpirun -np W` (one rank per core
# share; ranks unbound so a world of 1 gets every core), the rows of all of them in one CSV and
# one JSONL, then the plots (launch/plot_bench.py) next to the CSV.
# Usage: bash launch/mla_bench.sh SWEEP.yaml [--set key=value ...]
#   MLA_BENCH=path/to/mla_bench   the binary (default build/mla_bench, built by launch/setup.sh if absent)
#   MLA_BENCH_PLOTS=0             no plots
#   MLA_MPIRUN_ARGS="..."         extra mpirun arguments (a hostfile, --map-by, ...)
set -euo pipefail
if [ $# -lt 1 ]; then sed -n '2,9p' "$0"; exit 2; fi
root=$(cd "$(dirname "$0")/.." && pwd)
bench=${MLA_BENCH:-$root/build/mla_bench}
[ -x "$bench" ] || bash "$root/launch/setup.sh"

listing=$("$bench" "$@" --list)  # also validates the sweep and every point before anything runs
worlds=$(sed -n 's/^worlds: //p' <<<"$listing")
csv=$(sed -n 's/^csv: //p' <<<"$listing")

flags=(--bind-to none)
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
append=(--overwrite)  # the first world replaces the files; the others add their rows
for world in $worlds; do
  world_flags=("${flags[@]}")
  [ "$world" -gt "$(nproc)" ] && world_flags+=(--oversubscribe)
  # shellcheck disable=SC2086  # MLA_MPIRUN_ARGS is a list of words on purpose
  mpirun -np "$world" "${world_flags[@]}" ${MLA_MPIRUN_ARGS:-} "$bench" "$@" "${append[@]}"
  append=(--append)
done

if [ "${MLA_BENCH_PLOTS:-1}" != 0 ]; then
  python=/usr/bin/python3
  [ -x "$python" ] || python=python3
  if "$python" -c "import matplotlib" 2>/dev/null; then
    out="$(dirname "$csv")/plots/$(basename "$csv" .csv)"
    mkdir -p "$out"
    if "$python" "$root/launch/plot_bench.py" "$csv" --out "$out" > "$out/summary.md.tmp"; then
      mv -f "$out/summary.md.tmp" "$out/summary.md"
      echo "mla_bench.sh: plots in $out/ (their numbers in $out/summary.md)"
    else
      rm -f "$out/summary.md.tmp"
      echo "mla_bench.sh: the plots failed (the CSV and JSONL are complete)" >&2
    fi
  else
    echo "mla_bench.sh: matplotlib not found for $python: no plots (apt-get install python3-matplotlib)" >&2
  fi
fi
