#!/usr/bin/env bash
# The recipe of the base image: a Debian bookworm root file system with Python 3.11 and a
# virtual environment at /opt/venv, standing in for python:3.11-slim-bookworm where no
# registry of base images can be reached. hack/images.sh keys its cache on a hash of this
# file, so an edit here rebuilds the base and every image above it.
#   base.sh ROOTFS MIRROR SECURITY_MIRROR   (run as root; ROOTFS must not exist yet)
#   base.sh --config                        the image's config, `env K=V` and `cmd C` lines
set -euo pipefail

# What python:3.11-slim-bookworm's config gives the Dockerfile, with the venv first on PATH.
config=(
  "env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "env VIRTUAL_ENV=/opt/venv"
  "env LANG=C.UTF-8"
  "cmd python3"
)
if [[ ${1:-} == --config ]]; then printf '%s\n' "${config[@]}"; exit 0; fi

rootfs=$1 mirror=$2 security_mirror=$3
packages=(python3 python3-venv python3-pip ca-certificates)

debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >&2

cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
SOURCES
# No daemon may start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"

in_root() { chroot "$rootfs" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  DEBIAN_FRONTEND=noninteractive "$@"; }
in_root apt-get update -qq >&2
in_root apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
in_root apt-get upgrade -y -qq >&2
# Debian's pip refuses to install into the system Python (PEP 668): the Dockerfile's
# `pip install` lands in this venv, first on PATH (ENV set by hack/images.sh).
in_root python3 -m venv /opt/venv
in_root /opt/venv/bin/python -m pip --version >&2

# What the slim image does not ship either.
in_root apt-get clean
rm -f "$rootfs/usr/sbin/policy-rc.d"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
  "$rootfs"/var/cache/debconf/*-old "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/tmp/* "$rootfs"/root/.cache
find "$rootfs/opt/venv" -name __pycache__ -prune -exec rm -rf {} +
# The container runtime provides these; never delete through a mount left behind.
if awk -v r="$rootfs/" 'index($2, r) == 1 {found=1} END {exit !found}' /proc/mounts; then
  echo "base.sh: mounts left under $rootfs" >&2; exit 1
fi
rm -rf "${rootfs:?}"/dev/* "${rootfs:?}"/proc/* "${rootfs:?}"/sys/*
