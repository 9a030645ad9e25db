#!/usr/bin/env bash
# Integration checks on a GPU machine, run by scripts/gpu-check.sh (or alone):
#   1. builds the compiled kernels (geopref_cuda, shared + static) and
#      geopref-check with CMake for the local card;
#   2. compiles examples/c_api/main.c as C against the static and against the
#      shared library and runs both (GPU result vs. host formulas);
#   3. runs tests/tools/test_check_cuda: geopref-check --device cuda (kernels
#      through the C ABI) against --device cpu (the CPU reference);
#   4. builds the PyTorch package (bindings/torch) with its CUDA kernels and
#      runs its tests (bindings/torch/tests) on CPU and CUDA: every loss
#      against plain PyTorch per dtype, opcheck, gradcheck, torch.compile,
#      bad inputs; then times it against the plain formulation
#      (bindings/torch/examples/bench_vs_plain.py), token_logps against
#      TRL's selective log-softmax (bench/peers/torch_peers.py --token), and
#      the fused-linear loss against Liger-Kernel's LigerFusedLinearDPOLoss
#      and PyTorch (linear + TRL's log-softmax, eager and compiled) in one
#      process (bench/peers/fused_linear_peers.py; time and peak memory at
#      N = 16384, H = 4096, V ∈ {32000, 128256}, bf16), with
#      25-fused-linear.sh's C++ rows when $OUT has them; and TRL 1.16.0's
#      fused LM head against geopref's (bench/peers/trl_head_peers.py, the
#      same shapes, time and peak memory).
# Logs: $OUT/integration/ (OUT defaults to build-gpu-int/out). Eigen for
# geopref-check comes from the system or from .deps/root (scripts/gpu-check.sh
# --stage); without it steps 1's geopref-check and 3 are reported as skipped.
# Exit status: 0 all passed, 77 no GPU, 1 something failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=$root/build-gpu-int
OUT=${OUT:-$build/out}
logs=$OUT/integration
mkdir -p "$logs" "$build"
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH=/usr/local/cuda/bin:$PATH
cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
jobs=$(nproc); (( jobs > 16 )) && jobs=16
STEP=30-integration
# say, check, check_limited, summary
source "$root/scripts/gpu-check.d/steps.bash"

if ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU visible (nvidia-smi): skipped"
  exit 77
fi
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
arch=${CUDA_ARCH:-${cap/./}}
say "device $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), sm_$arch"

# 1. CMake build of the kernels library and geopref-check (already built by
# scripts/gpu-check.sh when GEOPREF_GPU_CHECK_BUILD names its build folder).
[[ -n ${GEOPREF_GPU_CHECK_BUILD:-} ]] && build=$GEOPREF_GPU_CHECK_BUILD
args=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch"
      -DGEOPREF_BUILD_TESTS=OFF -DGEOPREF_BUILD_EXAMPLES=OFF -DGEOPREF_BUILD_BENCH=OFF
      -DGEOPREF_BUILD_TOOLS=ON -DGEOPREF_BUILD_KERNELS=ON)
deps=$root/.deps/root
[[ -d $deps/usr/share/eigen3/cmake ]] && args+=(-DEigen3_DIR="$deps/usr/share/eigen3/cmake")
if [[ -z ${GEOPREF_GPU_CHECK_BUILD:-} ]]; then
  check configure cmake -S . -B "$build" "${args[@]}"
  targets=(geopref_cuda geopref_cuda_static)
  cmake --build "$build" --target help 2>/dev/null | grep ' geopref-check$' >/dev/null &&
    targets+=(geopref-check)
  check build cmake --build "$build" -j "$jobs" --target "${targets[@]}"
fi
have_check=0
[[ -x $build/tools/geopref-check ]] && have_check=1

# 2. The C program against each library. The shared library carries its own
# CUDA runtime; the program links the shared runtime for its cudaMalloc calls.
cflags=(-std=c99 -O2 -Wall -Wextra -Wpedantic -Werror -I"$root/include" -isystem "$cuda_home/include")
check c-api-static bash -c "cc ${cflags[*]} examples/c_api/main.c $build/kernels/libgeopref_cuda.a \
  -L$cuda_home/lib64 -lcudart_static -lstdc++ -lm -ldl -lrt -lpthread -o $build/c_api_static \
  && $build/c_api_static"
check c-api-shared bash -c "cc ${cflags[*]} examples/c_api/main.c -L$build/kernels -lgeopref_cuda \
  -Wl,-rpath,$build/kernels -L$cuda_home/lib64 -lcudart -Wl,-rpath,$cuda_home/lib64 -lm \
  -o $build/c_api_shared && $build/c_api_shared"

