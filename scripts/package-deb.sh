#!/usr/bin/env bash
# Build the Debian package of uiommufd from this workspace.
#
#   scripts/package-deb.sh [--check] [OUTDIR]
#
# Builds `uiommufd` (release), lays out the package tree and builds
# OUTDIR/uiommufd_VERSION_ARCH.deb with dpkg-deb (default OUTDIR: <target dir>/debian).
# Contents: /usr/bin/uiommufd, the systemd unit (scripts/uiommufd.service), the default
# configuration /etc/uiommufd/uiommufd.toml (scripts/uiommufd.toml, a conffile), man pages
# generated from the CLI (`uiommufd man DIR`), README and copyright.
#
# --check: then install the package into an empty root (dpkg --root, scripts run chrootless),
# check files, modes, owners and the conffile, verify the unit with systemd-analyze, run the
# installed binary (--help, --version, doctor), the default config's keys against `serve`,
# lintian when installed, and purge it again. Exits non-zero on any failed check.
#
# Environment: DEB_MAINTAINER (default "uiommufd developers <uiommufd@localhost>").
set -euo pipefail

usage() { echo "usage: $0 [--check] [OUTDIR]" >&2; exit 2; }
check=0
outdir=
for a in "$@"; do
    case "$a" in
        --check) check=1 ;;
        -h|--help) usage ;;
        -*) usage ;;
        *) [ -z "$outdir" ] || usage; outdir=$a ;;
    esac
done

src=$(cd "$(dirname "$0")/.." && pwd)
cd "$src"
for tool in cargo dpkg-deb dpkg objdump strip gzip; do
    command -v "$tool" >/dev/null || { echo "package-deb: $tool is required" >&2; exit 1; }
done

# --- build ---------------------------------------------------------------------------------
cargo build --release --bin uiommufd
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || { echo "package-deb: no target directory from cargo metadata" >&2; exit 1; }
bin=$target_dir/release/uiommufd
outdir=${outdir:-$target_dir/debian}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

# The [package] version of Cargo.toml.
version=$(awk '/^\[/{p=($0=="[package]")} p&&/^version *=/{gsub(/.*= *"|".*/,""); print; exit}' Cargo.toml)
[ -n "$version" ] || { echo "package-deb: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
maintainer=${DEB_MAINTAINER:-uiommufd developers <uiommufd@localhost>}
# Reproducible timestamps: the commit's time (dpkg-deb clamps mtimes to it).
if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git -C "$src" rev-parse HEAD >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git -C "$src" log -1 --format=%ct)
    export SOURCE_DATE_EPOCH
fi
commit=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)

# --- package tree --------------------------------------------------------------------------
pkg=uiommufd_${version}_${arch}
tree=$outdir/$pkg
rm -rf "$tree"
umask 022
install -d "$tree/DEBIAN" "$tree/usr/bin" "$tree/usr/lib/systemd/system" "$tree/etc/uiommufd" \
    "$tree/usr/share/man/man1" "$tree/usr/share/doc/uiommufd"

install -m 0755 "$bin" "$tree/usr/bin/uiommufd"
# As dh_strip: no debug sections, symbols or build notes in the shipped binary.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$tree/usr/bin/uiommufd"
install -m 0644 scripts/uiommufd.service "$tree/usr/lib/systemd/system/uiommufd.service"
install -m 0644 scripts/uiommufd.toml "$tree/etc/uiommufd/uiommufd.toml"
# The unit's Documentation= names this file: shipped uncompressed.
install -m 0644 README.md "$tree/usr/share/doc/uiommufd/README.md"

