#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine (root). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/sys/capability.h ] || need+=(libcap-dev)
# systemd-analyze verifies scripts/uiommufd.service (tests/systemd_unit.rs); the package does not
# need to be the init system for that.
command -v systemd-analyze >/dev/null || need+=(systemd)
# scripts/package-deb.sh: dpkg-shlibdeps (Depends), objdump/strip (binutils), man (its check).
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v objdump >/dev/null || need+=(binutils)
command -v man >/dev/null || need+=(man-db)
# scripts/refkernel.sh builds Linux 7.2 (the oracle).
for t in flex bison bc make; do command -v $t >/dev/null || need+=("$t"); done
[ -e /usr/include/libelf.h ] || need+=(libelf-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
[ -e /dev/fuse ] || modprobe fuse || true

# QEMU 10 (iommufd-capable vfio-pci) for the QEMU end-to-end test: bookworm has 7.2, so take
# qemu-system-x86 from bookworm-backports. The mirror comes from the machine's own debian.sources;
# backports stays at apt's default low priority, so nothing else is pulled from it.
qemu_major() { qemu-system-x86_64 --version 2>/dev/null | awk 'NR==1 {split($4, v, "."); print v[1]}'; }
if [ "$(qemu_major)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  [ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
  cat > /etc/apt/sources.list.d/uiommufd-bookworm-backports.sources <<SRC
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
  qemu-system-x86_64 --version | head -n1
fi
