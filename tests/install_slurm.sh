#!/usr/bin/env bash
# Install what tests/slurm_cluster.py needs for a real single-node SLURM cluster (Debian/Ubuntu packages
# slurmctld slurmd slurm-client munge). Idempotent: installs only missing packages, and only as root with apt-get;
# otherwise says why it did nothing and exits 0 (the SLURM tests then skip, naming the reason).
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)

installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = "installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm: not a Debian-like system (no dpkg-query/apt-get); not installing ${PACKAGES[*]}"
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_slurm: ${PACKAGES[*]} already installed"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: missing ${missing[*]}, but not root; not installing (the SLURM tests will skip)"
    exit 0
fi

echo "install_slurm: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# the daemons are started by tests/slurm_cluster.py, not by the packages' maintainer scripts
apt-get install -y -q "${missing[@]}"
echo "install_slurm: installed ${missing[*]}"