# Man pages from the CLI definitions (hidden subcommand), compressed without names or times.
"$bin" man "$tree/usr/share/man/man1"
ls "$tree"/usr/share/man/man1/uiommufd.1 >/dev/null
for m in "$tree"/usr/share/man/man1/*.1; do
    chmod 0644 "$m"
    gzip -9n "$m"
done

# Years of the first and the last commit.
years=$(date -u +%Y)
if first=$(git -C "$src" log --format=%ad --date=format:%Y 2>/dev/null | tail -n1) &&
    [ -n "$first" ]; then
    last=$(git -C "$src" log -1 --format=%ad --date=format:%Y)
    years=$first; [ "$last" = "$first" ] || years=$first-$last
fi
cat > "$tree/usr/share/doc/uiommufd/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: uiommufd

Files: *
Copyright: $years the uiommufd authors
License: GPL-2.0-only
 This program is free software; you can redistribute it and/or modify it under the terms of
 the GNU General Public License version 2 as published by the Free Software Foundation.
 .
 This program is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY;
 without even the implied warranty of MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.
 See the GNU General Public License for more details.
 .
 On Debian systems, the complete text of the GNU General Public License version 2 can be
 found in '/usr/share/common-licenses/GPL-2'.
EOF
chmod 0644 "$tree/usr/share/doc/uiommufd/copyright"

changelog_date=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
printf 'uiommufd (%s) unstable; urgency=medium\n\n  * Built from the workspace at commit %s.\n\n -- %s  %s\n' \
    "$version" "$commit" "$maintainer" "$changelog_date" |
    gzip -9n > "$tree/usr/share/doc/uiommufd/changelog.gz"
chmod 0644 "$tree/usr/share/doc/uiommufd/changelog.gz"

# --- Depends from the binary's shared libraries ---------------------------------------------
depends=
if command -v dpkg-shlibdeps >/dev/null; then
    shl=$(mktemp -d)
    mkdir "$shl/debian"
    printf 'Source: uiommufd\n\nPackage: uiommufd\nArchitecture: any\n' > "$shl/debian/control"
    if out=$(cd "$shl" && dpkg-shlibdeps -O -e"$tree/usr/bin/uiommufd" 2>"$shl/err"); then
        depends=${out#shlibs:Depends=}
    else
        echo "package-deb: dpkg-shlibdeps failed, deriving Depends from the symbols:" >&2
        cat "$shl/err" >&2
    fi
    rm -rf "$shl"
fi
if [ -z "$depends" ]; then
    # libc6 (>= the newest GLIBC_ symbol version), plus a package for every other NEEDED.
    glibc=$(objdump -T "$tree/usr/bin/uiommufd" | grep -o 'GLIBC_[0-9][0-9.]*' |
        sed 's/GLIBC_//' | sort -uV | tail -n1)
    depends="libc6 (>= $glibc)"
    for lib in $(objdump -p "$tree/usr/bin/uiommufd" | awk '$1=="NEEDED"{print $2}'); do
        case "$lib" in
            libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|ld-linux*) ;;
            libgcc_s.so.1) depends="$depends, libgcc-s1" ;;
            *) echo "package-deb: no package known for $lib" >&2; exit 1 ;;
        esac
    done
fi

installed_size=$(du -sk --exclude=DEBIAN "$tree" | cut -f1)
cat > "$tree/DEBIAN/control" <<EOF
Package: uiommufd
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Recommends: qemu-system-x86 (>= 1:9.0)
Section: admin
Priority: optional
Description: Linux iommufd (/dev/iommu) served from userspace
 uiommufd serves the Linux iommufd interface (/dev/iommu) and the VFIO
 container (/dev/vfio/vfio) from a userspace daemon, over CUSE character
 devices or files in a FUSE mount, so that programs such as QEMU can use
 iommufd on kernels built without CONFIG_IOMMUFD. Real PCI devices bound to
 vfio-pci are served behind a kernel VFIO type1 container that mirrors the
 page tables they attach to.
 .
 The package holds the daemon, its systemd unit (uiommufd.service) and a
 default configuration in /etc/uiommufd/uiommufd.toml.
EOF
echo /etc/uiommufd/uiommufd.toml > "$tree/DEBIAN/conffiles"

# Maintainer scripts: systemctl only with systemd running and not into another root
# (DPKG_ROOT set by dpkg --root with chrootless scripts).
cat > "$tree/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-remove ]; then
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
EOF
cat > "$tree/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] &&
    command -v deb-systemd-invoke >/dev/null; then
    deb-systemd-invoke stop uiommufd.service >/dev/null || true
fi
exit 0
EOF
cat > "$tree/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
fi
exit 0
EOF
chmod 0755 "$tree/DEBIAN/postinst" "$tree/DEBIAN/prerm" "$tree/DEBIAN/postrm"
chmod 0644 "$tree/DEBIAN/control" "$tree/DEBIAN/conffiles"

deb=$outdir/$pkg.deb
dpkg-deb --build --root-owner-group "$tree" "$deb" >/dev/null
rm -rf "$tree"
echo "package-deb: $deb ($(stat -c %s "$deb") bytes, installed $installed_size KiB)"
echo "package-deb: Depends: $depends"
dpkg-deb --contents "$deb"

[ "$check" = 1 ] || exit 0

# --- check ---------------------------------------------------------------------------------
failures=0
ok() { echo "check: ok   $*"; }
bad() { echo "check: FAIL $*"; failures=$((failures + 1)); }

root=$(mktemp -d "${TMPDIR:-/tmp}/uiommufd-deb-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
admin=$root/var/lib/dpkg
mkdir -p "$admin/info" "$admin/updates" "$admin/triggers"
: > "$admin/status"
dpkgr=(dpkg "--root=$root" "--admindir=$admin" --force-script-chrootless --force-not-root)
echo "check: installing into $root (dpkg --root, chrootless scripts)"
if "${dpkgr[@]}" --force-depends -i "$deb"; then
    ok "dpkg -i into an empty root"
else
    bad "dpkg -i into an empty root"
fi
status=$(dpkg-query "--admindir=$admin" -W -f='${Status}' uiommufd 2>/dev/null || true)
[ "$status" = "install ok installed" ] && ok "status: $status" || bad "status: '$status'"

# path mode owner
while read -r path mode; do
    f=$root$path
    if [ ! -f "$f" ]; then bad "$path missing"; continue; fi
    got=$(stat -c '%a %U:%G' "$f")
    [ "$got" = "$mode root:root" ] && ok "$path $got" || bad "$path is $got, want $mode root:root"
done <<'EOF'
/usr/bin/uiommufd 755
/usr/lib/systemd/system/uiommufd.service 644
/etc/uiommufd/uiommufd.toml 644
/usr/share/man/man1/uiommufd.1.gz 644
/usr/share/man/man1/uiommufd-serve.1.gz 644
/usr/share/man/man1/uiommufd-doctor.1.gz 644
/usr/share/man/man1/uiommufd-status.1.gz 644
/usr/share/doc/uiommufd/copyright 644
/usr/share/doc/uiommufd/README.md 644
/usr/share/doc/uiommufd/changelog.gz 644
EOF
cmp -s "$root/usr/lib/systemd/system/uiommufd.service" scripts/uiommufd.service &&
    ok "unit is scripts/uiommufd.service" || bad "unit differs from scripts/uiommufd.service"
grep -q '^License: GPL-2.0-only' "$root/usr/share/doc/uiommufd/copyright" &&
    ok "copyright: GPL-2.0-only" || bad "copyright lacks GPL-2.0-only"

# Every file dpkg lists is there; nothing outside the expected directories.
listed=$(dpkg-query "--admindir=$admin" -L uiommufd)
while read -r p; do
    case "$p" in
        /.|/etc|/etc/uiommufd*|/usr|/usr/bin*|/usr/lib|/usr/lib/systemd*|/usr/share|/usr/share/man*|/usr/share/doc*) ;;
        *) bad "unexpected path $p" ;;
    esac
    [ -e "$root$p" ] || bad "listed but absent: $p"
done <<<"$listed"
ok "$(wc -l <<<"$listed") paths listed by dpkg -L"

conffiles=$(dpkg-query "--admindir=$admin" -W -f='${Conffiles}' uiommufd)
grep -q '^ /etc/uiommufd/uiommufd.toml [0-9a-f]\{32\}' <<<"$conffiles" &&
    ok "conffile registered: /etc/uiommufd/uiommufd.toml" || bad "conffile not registered: $conffiles"

ctl=$(dpkg-deb --field "$deb" Package Version Architecture Depends Recommends)
echo "$ctl" | sed 's/^/check:      /'
grep -qx "Version: $version" <<<"$ctl" && grep -qx "Architecture: $arch" <<<"$ctl" &&
    grep -q '^Depends: .*libc6 (>= ' <<<"$ctl" &&
    grep -qx 'Recommends: qemu-system-x86 (>= 1:9.0)' <<<"$ctl" &&
    ok "control fields" || bad "control fields"

# Man pages: valid gzip, and each names its command.
for m in "$root"/usr/share/man/man1/uiommufd*.1.gz; do
    name=$(basename "$m" .1.gz)
    if gzip -t "$m" && [ "$(zcat "$m" | grep -c "^\.TH $name 1")" = 1 ]; then ok "man page $name"; else bad "man page $name"; fi
done
if command -v man >/dev/null; then
    page=$(man -l "$root/usr/share/man/man1/uiommufd-serve.1.gz" 2>/dev/null || true)
    if grep -q -- '--max-contexts-per-user' <<<"$page"; then
        ok "man -l uiommufd-serve renders and shows --max-contexts-per-user"
    else
        bad "man -l uiommufd-serve"
    fi
fi

# The default config: no active key; each commented key, uncommented, is a flag `serve` takes.
conf=$root/etc/uiommufd/uiommufd.toml
active=$(grep -Ev '^[[:space:]]*(#|$)' "$conf" || true)
[ -z "$active" ] && ok "default config has every key commented out" || bad "active lines in default config: $active"
all=$root/tmp/all-keys.toml
mkdir -p "$root/tmp"
sed -n 's/^#\([a-z][a-z-]* = .*\)/\1/p' "$conf" | awk -F' = ' '!seen[$1]++' > "$all"
nkeys=$(wc -l < "$all")
if "$root/usr/bin/uiommufd" serve --config "$all" --help >/dev/null 2>"$root/tmp/err"; then
    ok "all $nkeys commented keys, uncommented, are accepted by serve"
else
    bad "commented keys refused by serve: $(cat "$root/tmp/err")"
fi

# The unit: systemd-analyze verify of the installed unit and binary, in a root that also has the
# host's units (an empty root lacks sysinit.target and the other default dependencies). Any
# output (an unknown key, a bad value) counts as a failure, not only the exit status.
if command -v systemd-analyze >/dev/null && [ -d /usr/lib/systemd/system ]; then
    vroot=$root/verify-root
    mkdir -p "$vroot/usr/lib/systemd" "$vroot/usr/bin"
    cp -a /usr/lib/systemd/system "$vroot/usr/lib/systemd/"
    cp "$root/usr/lib/systemd/system/uiommufd.service" "$vroot/usr/lib/systemd/system/"
    cp -p "$root/usr/bin/uiommufd" "$vroot/usr/bin/"
    if out=$(systemd-analyze verify --root="$vroot" /usr/lib/systemd/system/uiommufd.service 2>&1) &&
        [ -z "$out" ]; then
        ok "systemd-analyze verify (installed unit and binary)"
    else
        bad "systemd-analyze verify: $out"
    fi
    rm -rf "$vroot"
elif [ "${CI:-}" = true ]; then
    bad "no systemd-analyze or /usr/lib/systemd/system under CI=true (scripts/ci-install.sh installs the systemd package)"
else
    echo "check: skip systemd-analyze (not installed)"
fi

# The installed binary.
if help=$("$root/usr/bin/uiommufd" --help 2>&1) && grep -q doctor <<<"$help"; then
    ok "uiommufd --help"
else
    bad "uiommufd --help: $help"
fi
v=$("$root/usr/bin/uiommufd" --version 2>&1 || true)
[ "$v" = "uiommufd $version" ] && ok "uiommufd --version: $v" || bad "uiommufd --version: $v"
echo "check: uiommufd doctor:"
set +e
"$root/usr/bin/uiommufd" doctor 2>&1 | sed 's/^/check:      /'
doctor_rc=${PIPESTATUS[0]}
set -e
echo "check: info  doctor exit status $doctor_rc (not required to be 0 here)"
[ "$doctor_rc" -le 1 ] || bad "doctor crashed or misused (exit $doctor_rc)"

if command -v lintian >/dev/null; then
    echo "check: lintian:"
    lintian --tag-display-limit 0 "$deb" 2>&1 | sed 's/^/check:      /' || true
else
    echo "check: skip lintian (not installed)"
fi

# Purge: files gone, the conffile too.
if "${dpkgr[@]}" -P uiommufd >/dev/null; then
    left=$(find "$root/usr" "$root/etc" -type f 2>/dev/null || true)
    [ -z "$left" ] && ok "dpkg -P leaves no files" || bad "left after purge: $left"
else
    bad "dpkg -P"
fi

if [ "$failures" -gt 0 ]; then
    echo "check: $failures failed"
    exit 1
fi
echo "check: all passed"
