#!/usr/bin/env bash
# End-to-end: unmodified QEMU 10 (vfio-pci over iommufd, TCG) drives uiommufd's dmacopy device.
#
# Starts `uiommufd serve --transport fuse --device dmacopy`, opens the iommufd node and the device
# node in this shell and hands the fds to QEMU (-object iommufd,fd=N -device vfio-pci,fd=M), with a
# pattern preloaded into guest RAM by -device loader. Over QMP (human-monitor-command) it places
# BAR0 and enables I/O + bus mastering through 0xcf8/0xcfc, programs the registers by port I/O,
# checks with `xp` that the pattern was copied, that an unmapped IOVA sets the error bit, and that
# after QEMU quits the daemon's status shows no objects and no pinned pages. The daemon records the
# session (`--record`); the recording must replay on a fresh dmacopy daemon and, transformed for the
# selftest's mock device (`replay --to-mock`), on a fresh `--selftest` one (docs/refkernel.md).
#
# Env: UIOMMUFD (binary; default: cargo build, target/debug/uiommufd), QEMU (default
# qemu-system-x86_64), TRACE=1 (QEMU -trace 'vfio_*' -trace 'iommufd_*', printed at the end),
# KEEP=1 (keep the work directory), RECORD_OUT=DIR (copy the recording there, e.g. to refresh
# tests/replay/qemu/qemu_dmacopy.jsonl). Exit 0 pass, 1 fail, 77 skip (no QEMU; see ci-install.sh).
# Needs root (FUSE mount, pidfd_getfd), perl (perl-base) for the QMP socket.
set -euo pipefail
cd "$(dirname "$0")/.."

QEMU=${QEMU:-qemu-system-x86_64}
if ! command -v "$QEMU" >/dev/null; then
  echo "SKIP: $QEMU not found (scripts/ci-install.sh installs QEMU 10 from bookworm-backports)" >&2
  exit 77
fi
if [ -z "${UIOMMUFD:-}" ]; then
  cargo build -q --bin uiommufd
  UIOMMUFD=${CARGO_TARGET_DIR:-target}/debug/uiommufd
fi

