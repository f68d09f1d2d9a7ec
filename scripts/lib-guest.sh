# Sourced by the guest scripts (cuse-guest.sh, vfio-guest.sh): Debian's 6.12 kernel and
# busybox-static fetched with a private apt configuration, a busybox initramfs, and a QEMU/TCG boot
# whose serial console goes to a log file. Callers set `set -euo pipefail` and ROOT (the checkout).
#
# Env: KERNEL_PKG (default: newest linux-image-6.12.*+deb12-amd64 in bookworm-backports),
# GUEST_PKG_DIR (unpacked packages, default $ROOT/target/guest-pkg), QEMU (default
# qemu-system-x86_64).

QEMU=${QEMU:-qemu-system-x86_64}

# guest_build_uiommufd: sets UIOMMUFD to the daemon binary (builds it with cargo unless set).
guest_build_uiommufd() {
  if [ -z "${UIOMMUFD:-}" ]; then
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target} cargo build -q --release --bin uiommufd
    UIOMMUFD=${CARGO_TARGET_DIR:-$ROOT/target}/release/uiommufd
  fi
}

# guest_packages: fetch and unpack the kernel and busybox once (cached under GUEST_PKG_DIR); sets
# GUEST_PKG (the unpacked tree), GUEST_KVER, GUEST_VMLINUZ, GUEST_CONFIG and GUEST_BUSYBOX.
guest_packages() {
  local P=${GUEST_PKG_DIR:-$ROOT/target/guest-pkg}
  if [ ! -f "$P/.done" ]; then
    local apt_dir=$P.apt mirror pkg
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
    [ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; return 1; }
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    printf 'deb %s bookworm-backports main\ndeb %s bookworm main\n' "$mirror" "$mirror" > "$apt_dir/sources.list"
    local opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
          -o Acquire::Check-Valid-Until=false -o APT::Get::List-Cleanup=false)
    apt-get "${opts[@]}" update >&2
    pkg=${KERNEL_PKG:-$(apt-cache "${opts[@]}" pkgnames linux-image-6.12 \
          | grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64$' | sort -V | tail -n1)}
    [ -n "$pkg" ] || { echo "no linux-image-6.12 in bookworm-backports" >&2; return 1; }
    echo "kernel package: $pkg" >&2
    (cd "$apt_dir" && rm -f ./*.deb && apt-get "${opts[@]}" download "$pkg" busybox-static >&2)
    rm -rf "$P"; mkdir -p "$P"
    local d
    for d in "$apt_dir"/*.deb; do dpkg-deb -x "$d" "$P"; done
    rm -f "$apt_dir"/*.deb
    touch "$P/.done"
  fi
  GUEST_PKG=$P
  GUEST_KVER=$(ls "$P/lib/modules" | head -n1)
  GUEST_VMLINUZ=$P/boot/vmlinuz-$GUEST_KVER
  GUEST_CONFIG=$P/boot/config-$GUEST_KVER
  GUEST_BUSYBOX=$P/bin/busybox
}

# guest_root DIR [SUBDIR...]: a fresh initramfs tree with busybox and the given extra directories.
guest_root() {
  local R=$1; shift
  rm -rf "$R"; mkdir -p "$R"/{bin,proc,sys,dev,run,tmp,lib/modules}
  local d
  for d in "$@"; do mkdir -p "$R/$d"; done
  cp "$GUEST_BUSYBOX" "$R/bin/busybox"
}

# guest_add_bin DIR BINARY NAME: copy BINARY to DIR/bin/NAME with its shared libraries and the
# dynamic loader, at the paths the binary asks for.
guest_add_bin() {
  local R=$1 bin=$2 name=$3 lib
  cp "$bin" "$R/bin/$name"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
  done
}

# guest_add_module DIR CONFIG_SYMBOL PATH: PATH is the module under lib/modules/KVER without .ko
# (e.g. kernel/fs/fuse/cuse). If the kernel config has SYMBOL=m, the module is decompressed into
# DIR/lib/modules/NAME.ko and NAME is appended to DIR/lib/modules/order (the init script insmods
# them in that order); =y needs nothing; anything else fails.
guest_add_module() {
  local R=$1 sym=$2 m=$3 val src dst
  val=$(sed -n "s/^$sym=//p" "$GUEST_CONFIG")
  case $val in
    y) echo "$sym=y: $(basename "$m") is built in" >&2; return 0 ;;
    m) ;;
    *) echo "kernel $GUEST_KVER: $sym is '${val:-unset}', need y or m" >&2; return 1 ;;
  esac
  src=$(ls "$GUEST_PKG/lib/modules/$GUEST_KVER/$m".ko* 2>/dev/null | head -n1)
  [ -n "$src" ] || { echo "$sym=m but no $m.ko* in the package" >&2; return 1; }
  dst=$R/lib/modules/$(basename "$m").ko
  case $src in
    *.xz) xz -dc "$src" > "$dst" ;;
    *.zst) zstd -dc "$src" > "$dst" ;;
    *) cp "$src" "$dst" ;;
  esac
  basename "$m" >> "$R/lib/modules/order"
}

# guest_pack DIR OUT: DIR as a gzip newc cpio (busybox's own cpio: the host may have none).
guest_pack() {
  (cd "$1" && find . | "$GUEST_BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 > "$2")
}

# guest_boot LOG TIMEOUT INITRD APPEND [QEMU ARGS...]: boot GUEST_VMLINUZ under TCG; the serial
# console (CRs stripped) goes to LOG. Sets GUEST_QEMU_RC (124 on timeout). Never fails itself.
guest_boot() {
  local log=$1 secs=$2 initrd=$3 append=$4
  shift 4
  set +e
  timeout "$secs" "$QEMU" -accel tcg -nographic -no-reboot -nic none "$@" \
    -kernel "$GUEST_VMLINUZ" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet $append" </dev/null 2>&1 | tr -d '\r' > "$log"
  GUEST_QEMU_RC=${PIPESTATUS[0]}
  set -e
}

# guest_init_head TAG: the start of an /init script: busybox applets, /proc, /sys, /dev, the kernel
# version and the modules of lib/modules/order inserted in order (failures print "TAG: insmod").
guest_init_head() {
  cat <<EOS
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "$1: kernel \$(uname -r)"
for m in \$(cat /lib/modules/order 2>/dev/null); do
  insmod /lib/modules/\$m.ko || echo "$1: insmod \$m failed"
done
EOS
}
