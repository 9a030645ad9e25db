#!/usr/bin/env bash
# The test command: installs dependencies, builds everything this machine can
# build (CUDA too when nvcc is present), runs ctest, then rebuilds the host
# code under AddressSanitizer + UndefinedBehaviorSanitizer and runs the host
# tests again, then builds the PyTorch package and runs its tests
# (scripts/test-torch.sh). GPU tests report "skipped" on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
jobs=$(nproc)
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH

echo "== build (release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$jobs"
if command -v nvcc >/dev/null; then
  # The hot loops' SASS against their budgets (docs/benchmarks.md, "Static
  # cost"), from the object the build just compiled: a few seconds.
  echo "== static cost of the hot loops (sm_90 SASS) =="
  scripts/sass-report.sh build/kernels/CMakeFiles/geopref_cuda_objects.dir/c_api.cu.o
fi
echo "== ctest (release) =="
(cd build && ctest --output-on-failure -j "$jobs")

echo "== build (host code, ASan + UBSan) =="
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DGEOPREF_ENABLE_CUDA=OFF \
  -DGEOPREF_BUILD_BENCH=OFF -DGEOPREF_SANITIZE=address,undefined
cmake --build build-sanitize -j "$jobs"
echo "== ctest (ASan + UBSan) =="
(cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j "$jobs" -LE slow)
echo "== PyTorch package (bindings/torch, CPU) =="
./scripts/test-torch.sh
echo "== all tests passed =="
