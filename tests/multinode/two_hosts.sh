#!/usr/bin/env bash
# Two "hosts" on this machine: network namespaces mla-host1 and mla-host2 with their own addresses
# on a private bridge, each with its own hostname. Open MPI's launcher enters them through
# rsh_agent.sh (in place of ssh), and MPI traffic (the launcher's and the ranks') is confined to the
# bridge's subnet. Runs `mpirun -np WORLD` from a hostfile of the two addresses, 2 slots each.
#
# Usage: two_hosts.sh WORLD MLA_RUN CONFIG [mla_run arguments...]
# Exit 77 (skipped) when this machine refuses namespaces; otherwise mpirun's exit code.
set -uo pipefail
if [ $# -lt 3 ]; then sed -n '2,9p' "$0"; exit 2; fi
world=$1 mla_run=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
tag=$$
subnet=10.213.$((tag % 200 + 20))
bridge=mlabr$tag
work=$(mktemp -d)

skip() { echo "SKIPPED: $*" >&2; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "creating network namespaces needs root"
command -v ip > /dev/null || skip "iproute2 (ip) is not installed"
command -v unshare > /dev/null || skip "util-linux (unshare) is not installed"

cleanup() {
  for n in 1 2; do
    local ns=mla$tag-h$n
    ip netns pids "$ns" 2> /dev/null | xargs -r kill -9 2> /dev/null
    ip netns del "$ns" 2> /dev/null
  done
  ip link del "$bridge" 2> /dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ip link add "$bridge" type bridge 2> /dev/null || skip "cannot create a bridge here: $(ip link add "$bridge" type bridge 2>&1)"
ip addr add "$subnet.254/24" dev "$bridge" && ip link set "$bridge" up || exit 1
for n in 1 2; do
  ns=mla$tag-h$n
  ip netns add "$ns" 2> /dev/null || skip "cannot create network namespaces here"
  # Entering one remounts / (a chroot whose root is not a mount point refuses that).
  entered=$(ip netns exec "$ns" true 2>&1) || skip "cannot enter a network namespace here: ${entered//$'\n'/ }"
  ip link add "mlav$tag-$n" type veth peer name eth0 netns "$ns" || exit 1
  ip link set "mlav$tag-$n" master "$bridge" up
  ip netns exec "$ns" ip addr add "$subnet.$n/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  echo "$subnet.$n mla$tag-h$n mla-host$n" >> "$work/hosts.map"
  echo "$subnet.$n slots=2" >> "$work/hostfile"
done

flags=(--hostfile "$work/hostfile" -np "$world"
       --mca plm_rsh_agent "$here/rsh_agent.sh"
       # Launcher and MPI traffic on the bridge's subnet only, over TCP (no shared memory between
       # the hosts, so every byte between them crosses the veth links).
       --mca oob_tcp_if_include "$subnet.0/24" --mca btl_tcp_if_include "$subnet.0/24" --mca btl tcp,self)
[ "$world" -gt 4 ] && flags+=(--oversubscribe)
for variable in LD_LIBRARY_PATH LSAN_OPTIONS ASAN_OPTIONS UBSAN_OPTIONS; do
  [ -n "${!variable:-}" ] && flags+=(-x "$variable")
done
MLA_HOSTS_MAP=$work/hosts.map OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
  timeout 120 mpirun "${flags[@]}" -x PATH "$mla_run" "$@"
