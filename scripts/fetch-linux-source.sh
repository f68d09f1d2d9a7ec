#!/usr/bin/env bash
# Download Debian's linux-source-7.2 (trixie-backports) and unpack it under $OUT (default target/linux-src).
# Uses a private apt configuration so the host's sources list is left alone; the mirror URI is taken from
# the machine's own debian.sources. Prints the path of the unpacked tree on stdout.
# Env: LINUX_SOURCE_VERSION pins a package version (falls back to the newest 7.2.x when absent).
set -euo pipefail
OUT=${OUT:-$(cd "$(dirname "$0")/.." && pwd)/target/linux-src}
PIN=${LINUX_SOURCE_VERSION:-}
mkdir -p "$OUT"
if [ -f "$OUT/.tree" ] && [ -d "$(cat "$OUT/.tree")" ]; then cat "$OUT/.tree"; exit 0; fi
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources" >&2; exit 1; }
apt_dir="$OUT/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb $mirror trixie-backports main" > "$apt_dir/sources.list"
opts=(-o Dir::Etc::SourceList="$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache"
      -o Acquire::Check-Valid-Until=false -o APT::Get::List-Cleanup=false)
apt-get "${opts[@]}" update >&2
cd "$apt_dir"
versions=$(apt-cache "${opts[@]}" madison linux-source-7.2 | awk '{print $3}')
[ -n "$versions" ] || { echo "linux-source-7.2 not found in trixie-backports" >&2; exit 1; }
want=""
if [ -n "$PIN" ] && grep -qx "$PIN" <<<"$versions"; then want=$PIN; else want=$(head -n1 <<<"$versions"); fi
echo "linux-source-7.2 version: $want" >&2
rm -f ./*.deb
apt-get "${opts[@]}" download "linux-source-7.2=$want" >&2
deb=$(ls ./linux-source-7.2_*.deb | head -n1)
rm -rf "$OUT/pkg"; mkdir -p "$OUT/pkg"
dpkg-deb -x "$deb" "$OUT/pkg"
tarball=$(ls "$OUT"/pkg/usr/src/linux-source-7.2*.tar.* | head -n1)
tar -xf "$tarball" -C "$OUT"
rm -rf "$OUT/pkg" "$deb"
tree=$(ls -d "$OUT"/linux-source-7.2* | head -n1)
echo "$tree" > "$OUT/.tree"
echo "$tree"
