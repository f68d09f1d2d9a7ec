#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine (root). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/sys/capability.h ] || need+=(libcap-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
[ -e /dev/fuse ] || modprobe fuse || true
