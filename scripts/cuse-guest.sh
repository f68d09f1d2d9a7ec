#!/usr/bin/env bash
# CUSE for real: boot Debian's 6.12 kernel (CONFIG_CUSE=m) under QEMU/TCG with a busybox initramfs
# that runs `uiommufd serve --transport cuse` (which creates /dev/iommu and /dev/vfio/vfio through
# /dev/cuse) and the replay corpus (tests/replay/*.jsonl) against those character devices.
#
# Packages (linux-image-6.12 from bookworm-backports, busybox-static from bookworm) are fetched with a
# private apt configuration (mirror taken from the host's debian.sources), unpacked with dpkg-deb -x
# under target/cuse-guest/ and never installed on the host. The serial console goes to
# target/cuse-guest/console.log.
#
# Env: UIOMMUFD (binary; default: cargo build --release, target/release/uiommufd), QEMU (default
# qemu-system-x86_64), KERNEL_PKG (default: newest linux-image-6.12.*+deb12-amd64), REPLAY (space
# separated scripts or dirs; default tests/replay), BOOT_TIMEOUT (seconds, default 300),
# RUST_LOG (daemon log level in the guest, default info).
# Exit 0 only if the guest printed the replay summary with 0 failed; 1 fail; 77 skip (no QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/target/cuse-guest
QEMU=${QEMU:-qemu-system-x86_64}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-300}
start=$(date +%s)
command -v "$QEMU" >/dev/null || { echo "SKIP: $QEMU not found" >&2; exit 77; }

# ---- binary ----
if [ -z "${UIOMMUFD:-}" ]; then
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build -q --release --bin uiommufd
  UIOMMUFD=${CARGO_TARGET_DIR:-$ROOT/target}/release/uiommufd
fi

# ---- packages ----
mkdir -p "$OUT"
apt_dir=$OUT/apt
if [ ! -f "$OUT/pkg/.done" ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  [ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  printf 'deb %s bookworm-backports main\ndeb %s bookworm main\n' "$mirror" "$mirror" > "$apt_dir/sources.list"
  opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
        -o Acquire::Check-Valid-Until=false -o APT::Get::List-Cleanup=false)
  apt-get "${opts[@]}" update >&2
  pkg=${KERNEL_PKG:-$(apt-cache "${opts[@]}" pkgnames linux-image-6.12 \
        | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | sort -V | tail -n1)}
  [ -n "$pkg" ] || { echo "no linux-image-6.12 in bookworm-backports" >&2; exit 1; }
  echo "kernel package: $pkg" >&2
  (cd "$apt_dir" && rm -f ./*.deb && apt-get "${opts[@]}" download "$pkg" busybox-static >&2)
  rm -rf "$OUT/pkg"; mkdir -p "$OUT/pkg"
  for d in "$apt_dir"/*.deb; do dpkg-deb -x "$d" "$OUT/pkg"; done
  rm -f "$apt_dir"/*.deb
  touch "$OUT/pkg/.done"
fi
P=$OUT/pkg
KVER=$(ls "$P/lib/modules" | head -n1)
VMLINUZ=$P/boot/vmlinuz-$KVER
BUSYBOX=$P/bin/busybox
grep -q '^CONFIG_CUSE=[ym]' "$P/boot/config-$KVER" || { echo "kernel $KVER has no CUSE" >&2; exit 1; }

# ---- initramfs ----
R=$OUT/root
rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,run,tmp,lib/modules,replay}
cp "$BUSYBOX" "$R/bin/busybox"
cp "$UIOMMUFD" "$R/bin/uiommufd"
# Shared libraries and the dynamic loader, at the paths the binary asks for.
for lib in $(ldd "$UIOMMUFD" | grep -o '/[^ ]*'); do
  mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
done
# cuse.ko (its modinfo depends= is empty: fuse is built in); modules may ship compressed.
for m in kernel/fs/fuse/cuse; do
  src=$(ls "$P/lib/modules/$KVER/$m".ko* | head -n1)
  case $src in
    *.xz) xz -dc "$src" > "$R/lib/modules/$(basename "$m").ko" ;;
    *.zst) zstd -dc "$src" > "$R/lib/modules/$(basename "$m").ko" ;;
    *) cp "$src" "$R/lib/modules/" ;;
  esac
done
for s in ${REPLAY:-tests/replay}; do
  if [ -d "$s" ]; then cp "$s"/*.jsonl "$R/replay/"; else cp "$s" "$R/replay/"; fi
done
cat > "$R/init" <<EOF
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "CUSE-GUEST: kernel \$(uname -r)"
insmod /lib/modules/cuse.ko || echo "CUSE-GUEST: insmod cuse failed"
echo "CUSE-GUEST: \$(ls -l /dev/cuse 2>&1)"
NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} /bin/uiommufd serve --selftest --transport cuse --mount /run/uiommufd >/tmp/daemon.log 2>&1 &
DPID=\$!
i=0
while [ \$i -lt 300 ] && ! { [ -c /dev/iommu ] && [ -c /dev/vfio/vfio ]; }; do
  kill -0 \$DPID 2>/dev/null || break
  sleep 0.1; i=\$((i+1))
done
echo "CUSE-GUEST: nodes: \$(ls -l /dev/iommu /dev/vfio/vfio 2>&1 | tr '\n' ' ')"
echo "CUSE-GUEST: /proc/devices: \$(grep -E ' (iommu|vfio/vfio)$' /proc/devices | tr '\n' ' ')"
if [ -c /dev/iommu ]; then
  echo "CUSE-GUEST: replay start"
  /bin/uiommufd replay --node /dev/iommu --vfio-node /dev/vfio/vfio /replay >/tmp/replay.log 2>&1
  echo "CUSE-GUEST: replay exit \$?"
  sed 's/^/REPLAY: /' /tmp/replay.log
else
  echo "CUSE-GUEST: nodes did not appear"
fi
kill -TERM \$DPID 2>/dev/null
wait \$DPID
echo "CUSE-GUEST: daemon exit \$?"
sed 's/^/DAEMON: /' /tmp/daemon.log
echo "CUSE-GUEST: done"
poweroff -f
EOF
chmod +x "$R/init"
(cd "$R" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 > "$OUT/initrd.cpio.gz")

# ---- boot ----
LOG=$OUT/console.log
echo "booting $KVER under TCG (log: $LOG)" >&2
set +e
timeout "$BOOT_TIMEOUT" "$QEMU" -accel tcg -m 512M -nographic -no-reboot \
  -kernel "$VMLINUZ" -initrd "$OUT/initrd.cpio.gz" \
  -append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1 | tr -d '\r' > "$LOG"
qrc=${PIPESTATUS[0]}
set -e
grep -E '^(CUSE-GUEST|REPLAY|DAEMON):' "$LOG" >&2 || true
echo "qemu exit $qrc, $(( $(date +%s) - start )) s" >&2
summary=$(grep -E '^REPLAY: [0-9]+ passed, [0-9]+ failed' "$LOG" | tail -n1 || true)
if [ -n "$summary" ] && grep -q ', 0 failed' <<<"$summary" && grep -qx 'CUSE-GUEST: replay exit 0' "$LOG"; then
  echo "PASS: CUSE in the guest: ${summary#REPLAY: }"
  exit 0
fi
echo "FAIL: no replay summary with 0 failed in $LOG" >&2
tail -n 40 "$LOG" >&2
exit 1
