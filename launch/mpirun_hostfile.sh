#!/usr/bin/env bash
# Several machines from an Open MPI hostfile ("node-a slots=4" per line), WORLD ranks placed by slot.
# Every node needs the same build at the same path and the config's files (or a shared filesystem).
# Usage: launch/mpirun_hostfile.sh HOSTFILE WORLD CONFIG.yaml [mla_run arguments...]
# Set MLA_NET=10.0.0.0/24 (or an interface name) to keep MPI traffic on that network.
# Example: MLA_NET=ib0 launch/mpirun_hostfile.sh hosts.txt 16 configs/example.yaml
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,6p' "$0"; exit 2; fi
hostfile=$1 world=$2; shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
mla_run=${MLA_RUN:-$here/build/mla_run}
flags=(--hostfile "$hostfile" -np "$world")
[ "$(id -u)" -eq 0 ] && flags+=(--allow-run-as-root)
if [ -n "${MLA_NET:-}" ]; then
  flags+=(--mca oob_tcp_if_include "$MLA_NET" --mca btl_tcp_if_include "$MLA_NET")
fi
exec mpirun "${flags[@]}" "$mla_run" "$@"
