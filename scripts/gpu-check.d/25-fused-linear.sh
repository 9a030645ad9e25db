#!/usr/bin/env bash
# The fused-linear path (issue 12) on the GPU for scripts/gpu-check.sh:
# bench_fused_linear (fused_linear_step and fused_linear_logps against the
# cuBLAS GEMMs they contain, same process; N = 16384, H = 4096,
# V ∈ {32000, 128256}, bf16, 1 GiB chunk budget). The PyTorch peers
# (bench/peers/fused_linear_peers.py: geopref_torch's
# fused_linear_preference_loss, Liger-Kernel's LigerFusedLinearDPOLoss,
# linear + TRL's log-softmax eager and torch.compile, the matmuls alone, in
# one process) run in 30-integration.sh, once the PyTorch package is built,
# against this step's JSON. Record the tables in docs/benchmarks.md.
#
# Writes $OUT/bench_fused_linear.json.
# Environment: GEOPREF_GPU_CHECK_BUILD (the build with bench_fused_linear;
# without it this step builds its own in build-gpu-fused-linear),
# GEOPREF_BENCH_QUICK=1 (3 iterations).
# Exit: 0 ok or no GPU (skipped), 1 when the build or a row failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
OUT=${OUT:-$root/build-gpu-fused-linear/out}
mkdir -p "$OUT"
quick=()
[[ "${GEOPREF_BENCH_QUICK:-0}" == 1 ]] && quick=(--quick)
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH
t0=$(date +%s)
say() { echo "== 25-fused-linear [$(( $(date +%s) - t0 )) s] $*"; }
if ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU visible (nvidia-smi); skipped"
  exit 0
fi
deps=$root/.deps/root
[[ -d $deps/usr/lib/x86_64-linux-gnu ]] &&
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
build=${GEOPREF_GPU_CHECK_BUILD:-}
if [[ -z $build || ! -x $build/bench/gpu/bench_fused_linear ]]; then
  build=$root/build-gpu-fused-linear
  args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90-real}"
        -DGEOPREF_BUILD_TESTS=OFF -DGEOPREF_BUILD_EXAMPLES=OFF -DGEOPREF_BUILD_TOOLS=OFF
        -DGEOPREF_BUILD_KERNELS=OFF)
  [[ -d $deps/usr/lib/x86_64-linux-gnu/cmake/benchmark ]] &&
    args+=(-Dbenchmark_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/benchmark")
  say "configure + build bench_fused_linear"
  mkdir -p "$build"
  cmake -S . -B "$build" "${args[@]}" >"$build/configure.log" 2>&1 || { tail -20 "$build/configure.log"; exit 1; }
  timeout 300 cmake --build "$build" -j "$(nproc)" --target bench_fused_linear >"$build/build.log" 2>&1 ||
    { grep -E "error" "$build/build.log" | head -20; say "build FAILED"; exit 1; }
fi
status=0
say "bench_fused_linear ${quick[*]}"
timeout 300 "$build/bench/gpu/bench_fused_linear" "${quick[@]}" \
  --benchmark_out="$OUT/bench_fused_linear.json" --benchmark_out_format=json \
  --benchmark_counters_tabular=true; rc=$?
case $rc in
  0) ;;
  77) say "no usable device; skipped" ;;
  *) say "bench_fused_linear exited $rc"; status=1 ;;
esac
say "done, status $status"
exit $status
