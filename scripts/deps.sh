#!/usr/bin/env bash
# Installs what geopref's build and tests need on a Debian machine (idempotent).
set -euo pipefail
need=()
for pkg in cmake g++ libeigen3-dev catch2 libbenchmark-dev python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
