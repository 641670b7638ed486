#!/usr/bin/env bash
# Install the Debian packages hvdtrain needs (Open MPI, a C++ compiler, cmake).
# As root, installs what is missing; otherwise prints the exact apt command.
set -euo pipefail
PACKAGES=(openmpi-bin libopenmpi-dev g++ cmake make iproute2)
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  printf 'Missing system packages: %s\nRun: sudo apt-get update && sudo apt-get install -y --no-install-recommends %s\n' \
    "${missing[*]}" "${missing[*]}" >&2
  exit 1
fi
echo "[setup] installing system packages: ${missing[*]}"
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi
