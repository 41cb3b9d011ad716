#!/usr/bin/env bash
# Installs Debian packages that test-time servers need (slurm, mpich, sshd, chromium ...), once per
# machine. Safe to run from several make targets at once: one lock serialises them, `apt-get
# update` runs once per machine, and packages already installed are not asked for again.
# Usage: tools/apt-install.sh PACKAGE [PACKAGE ...]
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "tools/apt-install.sh: need root to install: ${missing[*]}" >&2
    exit 1
fi
exec 9>/var/lock/corral-apt-install.lock
flock -w 900 9
stamp=/var/lib/apt/corral-updated
if [ ! -e "$stamp" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    touch "$stamp"
fi
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
