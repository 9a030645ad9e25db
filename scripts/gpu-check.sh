#!/usr/bin/env bash
# The one command for a GPU machine (H100/H200; CMake, nvcc and PyTorch, no
# internet). In under 8 minutes it:
#   1. configures one build for sm_90 only and builds, once, everything the
#      steps below run (tests, quickstart, benchmarks, kernels library,
#      geopref-check),
#   2. runs the host checks and the GPU tests against the CPU reference,
#   3. runs compute-sanitizer memcheck on the [small] cases and racecheck +
#      synccheck on the [race] cases,
#   4. runs every executable scripts/gpu-check.d/*.sh in name order
#      (benchmarks, the PyTorch op, ...), each with the time that is left and
#      GEOPREF_GPU_CHECK_BUILD pointing at that build,
#   5. prints a summary table last.
# Logs go to $OUT/gpu-check/ when OUT is set (else build-gpu-check/logs/).
#
# Before the run, on a machine with apt and pip (this one), stage what the GPU
# machine lacks and cannot download, then carry both folders along
# (carry=[".deps", ".whl"]):
#   scripts/gpu-check.sh --stage [--no-liger]
#     .deps/root/  Catch2, Eigen and Google Benchmark (headers, the shared
#                  library, CMake packages), unpacked from Debian's packages
#                  with dpkg -x, nothing installed; the Debian 12 builds need
#                  glibc >= 2.32, which the GPU image has
#     .whl/        the Liger-Kernel and TRL 1.16.0 wheels (pure Python) for
#                  bench/peers/, and pytest's wheels for the PyTorch package's
#                  tests
#
# Environment: GEOPREF_GPU_CHECK_BUDGET (seconds, default 450),
# GEOPREF_GPU_CHECK_BUILD (build folder, default build-gpu-check), GEOPREF_COMMIT
# (shown in the summary where the copy has no .git),
# GEOPREF_BENCH_QUICK (passed to the steps, default 1), CUDA_ARCH (default 90).
# Exit status: 0 when every step passed or skipped, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [[ "${1:-}" == "--stage" ]]; then
  set -e
  mkdir -p .deps/debs .deps/root
  (cd .deps/debs && apt-get download catch2 libeigen3-dev libbenchmark-dev libbenchmark1debian)
  for f in .deps/debs/*.deb; do dpkg -x "$f" .deps/root; done
  if [[ "${2:-}" != "--no-liger" ]]; then
    mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: -d .whl liger-kernel ||
      echo "stage: no Liger-Kernel wheel; its peer rows will say so"
  fi
  # TRL's wheel (pure Python) for bench/peers/trl_head_peers.py, which loads
  # only its fused-head kernel file: the release docs/math.md describes.
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "trl==1.16.0" ||
    echo "stage: no TRL wheel; the TRL head peer rows will say so"
  # pytest (and its few dependencies) for the PyTorch package's tests.
  mkdir -p .whl
  python3 -m pip download -q --only-binary=:all: -d .whl pytest ||
    echo "stage: no pytest wheels; the torch tests need pytest on the GPU machine"
  du -sh .deps/root .whl 2>/dev/null || true
  echo "staged; carry .deps and .whl to the GPU machine"
  exit 0
fi

start=$(date +%s)
budget=${GEOPREF_GPU_CHECK_BUDGET:-450}
export GEOPREF_BENCH_QUICK=${GEOPREF_BENCH_QUICK:-1}
logs=${OUT:+$OUT/gpu-check}
logs=${logs:-$root/build-gpu-check/logs}
build=${GEOPREF_GPU_CHECK_BUILD:-$root/build-gpu-check}
mkdir -p "$logs" "$build"
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH
jobs=$(nproc); (( jobs > 16 )) && jobs=16

names=() results=() times=()
failed=0
elapsed() { echo $(( $(date +%s) - start )); }
left() { local l=$(( budget - $(elapsed) )); (( l < 30 )) && l=30; echo "$l"; }

# step NAME TIMEOUT CMD...: runs CMD with its output in $logs/NAME.log (and
# the last lines on the console); exit 77 counts as skipped.
step() {
  local name=$1 limit=$2; shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== [$(elapsed) s] $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  tail -n 25 "$logs/$name.log"
  local res=passed
  case $rc in
    0) ;;
    77) res=skipped ;;
    124|137) res="TIMEOUT (${limit} s)"; failed=1 ;;
    *) res="FAILED (exit $rc)"; failed=1 ;;
  esac
  names+=("$name") results+=("$res") times+=($(( $(date +%s) - t0 )))
  echo "== $name: $res"
  [[ $res == passed || $res == skipped ]]
}

summary() {
  echo
  echo "== gpu-check summary ($(elapsed) s, budget ${budget} s) =="
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/device: /'
  echo "commit: ${GEOPREF_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}   date: $(date -u +%Y-%m-%dT%H:%MZ)"
  printf '%-28s %-22s %8s\n' step result seconds
  local i
  for i in "${!names[@]}"; do printf '%-28s %-22s %8s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"; done
  echo "logs: $logs"
  { printf '%-28s %-22s %8s\n' step result seconds
    for i in "${!names[@]}"; do printf '%-28s %-22s %8s\n' "${names[$i]}" "${results[$i]}" "${times[$i]}"; done
  } >"$logs/summary.txt"
}

args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}"
      -DGEOPREF_BUILD_TESTS=ON -DGEOPREF_BUILD_EXAMPLES=ON -DGEOPREF_BUILD_BENCH=ON
      -DGEOPREF_BUILD_TOOLS=ON -DGEOPREF_BUILD_KERNELS=ON)
deps=$root/.deps/root
[[ -d $deps/usr/lib/cmake/Catch2 ]] && args+=(-DCatch2_DIR="$deps/usr/lib/cmake/Catch2")
[[ -d $deps/usr/share/eigen3/cmake ]] && args+=(-DEigen3_DIR="$deps/usr/share/eigen3/cmake")
if [[ -d $deps/usr/lib/x86_64-linux-gnu/cmake/benchmark ]]; then
  args+=(-Dbenchmark_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/benchmark")
  export LD_LIBRARY_PATH=$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

# One build for every step: the targets that this configuration has.
built=0
if step configure 120 cmake -S . -B "$build" "${args[@]}"; then
  targets=()
  have=$(cmake --build "$build" --target help 2>/dev/null)
  for t in geopref_cuda_host_test geopref_gpu_test quickstart bench_gpu check_naive bench_fused_linear \
           geopref_cuda geopref_cuda_static geopref-check vocab_parallel_nccl; do
    grep -E "^\.\.\. $t\$" <<<"$have" >/dev/null && targets+=("$t")
  done
  step build 300 cmake --build "$build" -j "$jobs" --target "${targets[@]}" && built=1
fi
export GEOPREF_GPU_CHECK_BUILD=$build

if (( built )); then
  t=$build/tests/cuda
  step host-checks 60 "$build/tests/cuda_host/geopref_cuda_host_test"
  step gpu-tests "$(left)" "$t/geopref_gpu_test" --durations yes
  sanitizer=$(command -v compute-sanitizer || true)
  for c in /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer; do
    [[ -z $sanitizer && -x $c ]] && sanitizer=$c
  done
  if [[ -n $sanitizer ]]; then
    step memcheck "$(left)" "$sanitizer" --tool memcheck --error-exitcode 1 \
      "$t/geopref_gpu_test" "[small]"
    step racecheck "$(left)" "$sanitizer" --tool racecheck --racecheck-report all \
      --error-exitcode 1 "$t/geopref_gpu_test" "[race]"
    step synccheck "$(left)" "$sanitizer" --tool synccheck --error-exitcode 1 \
      "$t/geopref_gpu_test" "[race]"
  else
    echo "== compute-sanitizer not found: memcheck/racecheck NOT RUN"
    names+=(compute-sanitizer) results+=("NOT RUN (not found)") times+=(0)
  fi
  if [[ -x $build/examples/quickstart/quickstart ]]; then
    step quickstart 60 "$build/examples/quickstart/quickstart"
  fi
  # The vocab-parallel step through NCCL, one rank per GPU of the machine, and
  # a failing rank that must not hang the rest (built when NCCL
  # is found), checked against the single-GPU train_step.
  if [[ -x $build/examples/vocab_parallel/vocab_parallel_nccl ]]; then
    step vocab-parallel-nccl 60 "$build/examples/vocab_parallel/vocab_parallel_nccl"
  else
    names+=(vocab-parallel-nccl) results+=("NOT RUN (no NCCL)") times+=(0)
  fi
fi

shopt -s nullglob
for s in "$root"/scripts/gpu-check.d/*.sh; do
  [[ -x $s ]] || continue
  step "$(basename "$s" .sh)" "$(left)" "$s"
done

summary
exit "$failed"
