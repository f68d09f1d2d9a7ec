#!/usr/bin/env bash
# Real DMA through uiommufd's VFIO backend: boot Debian's 6.12 kernel (VFIO type1, Intel IOMMU, no
# IOMMUFD) under QEMU/TCG with an emulated VT-d and three QEMU `edu` devices (00:04.0, 00:05.0,
# 00:06.0), bind them to vfio-pci and run the client tests/guest/vfio_dma.rs in the guest:
#   1. baseline-bench: the client's own type1v2 container on 06.0 (one DMA, MAP/UNMAP timings);
#   2. `uiommufd serve --transport cuse --mount /run/uiommufd $DAEMON_ARGS` (default: --vfio for
#      04.0 and 05.0); dma-tests, kill-test and bench through /dev/iommu and the daemon's device
#      nodes /run/uiommufd/vfio/devices/<BDF>; the DMA to an unmapped IOVA must leave a DMAR fault
#      in dmesg; the bench is printed as a ratio to the baseline of the same boot.
#   2b. unmodified QEMU inside the guest: the host's own binary (the host's root is shared read-only
#      over 9p and QEMU runs in a chroot of it) under `uiommufd launch` with 04.0 passed through
#      uiommufd; `vfio_dma nested-qemu` drives it over qtest and checks an edu DMA into its RAM.
#   3. SIGTERM to the daemon while a client (vfio_dma hold) holds 64 MiB mapped with 04.0
#      attached: the daemon exits 0 within 20 s and releases the open files, no uiommufd process
#      or /dev/iommu remains, the client's next ioctl fails, its memory comes back, and the
#      client's own type1 container drives 04.0 again (baseline-bench).
# Kernel cmdline: intel_iommu=on iommu.strict=1 (loglevel=3 keeps DMAR fault messages off the
# console; they are copied from dmesg). Packages and initramfs as in cuse-guest.sh
# (scripts/lib-guest.sh). Everything the guest prints goes to target/vfio-guest/console.log; its
# lines start with VFIO-GUEST:, CLIENT:, DAEMON: or DMESG:.
#
# Env: UIOMMUFD (daemon binary; default: cargo build --release), VFIO_DMA (client binary; default:
# cargo build --release --example vfio_dma), QEMU, KERNEL_PKG, GUEST_PKG_DIR (see lib-guest.sh),
# BOOT_TIMEOUT (seconds for the whole guest, default 900), CLIENT_TIMEOUT (seconds per client run
# in the guest, default 240), ROUNDS (benchmark rounds, default 5), DAEMON_ARGS, RUST_LOG (the
# daemon's level in the guest, default info), NESTED_QEMU (the QEMU run inside the guest, a path
# of the host's root; default: $QEMU resolved).
# Exit 0 only if the guest printed `VFIO-GUEST: summary: N passed, 0 failed` with N > 0; 1
# otherwise; 77 if QEMU is missing (1 under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/vfio-guest
QEMU=${QEMU:-qemu-system-x86_64}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-900}
CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-240}
ROUNDS=${ROUNDS:-5}
# The nodes are opened by an unprivileged client too (its RLIMIT_MEMLOCK is checked).
DAEMON_ARGS=${DAEMON_ARGS:---vfio 0000:00:04.0 --vfio 0000:00:05.0 --iommu-perm 0666 --device-perm 0666}
start=$(date +%s)
if ! command -v "$QEMU" >/dev/null; then
  [ "${CI:-}" = true ] && { echo "FAIL: $QEMU not found" >&2; exit 1; }
  echo "SKIP: $QEMU not found" >&2; exit 77
fi

# shellcheck source=scripts/lib-guest.sh
. "$ROOT/scripts/lib-guest.sh"
guest_build_uiommufd
if [ -z "${VFIO_DMA:-}" ]; then
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build -q --release --example vfio_dma
  VFIO_DMA=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/vfio_dma
