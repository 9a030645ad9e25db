#!/usr/bin/env bash
# GPU benchmarks for scripts/gpu-check.sh (docs/benchmarks.md): builds
# bench_gpu and check_naive for sm_90, checks the naive baseline against the
# CPU reference, runs the benches (copy roof, fused, naive) and the PyTorch
# peers, and prints the tables last.
#
# Writes to $OUT: bench_gpu.json (Google Benchmark JSON), bench_peers.json and
# bench_peers_token.json (the per-token peers, torch_peers.py --token).
# Make the plot and the doc tables from them afterwards, anywhere:
#   python3 bench/plot_bandwidth.py bench_gpu.json -o docs/figures/bandwidth.png
#   python3 bench/report.py bench_gpu.json --peers bench_peers.json
#
# Environment: OUT (default build-gpu-bench/out), GEOPREF_COMMIT (recorded in
# the JSON; default: git rev-parse, where .git exists), GEOPREF_BENCH_QUICK=1
# (5 iterations instead of 20/10; scripts/gpu-check.sh sets it by default),
# GEOPREF_BENCH_PEERS=0 (skip the PyTorch peers), GEOPREF_PEERS_SECONDS
# (their time limit, default 200), GEOPREF_PEERS_TOKEN_SECONDS (the per-token
# peers', default 120),
# CUDA_ARCH (default 90-real: H100 and H200), GEOPREF_BENCH_FORCE=1 (build
# and run even where nvidia-smi sees no GPU: the binaries then report skipped).
# GEOPREF_GPU_CHECK_BUILD: a build folder where scripts/gpu-check.sh already
# built bench_gpu and check_naive (then nothing is configured or built here).
# Google Benchmark, Eigen and Liger-Kernel come from the system, or from
# .deps/ and .whl/ staged here by scripts/gpu-check.sh --stage and carried along.
# Exit status: 0 ok or no GPU (skipped), 1 when a check failed or the build broke.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
OUT=${OUT:-$root/build-gpu-bench/out}
mkdir -p "$OUT"
build=$root/build-gpu-bench
quick=()
[[ "${GEOPREF_BENCH_QUICK:-0}" == 1 ]] && quick=(--quick)
commit=${GEOPREF_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export GEOPREF_COMMIT=$commit
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH
status=0
t0=$(date +%s)
say() { echo "== 20-bench [$(( $(date +%s) - t0 )) s] $*"; }

if ! nvidia-smi -L >/dev/null 2>&1 && [[ "${GEOPREF_BENCH_FORCE:-0}" != 1 ]]; then
  say "no GPU visible (nvidia-smi); skipped"
  exit 0
fi

deps=$root/.deps/root
if [[ -d $deps/usr/lib/x86_64-linux-gnu/cmake/benchmark ]]; then
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if [[ -n ${GEOPREF_GPU_CHECK_BUILD:-} ]]; then
  build=$GEOPREF_GPU_CHECK_BUILD
  say "using the build in $build (commit $commit)"
else
  args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90-real}"
        -DGEOPREF_BUILD_TESTS=OFF -DGEOPREF_BUILD_EXAMPLES=OFF -DGEOPREF_BUILD_TOOLS=OFF
        -DGEOPREF_BUILD_KERNELS=OFF)
  [[ -d $deps/usr/lib/x86_64-linux-gnu/cmake/benchmark ]] &&
    args+=(-Dbenchmark_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/benchmark")
  [[ -d $deps/usr/share/eigen3/cmake ]] && args+=(-DEigen3_DIR="$deps/usr/share/eigen3/cmake")
  say "configure + build (commit $commit)"
  mkdir -p "$build"
  if ! cmake -S . -B "$build" "${args[@]}" >"$build/configure.log" 2>&1; then
    tail -30 "$build/configure.log"; say "configure FAILED"; exit 1
  fi
  grep -E "geopref:|Warning" -A1 "$build/configure.log" | head -8
  targets=(bench_gpu)
  cmake --build "$build" --target help 2>/dev/null | grep -q check_naive && targets+=(check_naive)
  if ! timeout 420 cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >"$build/build.log" 2>&1; then
    grep -E "error|Error" "$build/build.log" | head -20; tail -10 "$build/build.log"; say "build FAILED"; exit 1
  fi
fi
[[ -x $build/bench/gpu/bench_gpu ]] || { say "bench_gpu was not built (Google Benchmark missing? run scripts/gpu-check.sh --stage here and carry .deps)"; exit 1; }

if [[ -x $build/bench/gpu/check_naive ]]; then
  say "naive baseline against the CPU reference"
  timeout 180 "$build/bench/gpu/check_naive"; rc=$?
  [[ $rc -ne 0 && $rc -ne 77 ]] && status=1
else
  say "check_naive not built (no Eigen): the naive baseline is unchecked in this run"
fi

say "bench_gpu ${quick[*]}"
timeout 300 "$build/bench/gpu/bench_gpu" "${quick[@]}" --benchmark_out="$OUT/bench_gpu.json" \
  --benchmark_out_format=json --benchmark_counters_tabular=true; rc=$?
case $rc in
  0) ;;
  77) say "bench_gpu: no usable device; skipped" ;;
  *) say "bench_gpu exited $rc"; status=1 ;;
esac
if [[ -s $OUT/bench_gpu.json ]]; then
  say "bench table"
  python3 bench/report.py "$OUT/bench_gpu.json" --only rows
fi

if [[ "${GEOPREF_BENCH_PEERS:-1}" != 0 ]] && [[ -s $OUT/bench_gpu.json ]]; then
  if compgen -G "$root/.whl/liger_kernel-*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/geopref-peers \
      "$root"/.whl/liger_kernel-*.whl && export PYTHONPATH=/tmp/geopref-peers${PYTHONPATH:+:$PYTHONPATH}
  fi
  say "PyTorch peers ${quick[*]} (rows print as they finish)"
  PYTHONUNBUFFERED=1 timeout "${GEOPREF_PEERS_SECONDS:-200}" python3 bench/peers/torch_peers.py "${quick[@]}" \
    --geopref-json "$OUT/bench_gpu.json" --json "$OUT/bench_peers.json"
  rc=$?
  [[ $rc -eq 124 ]] && say "peers stopped at their time limit; the rows measured so far are kept"
  # The per-token peers (TRL's selective_log_softmax eager, log_softmax +
  # gather compiled) against bench_gpu's gpu/token rows; geopref_torch's own
  # row comes from 30-integration, where the package is built.
  say "PyTorch per-token peers ${quick[*]}"
  PYTHONUNBUFFERED=1 timeout "${GEOPREF_PEERS_TOKEN_SECONDS:-120}" python3 bench/peers/torch_peers.py \
    "${quick[@]}" --token --methods token_eager,token_compile --geopref-json "$OUT/bench_gpu.json" \
    --json "$OUT/bench_peers_token.json"
  rc=$?
  [[ $rc -eq 124 ]] && say "per-token peers stopped at their time limit; the rows measured so far are kept"
fi

if [[ -s $OUT/bench_gpu.json ]]; then
  say "peers and targets"
  peers=()
  [[ -s $OUT/bench_peers.json ]] && peers=(--peers "$OUT/bench_peers.json")
  python3 bench/report.py "$OUT/bench_gpu.json" "${peers[@]}" --only peers,targets
  if [[ -s $OUT/bench_peers_token.json ]]; then
    say "per-token peers (step / geopref: against gpu/token forward + backward)"
    python3 bench/report.py "$OUT/bench_gpu.json" --peers "$OUT/bench_peers_token.json" --only peers
  fi
fi
say "done, status $status"
exit $status
