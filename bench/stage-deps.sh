#!/usr/bin/env bash
# Run HERE (a Debian machine with apt and pip), before a GPU run: stages what
# the GPU machine lacks and cannot download, into ignored folders that the
# device run carries along:
#   .deps/root/  Google Benchmark (shared library + CMake package) and Eigen
#                headers, unpacked from Debian's packages (dpkg -x, no install)
#   .whl/        the Liger-Kernel wheel (pure Python), for bench/peers/
# scripts/gpu-check.d/20-bench.sh finds them there. Carry both: carry=[".deps", ".whl"].
# The Debian 12 builds need glibc >= 2.32, which the GPU image has.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs .deps/root
(cd .deps/debs && apt-get download libbenchmark-dev libbenchmark1debian libeigen3-dev)
for f in .deps/debs/*.deb; do dpkg -x "$f" .deps/root; done
if [[ "${1:-}" != "--no-liger" ]]; then
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl liger-kernel ||
    echo "stage-deps: no Liger-Kernel wheel; its peer rows will say so"
fi
du -sh .deps/root .whl 2>/dev/null || true