fi
mkdir -p "$OUT"
# The QEMU that runs inside the guest: the host's own, seen through its root over 9p.
NESTED_QEMU=${NESTED_QEMU:-$(readlink -f "$(command -v "$QEMU")")}
guest_packages

# ---- initramfs ----
R=$OUT/root
guest_root "$R"
guest_add_bin "$R" "$UIOMMUFD" uiommufd
guest_add_bin "$R" "$VFIO_DMA" vfio_dma
# In dependency order; a =y option needs no module (6.12.95: VFIO_CONTAINER=y, the rest =m).
guest_add_module "$R" CONFIG_CUSE kernel/fs/fuse/cuse
guest_add_module "$R" CONFIG_IRQ_BYPASS_MANAGER kernel/virt/lib/irqbypass
guest_add_module "$R" CONFIG_VFIO kernel/drivers/vfio/vfio
guest_add_module "$R" CONFIG_VFIO_IOMMU_TYPE1 kernel/drivers/vfio/vfio_iommu_type1
guest_add_module "$R" CONFIG_VFIO_PCI_CORE kernel/drivers/vfio/pci/vfio-pci-core
guest_add_module "$R" CONFIG_VFIO_PCI kernel/drivers/vfio/pci/vfio-pci
# The host's root over 9p (read-only): the nested QEMU is the host's own binary.
guest_add_module "$R" CONFIG_NETFS_SUPPORT kernel/fs/netfs/netfs
guest_add_module "$R" CONFIG_NET_9P kernel/net/9p/9pnet
guest_add_module "$R" CONFIG_NET_9P_VIRTIO kernel/net/9p/9pnet_virtio
guest_add_module "$R" CONFIG_9P_FS kernel/fs/9p/9p
{ guest_init_head VFIO-GUEST; cat <<EOF; } > "$R/init"
PASSED=0
FAILED=0
say() { echo "VFIO-GUEST: \$*"; }
up() { cut -d' ' -f1 /proc/uptime; }
# check NAME RESULT WHY: one check of this script (RESULT "ok" passes).
check() {
  if [ "\$2" = ok ]; then PASSED=\$((PASSED + 1)); say "ok \$1"
  else FAILED=\$((FAILED + 1)); say "FAIL \$1: \$3"; fi
}
# client SUBCOMMAND ARGS...: run vfio_dma under a deadline and add up its RESULT line.
client() {
  sub=\$1
  say "client \$sub start at \$(up) s"
  # native and legacy run under the launcher (the kernel's device fd; the compat node for
  # /dev/vfio/vfio and the group joined by the daemon).
  case \$sub in native|legacy) launch="/bin/uiommufd launch --" ;; *) launch= ;; esac
  timeout -s KILL $CLIENT_TIMEOUT \$launch /bin/vfio_dma "\$@" >/tmp/\$sub.log 2>&1
  rc=\$?
  sed "s/^/CLIENT: [\$sub] /" /tmp/\$sub.log
  res=\$(grep "^RESULT \$sub: " /tmp/\$sub.log | tail -n1)
  if [ -z "\$res" ]; then
    check "\$sub" fail "no RESULT line (exit \$rc; 137 = killed after $CLIENT_TIMEOUT s)"
  else
    PASSED=\$((PASSED + \$(echo "\$res" | awk '{print \$3}')))
    f=\$(echo "\$res" | awk '{print \$5}')
    FAILED=\$((FAILED + f))
    [ "\$f" = 0 ] && [ \$rc -ne 0 ] && check "\$sub-exit" fail "exit \$rc"
  fi
  say "client \$sub exit \$rc at \$(up) s"
}
# wait_for SECONDS CONDITION...: poll until the condition holds or SECONDS of uptime have passed.
wait_for() {
  end=\$(awk -v s=\$1 '{print \$1 + s}' /proc/uptime); shift
  until "\$@"; do
    awk -v e=\$end '{exit !(\$1 > e)}' /proc/uptime && return 1
    sleep 0.1
  done
}
# dmar_check NAME LOG: the client's DMA to an unmapped IOVA (its line "DMAR-EXPECTED BDF iova A")
# must show up in dmesg as a DMAR write fault of that device at that address.
dmar_check() {
  set -- "\$1" "\$(awk '/^DMAR-EXPECTED/ {print \$2}' \$2)" "\$(awk '/^DMAR-EXPECTED/ {print \$4}' \$2)"
  if [ -z "\$3" ]; then check \$1 fail "the client did not reach its DMA to an unmapped IOVA"; return; fi
  fault_seen() { dmesg | grep 'DMAR: \[DMA Write' | grep "device \[\${2#0000:}\]" | grep -q "fault addr \$3 "; }
  if wait_for 5 fault_seen "\$@"; then check \$1 ok
  else check \$1 fail "no DMAR write fault of \$2 at \$3 in dmesg"; fi
}
say "modules: \$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
vfio_bound() { for d in 04 05 06; do [ "\$(basename "\$(readlink /sys/bus/pci/devices/0000:00:\$d.0/driver)")" = vfio-pci ] || return 1; done; }
echo 1234 11e8 > /sys/bus/pci/drivers/vfio-pci/new_id || say "new_id failed"
wait_for 10 vfio_bound
for d in 04 05 06; do
  s=/sys/bus/pci/devices/0000:00:\$d.0
  say "0000:00:\$d.0 \$(cat \$s/vendor):\$(cat \$s/device) driver \$(basename "\$(readlink \$s/driver)") group \$(basename "\$(readlink \$s/iommu_group)")"
