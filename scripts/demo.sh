#!/usr/bin/env bash
# The demo: installs dependencies, builds examples/quickstart and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target quickstart
exec "$(cd build && pwd)/examples/quickstart/quickstart" "$@"
