#!/usr/bin/env bash
# Runs inside the private mount namespace scripts/kselftest.sh creates (unshare -m --propagation
# private): starts the daemon with its FUSE node bound over /dev/iommu, runs the selftest binary with
# a time limit, stops the daemon with SIGTERM.
#   kselftest-run-ns.sh DAEMON SELFTEST TAP_OUT TIMEOUT_S [selftest args...]
# Exit: the selftest's own status (0, 1 = some failed, 4 = all skipped), 124/137 on timeout;
#       10 and up when the daemon could not be brought up.
set -euo pipefail
daemon=$1 selftest=$2 tap=$3 timeout_s=$4
shift 4
logdir=$(dirname "$tap")
log=$logdir/daemon.log

# Belt and braces: even if the caller forgot --propagation private, nothing mounted here may leak.
mount --make-rprivate / 2>/dev/null || true

# The host has no /dev/iommu, and /dev is devtmpfs: a file the daemon created there to bind over
# would appear on the host too. Give this namespace its own /dev instead: a tmpfs holding bind
# mounts of every host node (and copies of its symlinks), where the daemon may create iommu.
if [ ! -e /dev/iommu ]; then
  olddev=$(mktemp -d /tmp/uiommufd-olddev.XXXXXX)
  mount --rbind /dev "$olddev"
  mount -t tmpfs -o mode=755,size=1m uiommufd-dev /dev
  for f in "$olddev"/* "$olddev"/.[!.]*; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    name=/dev/$(basename "$f")
    if [ -L "$f" ]; then
      cp -P "$f" "$name"
    elif [ -d "$f" ]; then
      mkdir -p "$name" && mount --rbind "$f" "$name"
    else
      touch "$name" && mount --bind "$f" "$name"
    fi
  done
  umount -l "$olddev" && rmdir "$olddev"
fi

mnt=$(mktemp -d /tmp/uiommufd-kselftest.XXXXXX)
dpid=""
cleanup() {
  if [ -n "$dpid" ] && kill -0 "$dpid" 2>/dev/null; then
    kill -TERM "$dpid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$dpid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$dpid" 2>/dev/null; then
      echo "kselftest: daemon ignored SIGTERM for 5 s, killing it" >&2
      kill -KILL "$dpid" 2>/dev/null || true
    fi
    wait "$dpid" 2>/dev/null || true
  fi
  umount -l /dev/iommu 2>/dev/null || true
  umount -l "$mnt" 2>/dev/null || true
  rmdir "$mnt" 2>/dev/null || true
  rm -f "$mnt.sock"
}
trap cleanup EXIT

echo "+ $daemon serve --selftest --transport fuse --mount $mnt --bind-dev --control $mnt.sock" >&2
"$daemon" serve --selftest --transport fuse --mount "$mnt" --bind-dev --control "$mnt.sock" > "$log" 2>&1 &
dpid=$!

# Wait for the FUSE node, then for /dev/iommu (the daemon's bind mount).
for _ in $(seq 200); do
  [ -e "$mnt/iommu" ] && break
  kill -0 "$dpid" 2>/dev/null || { echo "kselftest: daemon exited before $mnt/iommu appeared:" >&2; tail -n 20 "$log" >&2; exit 10; }
  sleep 0.1
done
[ -e "$mnt/iommu" ] || { echo "kselftest: $mnt/iommu did not appear within 20 s" >&2; tail -n 20 "$log" >&2; exit 11; }
for _ in $(seq 50); do
  [ -e /dev/iommu ] && break
  sleep 0.1
done
[ -e /dev/iommu ] || { echo "kselftest: /dev/iommu is missing: the daemon did not bind its node there" >&2; exit 12; }
echo "kselftest: daemon $dpid up, /dev/iommu: $(stat -c '%F' /dev/iommu)" >&2

# With UIOMMUFD_LAUNCHER set, the selftest runs under `uiommufd launch` (fd-returning ops).
launch=()
if [ -n "${UIOMMUFD_LAUNCHER:-}" ]; then
  launch=("$UIOMMUFD_LAUNCHER" launch --)
  echo "kselftest: running the selftest under $UIOMMUFD_LAUNCHER launch" >&2
fi

rc=0
# Line-buffered so the TAP stream can be followed live; the harness forks per test.
timeout --kill-after=10 "$timeout_s" "${launch[@]}" stdbuf -oL -eL "$selftest" "$@" 2>&1 | tee "$tap" || rc=${PIPESTATUS[0]}
kill -0 "$dpid" 2>/dev/null || echo "kselftest: the daemon died during the run (see $log)" >&2
exit "$rc"