done
for g in /sys/kernel/iommu_groups/*; do say "iommu group \$(basename \$g): \$(ls \$g/devices | tr '\n' ' ')"; done
say "/dev/vfio: \$(ls /dev/vfio | tr '\n' ' ')"
if vfio_bound; then check edu-bound-to-vfio-pci ok; else check edu-bound-to-vfio-pci fail "not every edu is bound to vfio-pci"; fi
G=\$(basename "\$(readlink /sys/bus/pci/devices/0000:00:06.0/iommu_group)")
client baseline-bench /dev/vfio/\$G --bdf 0000:00:06.0 --rounds $ROUNDS
dmar_check baseline-dmar-fault /tmp/baseline-bench.log

# doctor on a host where --vfio can work: exit 0, the devices found usable.
if /bin/uiommufd doctor --transport cuse --mount /run/uiommufd --vfio 0000:00:04.0 --vfio 0000:00:05.0 >/tmp/doctor.log 2>&1; then
  check doctor-vfio-ok ok
else
  check doctor-vfio-ok fail "doctor: \$(tr '\n' '|' < /tmp/doctor.log)"
fi
sed 's/^/DOCTOR: /' /tmp/doctor.log

# Start errors: one clear line and a non-zero exit, before any node appears.
start_error() {
  name=\$1; want=\$2; shift 2
  if timeout 20 /bin/uiommufd serve --transport cuse --mount /run/uiommufd-bad "\$@" >/tmp/bad.log 2>&1; then
    check \$name fail "serve \$* started"
  elif grep -q "\$want" /tmp/bad.log && [ "\$(grep -c ERROR /tmp/bad.log)" = 1 ]; then check \$name ok
  else check \$name fail "serve \$*: \$(tr '\n' ' ' < /tmp/bad.log)"; fi
}
start_error start-error-not-vfio-pci "not vfio-pci" --vfio 0000:00:1f.2
start_error start-error-no-device "no such PCI device" --vfio 0000:00:09.0
# The group of 06.0 held by this shell: the daemon must say it is in use.
exec 9<>/dev/vfio/\$G
start_error start-error-group-in-use "already open" --vfio 0000:00:06.0
exec 9<&-

say "daemon: uiommufd serve --transport cuse --mount /run/uiommufd $DAEMON_ARGS"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} /bin/uiommufd serve --transport cuse --mount /run/uiommufd $DAEMON_ARGS >/tmp/daemon.log 2>&1 &
DPID=\$!
nodes_up() {
  [ -c /dev/iommu ] && [ -e /run/uiommufd/vfio/devices/0000:00:04.0 ] && [ -e /run/uiommufd/vfio/devices/0000:00:05.0 ]
}
settled() { nodes_up || ! kill -0 \$DPID 2>/dev/null; }
wait_for 60 settled
if nodes_up; then check daemon-nodes ok
else check daemon-nodes fail "/dev/iommu or the device nodes missing (daemon \$(kill -0 \$DPID 2>/dev/null && echo running || echo exited))"; fi
say "nodes: \$(ls -l /dev/iommu /dev/vfio/vfio /run/uiommufd/vfio/devices 2>&1 | tr '\n' ' ')"

client dma-tests
dmar_check dmar-fault /tmp/dma-tests.log
client kill-test
client native
client legacy /dev/vfio/\$G --bdf 0000:00:06.0 --compat /run/uiommufd/vfio/vfio

# Unmodified QEMU: the host's own binary (its root mounted read-only over 9p at /host, run in a
# chroot of it) under the launcher, 04.0 passed through uiommufd (fds 3 and 4 opened by the
# client), driven over qtest by \`vfio_dma nested-qemu\`: edu DMA into the nested QEMU's RAM.
mkdir -p /host
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host 2>/tmp/9p.log; then
  check nested-hostroot-mount ok
  if [ -x /host$NESTED_QEMU ]; then check nested-qemu-binary ok; else check nested-qemu-binary fail "no /host$NESTED_QEMU"; fi
  if mount -o bind /dev /host/dev && mount -t proc proc /host/proc && mount -t sysfs sys /host/sys \
     && mount -t tmpfs tmp /host/tmp; then
    check nested-chroot-mounts ok
  else
    check nested-chroot-mounts fail "mounts over /host/{dev,proc,sys,tmp} failed"
  fi
  client nested-qemu --socket /host/tmp/qtest.sock --daemon-pid \$DPID --timeout 150 \
    --fd 3=/dev/iommu --fd 4=/run/uiommufd/vfio/devices/0000:00:04.0 -- \
    /bin/uiommufd launch -- chroot /host $NESTED_QEMU -S -qtest unix:/tmp/qtest.sock -qtest-log /dev/null \
    -accel tcg,tb-size=32 -M q35 -m 64M -nodefaults -display none \
    -object memory-backend-memfd,id=m0,size=64M,share=on -machine memory-backend=m0,aux-ram-share=on \
    -object iommufd,id=i0,fd=3 -device vfio-pci,fd=4,iommufd=i0,bus=pcie.0,addr=05.0
  # The legacy container path: 06.0 by host=BDF (QEMU opens /dev/vfio/vfio, which the launcher
  # answers with the daemon's compat node, and its own /dev/vfio/\$G, which the daemon joins
  # to that container's IOAS). No fds given: QEMU opens everything by name.
  client nested-qemu --label legacy --socket /host/tmp/qtest-legacy.sock --daemon-pid \$DPID --timeout 150 \
    --expect-fd /run/uiommufd/vfio/vfio --expect-fd /host/dev/vfio/\$G -- \
    /bin/uiommufd launch -- chroot /host $NESTED_QEMU -S -qtest unix:/tmp/qtest-legacy.sock -qtest-log /dev/null \
    -accel tcg,tb-size=32 -M q35 -m 64M -nodefaults -display none \
    -object memory-backend-memfd,id=m0,size=64M,share=on -machine memory-backend=m0,aux-ram-share=on \
    -device vfio-pci,host=0000:00:06.0,bus=pcie.0,addr=05.0
  # Without the launcher: QEMU uses the daemon's device node itself (regions by pread/pwrite
  # through FUSE, no mmap; TCG only, KVM refuses a file that is not the kernel's).
  client nested-qemu --label node --via-node --socket /host/tmp/qtest-node.sock --daemon-pid \$DPID --timeout 150 \
    --fd 3=/dev/iommu --fd 4=/run/uiommufd/vfio/devices/0000:00:04.0 \
    --expect-fd /run/uiommufd/vfio/devices/0000:00:04.0 -- \
    chroot /host $NESTED_QEMU -S -qtest unix:/tmp/qtest-node.sock -qtest-log /dev/null \
    -accel tcg,tb-size=32 -M q35 -m 64M -nodefaults -display none \
    -object memory-backend-memfd,id=m0,size=64M,share=on -machine memory-backend=m0,aux-ram-share=on \
    -object iommufd,id=i0,fd=3 -device vfio-pci,fd=4,iommufd=i0,bus=pcie.0,addr=05.0
  # A QEMU without shared RAM: it stops with the private-memory refusal as its error, the daemon's
  # log names the fix, and the device is free for the next user (the bench below binds it).
  timeout -s KILL 120 /bin/uiommufd launch -- chroot /host $NESTED_QEMU -S -accel tcg,tb-size=32 \
    -M q35 -m 64M -nodefaults -display none \
    -object iommufd,id=i0,fd=3 -device vfio-pci,fd=4,iommufd=i0,bus=pcie.0,addr=05.0 \
    3<>/dev/iommu 4<>/run/uiommufd/vfio/devices/0000:00:04.0 >/tmp/private-qemu.log 2>&1
  rc=\$?
  sed 's/^/PRIVATE-QEMU: /' /tmp/private-qemu.log
  if [ \$rc -ne 0 ] && [ \$rc -ne 137 ] && grep -q "Operation not supported" /tmp/private-qemu.log; then
    check private-ram-qemu-error ok
  else
    check private-ram-qemu-error fail "QEMU exit \$rc without the refusal"
  fi
  if grep -q "private memory cannot reach a real device" /tmp/daemon.log; then check private-ram-daemon-hint ok
  else check private-ram-daemon-hint fail "no hint in the daemon's log"; fi
  # Every QEMU gone: the daemon holds no context and no object for them any more.
  idle() { /bin/uiommufd status --json 2>/dev/null | tr -d ' ' | grep -Eq '"contexts":0[,}]'; }
  if wait_for 10 idle; then check qemus-left-nothing ok
  else check qemus-left-nothing fail "status: \$(/bin/uiommufd status --json 2>&1 | head -c 600)"; fi
  umount /host/tmp /host/sys /host/proc /host/dev 2>/dev/null
  umount /host || say "umount /host failed"
else
  check nested-hostroot-mount fail "mount -t 9p hostroot: \$(cat /tmp/9p.log)"
fi
client bench --baseline-group /dev/vfio/\$G --rounds $ROUNDS
m=\$(awk '\$2 == "bar0-read" && \$3 == "mmap" {print \$5}' /tmp/native.log)
p=\$(awk '\$2 == "bar0-read" && \$3 == "node" {print \$5}' /tmp/bench.log)
if [ -n "\$m" ] && [ -n "\$p" ]; then
  say "bench BAR0 register read median: node pread \$p s, kernel fd mmap (launch) \$m s, ratio \$(awk -v a=\$p -v b=\$m 'BEGIN {printf "%.0f", a / b}')"
else
  say "bench BAR0 register read: missing numbers (node '\$p', mmap '\$m')"
fi
for mib in 64 256; do
  b=\$(awk -v m=\$mib '\$2 == "baseline" && \$3 == m {print \$6}' /tmp/bench.log)
  u=\$(awk -v m=\$mib '\$2 == "uiommufd" && \$3 == m {print \$6}' /tmp/bench.log)
  if [ -n "\$b" ] && [ -n "\$u" ]; then
    say "bench \$mib MiB MAP+UNMAP median: baseline \$b s, uiommufd \$u s, ratio \$(awk -v b=\$b -v u=\$u 'BEGIN {printf "%.2f", u / b}')"
  else
    say "bench \$mib MiB: missing numbers (baseline '\$b', uiommufd '\$u')"
  fi
done

# SIGTERM while a client holds 64 MiB mapped with 04.0 attached (vfio_dma hold): the daemon must
# exit 0 within a deadline and release everything; the orphaned client's ioctl then fails.
# meminfo FIELD: its value in KiB.
meminfo() { awk -v f="\$1:" '\$1 == f {print \$2}' /proc/meminfo; }
mi() { say "meminfo \$1: MemFree \$((\$(meminfo MemFree) / 1024)) MiB, Shmem \$((\$(meminfo Shmem) / 1024)) MiB"; }
exited() { [ ! -e /proc/\$1 ] || [ "\$(awk '{print \$3}' /proc/\$1/stat 2>/dev/null)" = Z ]; }
no_daemon() { for c in /proc/[0-9]*/comm; do [ "\$(cat \$c 2>/dev/null)" = uiommufd ] && return 1; done; return 0; }
# hold_read UNTIL: copy the holder's lines to /tmp/hold.log until one starts with UNTIL (each
# line within 60 s).
hold_read() {
  while read -t 60 -r line <&8; do
    echo "\$line" >> /tmp/hold.log
    case \$line in "\$1"*) return 0 ;; esac
  done
  return 1
}
mkfifo /tmp/hold.in /tmp/hold.out
# Both ends opened read-write first: no open blocks, whatever the holder does.
exec 7<>/tmp/hold.in 8<>/tmp/hold.out
: > /tmp/hold.log
say "client hold start at \$(up) s"
timeout -s KILL $CLIENT_TIMEOUT /bin/vfio_dma hold </tmp/hold.in >/tmp/hold.out 2>&1 &
HPID=\$!
if hold_read held; then check hold-ready ok; else check hold-ready fail "no 'held' line from the holder"; fi
# What the holder's 64 MiB (+ 2 MiB) of memfd must give back once it and the daemon are gone.
MF1=\$(meminfo MemFree); SH1=\$(meminfo Shmem)
mi holder-ready
kill -TERM \$DPID 2>/dev/null
T0=\$(up)
if wait_for 20 exited \$DPID; then
  check daemon-exits-after-sigterm-with-client ok
  say "daemon gone \$(awk -v a=\$T0 -v b=\$(up) 'BEGIN {printf "%.2f", b - a}') s after SIGTERM"