W=$(mktemp -d /tmp/uiommufd-qemu-e2e.XXXXXX)
DAEMON_PID= QEMU_PID=
cleanup() {
  set +e
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null && wait "$QEMU_PID" 2>/dev/null
  [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  if [ -n "$QEMU_PID" ] && ! kill -0 "$QEMU_PID" 2>/dev/null; then
    wait "$QEMU_PID"; echo "QEMU is gone (exit status $?)" >&2; QEMU_PID=
  fi
  echo "---- QEMU stderr ----" >&2; cat "$W/qemu.log" >&2 2>/dev/null || true
  echo "---- daemon stderr (tail) ----" >&2; tail -n 30 "$W/daemon.log" >&2 2>/dev/null || true
  exit 1
}

MNT=$W/m
REC=$W/rec
RUST_LOG=${RUST_LOG:-warn} "$UIOMMUFD" serve --transport fuse --mount "$MNT" --device dmacopy \
  --control "$W/control.sock" --record "$REC" 2>"$W/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 200); do [ -e "$MNT/iommu" ] && break; sleep 0.05; done
[ -e "$MNT/vfio/devices/dmacopy0" ] || fail "daemon did not come up"

SRC=0x100000 DST=0x200000 DST2=0x300000 UNMAPPED=0x8000000 IO=0xc000
perl -e 'print pack("V*", map { (($_ * 2654435761) & 0xffffffff) ^ 0x5a5aa5a5 } 0..1023)' >"$W/pattern.bin"

exec {IOMMU_FD}<>"$MNT/iommu" {DEV_FD}<>"$MNT/vfio/devices/dmacopy0"
trace=()
[ "${TRACE:-0}" = 1 ] && trace=(-trace 'vfio_*' -trace 'iommufd_*')
"$QEMU" -M q35,accel=tcg -m 64M -display none -nodefaults -S \
  -qmp "unix:$W/qmp.sock,server=on,wait=off" \
  -object "iommufd,id=i0,fd=$IOMMU_FD" \
  -device "vfio-pci,fd=$DEV_FD,iommufd=i0,id=dma0" \
  -device "loader,file=$W/pattern.bin,addr=$SRC,force-raw=on" \
  "${trace[@]}" </dev/null >/dev/null 2>"$W/qemu.log" &
QEMU_PID=$!
# QEMU has its own copies; ours must not keep the context or the binding alive.
exec {IOMMU_FD}<&- {DEV_FD}<&-
for _ in $(seq 300); do [ -S "$W/qmp.sock" ] && break; kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited"; sleep 0.1; done

# QMP client: one HMP command per input line, its output on one output line (newlines -> '|').
QMP_CLIENT='
use IO::Socket::UNIX; $| = 1;
my $s; for (1..100) { $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) and last; select(undef, undef, undef, 0.1); }
$s or die "connect: $!";
sub reply { while (my $l = <$s>) { return $l if $l =~ /"(return|error)"/; } die "QMP closed\n"; }
<$s>; print $s "{\"execute\":\"qmp_capabilities\"}\n"; reply();
while (my $cmd = <STDIN>) {
  chomp $cmd;
  if ($cmd eq "quit") { print $s "{\"execute\":\"quit\"}\n"; reply(); print "ok\n"; next; }
  $cmd =~ s/(["\\])/\\$1/g;
  print $s "{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"$cmd\"}}\n";
  my $r = reply();
  if ($r =~ /"error"/) { chomp $r; print "ERROR $r\n"; next; }
  my ($out) = $r =~ /"return":\s*"((?:[^"\\]|\\.)*)"/;
  $out = "" unless defined $out;
  $out =~ s/\\r//g; $out =~ s/\\n/|/g; $out =~ s/\\t/ /g; $out =~ s/\\(["\\\/])/$1/g;
  print "$out\n";
}'
coproc QMP { perl -e "$QMP_CLIENT" "$W/qmp.sock"; }
# Coprocess fds are not visible in subshells ($(...)): keep plain duplicates.
exec {QIN}>&"${QMP[1]}" {QOUT}<&"${QMP[0]}"
hmp() {
  echo "$1" >&"$QIN"
  local out
  IFS= read -r -t 60 out <&"$QOUT" || fail "no QMP answer to: $1"
  case "$out" in ERROR*) fail "QMP: $1: $out";; esac
  printf '%s\n' "$out"
}
outl() { local r; r=$(hmp "o /w $1 $2"); [ -z "${r//|/}" ] || fail "o $1 $2: $r"; }
inl() { local r; r=$(hmp "i /w $1"); r=${r##*= }; printf '0x%08x\n' "$(( ${r%%|*} ))"; }
cfg_addr() { printf '0x%x' $(( 0x80000000 | $1 << 11 | $2 )); }
cfg_read() { outl 0xcf8 "$(cfg_addr "$1" "$2")"; inl 0xcfc; }
cfg_write() { outl 0xcf8 "$(cfg_addr "$1" "$2")"; outl 0xcfc "$3"; }
xp_words() { hmp "xp /$2xw $1" | tr '|' '\n' | sed -n 's/^[^:]*: *//p' | tr -s ' ' '\n' | sed '/^$/d; s/^0x//'; }
dev_copy() {
  outl $((IO + 4)) 0xffffffff; outl $((IO + 8)) "$1"; outl $((IO + 12)) 0
  outl $((IO + 16)) "$2"; outl $((IO + 20)) 0; outl $((IO + 24)) "$3"; outl $((IO + 28)) 1
  inl $((IO + 4))
}
check() { [ "$2" = "$3" ] || fail "$1: got $2, want $3"; echo "ok: $1"; }

# Find the device (1234:dc01) on bus 0.
slot=$(hmp "info pci" | tr '|' '\n' | awk '/Bus/ { gsub(",", ""); d = $4 } /1234:dc01/ { print d; exit }')
[ -n "$slot" ] || fail "dmacopy not in info pci"
check "vendor/device via 0xcf8/0xcfc" "$(cfg_read "$slot" 0)" 0xdc011234
cfg_write "$slot" 0x10 0xffffffff
check "BAR0 size probe (32-byte I/O BAR)" "$(cfg_read "$slot" 0x10)" 0xffffffe1
cfg_write "$slot" 0x10 $IO
cfg_write "$slot" 0x04 0x5
check "ID register through the I/O BAR" "$(inl $IO)" 0x75696f6d

want=$(od -An -tx4 -v "$W/pattern.bin" | tr -s ' ' '\n' | sed '/^$/d')
[ "$(wc -l <<<"$want")" = 1024 ] || fail "pattern file"
check "pattern preloaded at $SRC" "$(xp_words $SRC 1024)" "$want"
check "copy status (done)" "$(dev_copy $SRC $DST 4096)" 0x00000004
check "pattern copied to $DST" "$(xp_words $DST 1024)" "$want"
zeros=$(printf '00000000\n%.0s' $(seq 16))
check "unmapped source: done + error" "$(dev_copy $UNMAPPED $DST2 64)" 0x00000006
check "destination untouched" "$(xp_words $DST2 16)" "$zeros"
check "unmapped destination: done + error" "$(dev_copy $SRC $UNMAPPED 64)" 0x00000006
outl $((IO + 4)) 6
check "status write-1-to-clear" "$(inl $((IO + 4)))" 0x00000000

status() { cat "$MNT/status"; }
field() { status | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
[ "$(field objects)" -ge 3 ] || fail "objects while running: $(status)"
[ "$(field pinned_pages)" -gt 0 ] || fail "no pinned pages while running: $(status)"

echo quit >&"$QIN"
for _ in $(seq 300); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
wait "$QEMU_PID" || fail "QEMU exit status $?"
QEMU_PID=
for _ in $(seq 100); do
  [ "$(field objects)" = 0 ] && [ "$(field pinned_pages)" = 0 ] && [ "$(field contexts)" = 0 ] && break
  sleep 0.1
done
check "objects after quit" "$(field objects)" 0
check "pinned pages after quit" "$(field pinned_pages)" 0

# The recorded session (serve --record): one script, the device's BIND/ATTACH as steps. It must
# replay on a fresh daemon serving dmacopy as recorded, and, transformed for the selftest's mock
# device (replay --to-mock, what scripts/refkernel.sh runs on the real kernel from the committed
# tests/replay/qemu/qemu_dmacopy.jsonl), on a fresh `--selftest` daemon. RECORD_OUT=DIR keeps it.
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || fail "daemon exit status $?"; DAEMON_PID=
recs=("$REC"/*.jsonl)
[ "${#recs[@]}" = 1 ] && [ -f "${recs[0]}" ] || fail "recordings: ${recs[*]}"
grep -q '"ioctl": "VFIO_DEVICE_BIND_IOMMUFD", "fd": "dmacopy0"' "${recs[0]}" || fail "no BIND in ${recs[0]}"
grep -q '"ioctl": "VFIO_DEVICE_ATTACH_IOMMUFD_PT"' "${recs[0]}" || fail "no ATTACH in ${recs[0]}"
[ -n "${RECORD_OUT:-}" ] && { mkdir -p "$RECORD_OUT"; cp "${recs[0]}" "$RECORD_OUT/"; }
"$UIOMMUFD" replay --to-mock "$W/mock" "${recs[0]}" || fail "replay --to-mock"
fresh_replay() {  # MOUNT SERVE-FLAGS... -- SCRIPT
  local m=$1 out; shift
  local flags=(); while [ "$1" != -- ]; do flags+=("$1"); shift; done; shift
  RUST_LOG=warn "$UIOMMUFD" serve --transport fuse --mount "$m" "${flags[@]}" 2>>"$W/daemon.log" &
  DAEMON_PID=$!
  for _ in $(seq 200); do [ -e "$m/iommu" ] && break; sleep 0.05; done
  [ -e "$m/iommu" ] || fail "fresh daemon (${flags[*]}) did not come up"
  out=$("$UIOMMUFD" replay --node "$m/iommu" "$1" 2>&1) || fail "replay of $1: $out"
  kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || true; DAEMON_PID=
  echo "$out" | tail -n1
}
# (Not in a $(...) subshell: a failure must stop the daemon it started, through cleanup.)
fresh_replay "$W/m2" --device dmacopy -- "${recs[0]}" >"$W/raw.out"
check "recording replays on a fresh dmacopy daemon" "$(cat "$W/raw.out")" "1 passed, 0 failed"
fresh_replay "$W/m3" --selftest -- "$W/mock/$(basename "${recs[0]}")" >"$W/mock.out"
check "transformed for the mock, it replays on a fresh --selftest daemon" "$(cat "$W/mock.out")" \
  "1 passed, 0 failed"
[ "${TRACE:-0}" = 1 ] && { echo "---- QEMU trace ----"; cat "$W/qemu.log"; }
echo "PASS: QEMU $("$QEMU" --version | head -n1 | awk '{print $4}') drove dmacopy through uiommufd"
