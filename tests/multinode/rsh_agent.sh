#!/usr/bin/env bash
# Stands in for ssh when Open MPI starts its daemon on a "host" of two_hosts.sh: finds the
# namespace of the host address it is given and runs the command line there, under that host's
# own hostname (a UTS namespace of its own), as ssh would run it in a remote shell.
set -euo pipefail
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done  # ssh-style options, if any
host=$1; shift
read -r _ ns name < <(grep "^$host " "$MLA_HOSTS_MAP") || { echo "rsh_agent: unknown host $host" >&2; exit 255; }
exec ip netns exec "$ns" unshare --uts sh -c "hostname $name && $*"