else
  check daemon-exits-after-sigterm-with-client fail "still running 20 s after SIGTERM with a client holding 04.0"
  for t in /proc/\$DPID/task/*; do
    say "daemon thread \$(basename \$t) \$(cat \$t/comm) state \$(awk '{print \$3}' \$t/stat) wchan \$(cat \$t/wchan 2>/dev/null)"
    sed 's/^/VFIO-GUEST:   /' \$t/stack 2>/dev/null
  done
  kill -KILL \$DPID
fi
wait \$DPID
DRC=\$?
say "daemon exit \$DRC"
mi daemon-exited
if [ \$DRC = 0 ]; then check daemon-exit-0 ok; else check daemon-exit-0 fail "exit status \$DRC"; fi
sed 's/^/DAEMON: /' /tmp/daemon.log
if grep -q 'released files still open at shutdown' /tmp/daemon.log; then check daemon-released-held-files ok
else check daemon-released-held-files fail "no 'released files still open at shutdown' in its log"; fi
if grep -q ' ERROR ' /tmp/daemon.log; then check daemon-log-no-error fail "\$(grep ' ERROR ' /tmp/daemon.log | head -n3 | tr '\\n' ' ')"
else check daemon-log-no-error ok; fi
if wait_for 5 no_daemon; then check no-uiommufd-process ok
else check no-uiommufd-process fail "a uiommufd process remains"; fi
nodes_gone() { [ ! -e /dev/iommu ]; }
if wait_for 5 nodes_gone; then check cuse-node-gone ok; else check cuse-node-gone fail "/dev/iommu still there"; fi
# The holder's ioctl on its orphaned iommufd must fail, not hang.
echo go >&7
hold_read "RESULT hold: " || say "holder: no RESULT line"
if wait_for 30 exited \$HPID; then wait \$HPID; HRC=\$?; else kill -KILL \$HPID; wait \$HPID; HRC=killed; fi
exec 7>&- 8<&-
sed "s/^/CLIENT: [hold] /" /tmp/hold.log
res=\$(grep "^RESULT hold: " /tmp/hold.log | tail -n1)
if [ -z "\$res" ]; then check hold fail "no RESULT line (exit \$HRC)"
else
  PASSED=\$((PASSED + \$(echo "\$res" | awk '{print \$3}')))
  FAILED=\$((FAILED + \$(echo "\$res" | awk '{print \$5}')))
  [ "\$HRC" = 0 ] || check hold-exit fail "exit \$HRC"
fi
say "client hold exit \$HRC at \$(up) s"
# Everything comes back: the holder's memfd, pinned by the daemon's container until it exited.
mem_back() { [ \$((SH1 - \$(meminfo Shmem))) -ge 61440 ] && [ \$((\$(meminfo MemFree) - MF1)) -ge 32768 ]; }
if wait_for 30 mem_back; then check memory-back-after-daemon-and-holder ok
else check memory-back-after-daemon-and-holder fail "with the holder: MemFree \$((MF1 / 1024)) MiB, Shmem \$((SH1 / 1024)) MiB; 30 s after: MemFree \$((\$(meminfo MemFree) / 1024)) MiB, Shmem \$((\$(meminfo Shmem) / 1024)) MiB (expected MemFree +32, Shmem -60)"; fi
mi holder-gone
# The daemon let go of 04.0's group: the kernel's own container drives it again.
G4=\$(basename "\$(readlink /sys/bus/pci/devices/0000:00:04.0/iommu_group)")
client baseline-bench /dev/vfio/\$G4 --bdf 0000:00:04.0 --rounds 1
dmesg | grep -E 'DMAR|vfio' | sed 's/^/DMESG: /'
say "summary: \$PASSED passed, \$FAILED failed"
say "done at \$(up) s"
poweroff -f
EOF
chmod +x "$R/init"
guest_pack "$R" "$OUT/initrd.cpio.gz"

# ---- boot ----
LOG=$OUT/console.log
echo "booting $GUEST_KVER under TCG with 3 edu devices after $(( $(date +%s) - start )) s of preparation (log: $LOG)" >&2
guest_boot "$LOG" "$BOOT_TIMEOUT" "$OUT/initrd.cpio.gz" "loglevel=3 intel_iommu=on iommu.strict=1" \
  -M q35,kernel-irqchip=split -cpu max -smp 2 -m 2G -device intel-iommu,intremap=on \
  -device edu,addr=04.0 -device edu,addr=05.0 -device edu,addr=06.0 \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on
qrc=$GUEST_QEMU_RC
grep -aE '^(VFIO-GUEST|CLIENT|DAEMON|DMESG):' "$LOG" >&2 || true
echo "qemu exit $qrc, $(( $(date +%s) - start )) s" >&2
summary=$(grep -aE '^VFIO-GUEST: summary: [0-9]+ passed, [0-9]+ failed$' "$LOG" | tail -n1 || true)
if [ -n "$summary" ] && grep -q ' 0 failed$' <<<"$summary" && ! grep -q ': 0 passed' <<<"$summary" \
   && grep -aq '^VFIO-GUEST: done' "$LOG"; then
  echo "PASS: VFIO DMA in the guest: ${summary#VFIO-GUEST: summary: }"
  exit 0
fi
echo "FAIL: ${summary:-no summary line} (log: $LOG)" >&2
grep -aE '^(VFIO-GUEST|CLIENT): .*FAIL' "$LOG" >&2 || tail -n 40 "$LOG" >&2
exit 1
