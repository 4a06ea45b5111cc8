#!/usr/bin/env bash
# A real single-node Slurm on this machine: munged, slurmctld and slurmd started on localhost with
# their state, sockets, logs and ports in a temporary directory (nothing of the system's own Slurm
# or munge is touched), then `sbatch launch/slurm_mla_run.sbatch` at 2 and 4 tasks, its resource
# header overridden for one small node. Each run's y must equal `mpirun -np W`'s, byte for byte.
#
# Usage: slurm.sh MLA_RUN [CONFIG]   (CONFIG: configs/example.yaml)
# Exit 77 (skipped) naming what is missing when Slurm, munge or root is not there
# (MLA_SETUP_SLURM=1 bash launch/setup.sh installs Slurm and munge); otherwise 0 or 1.
set -uo pipefail
if [ $# -lt 1 ]; then sed -n '2,9p' "$0"; exit 2; fi
mla_run=$(realpath "$1")
here=$(cd "$(dirname "$0")/../.." && pwd)
config=$(realpath "${2:-$here/configs/example.yaml}")

skip() { echo "SKIPPED: $*" >&2; exit 77; }
fail() { echo "slurm.sh: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || skip "slurmd runs its jobs' tasks as root here; this test needs root"
missing=()
for tool in munged slurmctld slurmd sbatch sinfo scancel mpirun python3; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
((${#missing[@]} == 0)) || skip "not installed: ${missing[*]} (MLA_SETUP_SLURM=1 bash launch/setup.sh)"

work=$(mktemp -d /tmp/mla_slurm.XXXXXX)
chmod 0755 "$work"
cleanup() {
  local status=$?
  [ -n "${SLURM_CONF:-}" ] && scancel --quiet --user=root > /dev/null 2>&1
  for pid_file in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
    [ -s "$pid_file" ] && kill "$(cat "$pid_file")" 2> /dev/null
  done
  sleep 0.5
  for pid_file in "$work/slurmd.pid" "$work/slurmctld.pid" "$work/munge/munged.pid"; do
    [ -s "$pid_file" ] && kill -9 "$(cat "$pid_file")" 2> /dev/null
  done
  if [ "$status" -ne 0 ] && [ "$status" -ne 77 ]; then
    for log in "$work"/*.log "$work"/munge/*.log; do
      [ -f "$log" ] && { echo "--- $log (last lines)" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# Two free TCP ports for slurmctld and slurmd (the system's 6817/6818 may be taken).
read -r ctld_port slurmd_port < <(python3 -c '
import socket
ports = []
sockets = [socket.socket() for _ in range(2)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
print(*ports)')

# munge: its own key and socket, as root (--force: munged prefers a user of its own).
mkdir -m 0700 "$work/munge"
head -c 1024 /dev/urandom > "$work/munge/munge.key"
chmod 0400 "$work/munge/munge.key"
munged --force --socket="$work/munge/munge.socket" --key-file="$work/munge/munge.key" \
  --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" \
  --seed-file="$work/munge/munged.seed" || fail "munged did not start"

node=$(hostname -s)
mkdir -p "$work/state" "$work/spool"
# One node of 8 CPUs, whatever the hardware has (config_overrides): 4 tasks fit on 2 cores, as
# ranks share cores in the rest of the suite. No cgroups, no accounting: nothing system-wide.
cat > "$work/slurm.conf" << EOF
ClusterName=mlatest
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=mla Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
export SLURM_CONF=$work/slurm.conf
slurmctld -i || fail "slurmctld did not start"
slurmd || fail "slurmd did not start"
for _ in $(seq 1 100); do
  sinfo --noheader --states=idle --format=%N 2> /dev/null | grep -q . && break
  sleep 0.2
done
sinfo --noheader --states=idle --format=%N | grep -q . || fail "the node did not come up idle: $(sinfo 2>&1)"
echo "slurm.sh: Slurm $(sinfo --version | cut -d' ' -f2) on $node (ports $ctld_port, $slurmd_port)"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cd "$here"
for world in 2 4; do
  slurm_y=$work/y_slurm_$world.safetensors
  mpirun_y=$work/y_mpirun_$world.safetensors
  MLA_RUN=$mla_run timeout 240 sbatch --wait --quiet --nodes=1 --ntasks-per-node="$world" --cpus-per-task=1 \
    --time=00:05:00 --output="$work/job_$world.out" launch/slurm_mla_run.sbatch "$config" \
    --set "run.output=$slurm_y"
  status=$?
  [ "$status" -eq 0 ] || fail "sbatch --ntasks-per-node=$world exited $status: $(tail -n 5 "$work/job_$world.out")"
  grep -q "world $world" "$work/job_$world.out" || fail "the Slurm job did not run $world ranks: $(head -n 3 "$work/job_$world.out")"
  timeout 240 mpirun --oversubscribe -np "$world" "$mla_run" "$config" --set "run.output=$mpirun_y" \
    > "$work/mpirun_$world.out" 2>&1 || fail "mpirun -np $world failed: $(tail -n 5 "$work/mpirun_$world.out")"
  cmp -s "$slurm_y" "$mpirun_y" || fail "world $world: y under Slurm differs from y under mpirun"
  echo "slurm.sh: world $world: sbatch launch/slurm_mla_run.sbatch wrote the same y as mpirun -np $world"
done