# 3. geopref-check --device cuda vs --device cpu.
if (( have_check )); then
  mkdir -p "$build/check-tmp"
  check check-cuda bash -c "g++ -std=c++17 -O2 -Itools -Itests/tools \
    -DGEOPREF_TEST_TMP='\"$build/check-tmp\"' -DGEOPREF_CHECK_EXE='\"$build/tools/geopref-check\"' \
    tests/tools/test_check_cuda.cpp tools/npy.cpp -o $build/test_check_cuda && $build/test_check_cuda"
else
  say "geopref-check not configured (no Eigen): check-cuda skipped"
  names+=(check-cuda) results+=("skipped (no Eigen)")
fi

# 4. The PyTorch package (bindings/torch) with its CUDA kernels for this card,
# installed into a folder of the build (nothing in site-packages, no index:
# this machine has no internet), then its tests on CPU and CUDA. pytest comes
# from .whl/ (scripts/gpu-check.sh --stage) when the machine lacks it.
if python3 -c "import torch; assert torch.cuda.is_available()" >/dev/null 2>&1; then
  site=$build/torch-site
  rm -rf "$site"
  # The kernels step 1 compiled for this card are linked, not compiled again.
  kernels_lib=
  [[ -f $build/kernels/libgeopref_cuda.a ]] && kernels_lib=$build/kernels/libgeopref_cuda.a
  check torch-build env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$cap}" MAX_JOBS=$jobs \
    GEOPREF_TORCH_CUDA=1 GEOPREF_TORCH_KERNELS_LIB="$kernels_lib" python3 -m pip install -q --no-build-isolation --no-deps --no-index \
    --target "$site" ./bindings/torch
  if ! python3 -c "import pytest" >/dev/null 2>&1 && compgen -G "$root/.whl/pytest-*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --find-links "$root/.whl" --target "$site" pytest \
      >"$logs/torch-pytest-install.log" 2>&1
  fi
  if [[ -d $site/geopref_torch ]]; then
    check torch-tests env PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" \
      python3 -m pytest -q -p no:cacheprovider -rs bindings/torch/tests
    # The op's time and memory against the plain-PyTorch formulation.
    check torch-bench env PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" \
      python3 bindings/torch/examples/bench_vs_plain.py
    # geopref_torch.token_logps against TRL's selective_log_softmax (eager)
    # and log_softmax + gather (compiled), one shape per dtype: the
    # per-token rows of the peers table, with the op's own overheads. A run
    # cut by its time limit keeps its rows and is not a failure.
    check_limited torch-token-bench PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" \
      python3 bench/peers/torch_peers.py --quick --token --vocab 128256 \
      --json "$OUT/bench_peers_token_op.json"
  fi
  # The fused-linear peers. Without the package (its build failed) they run
  # without the geopref row rather than not at all. Liger-Kernel from .whl/
  # (scripts/gpu-check.sh --stage) when the machine lacks it.
  peers_path=$site
  if compgen -G "$root/.whl/liger_kernel-*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$build/peers-site" "$root"/.whl/liger_kernel-*.whl \
      >"$logs/liger-install.log" 2>&1 && peers_path=$peers_path:$build/peers-site
  fi
  methods=geopref,eager,compile,liger,matmuls
  [[ -d $site/geopref_torch ]] || methods=eager,compile,liger,matmuls
  geo=()
  [[ -s $OUT/bench_fused_linear.json ]] && geo=(--geopref-json "$OUT/bench_fused_linear.json")
  quick=()
  [[ "${GEOPREF_BENCH_QUICK:-0}" == 1 ]] && quick=(--quick)
  # GEOPREF_BENCH_PEERS=0 skips them, GEOPREF_PEERS_SECONDS limits them (240).
  [[ "${GEOPREF_BENCH_PEERS:-1}" != 0 ]] &&
  check_limited torch-fused-linear-peers PYTHONPATH="$peers_path${PYTHONPATH:+:$PYTHONPATH}" \
    python3 bench/peers/fused_linear_peers.py --methods "$methods" "${quick[@]}" "${geo[@]}" \
    --json "$OUT/fused_linear_peers.json"
  # TRL 1.16.0's fused LM head (its Triton fold; TRL from the installed
  # package or the staged wheel) against geopref's, as DPOTrainer asks for it:
  # time and peak memory, N = 16384, H = 4096, V in {32000, 128256}, bf16.
  [[ "${GEOPREF_BENCH_PEERS:-1}" != 0 && -d $site/geopref_torch ]] &&
  check_limited torch-trl-head-peers PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" \
    python3 bench/peers/trl_head_peers.py "${quick[@]}" --trl-wheel-dir "$root/.whl" \
    --json "$OUT/trl_head_peers.json"
else
  say "PyTorch with CUDA not importable: torch steps skipped"
  names+=(torch-tests) results+=("skipped (no torch)")
fi

summary
exit "$failed"
