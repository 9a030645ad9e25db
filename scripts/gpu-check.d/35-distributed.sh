#!/usr/bin/env bash
# geopref_torch.distributed on the GPU machine (issue 23), run by
# scripts/gpu-check.sh after 30-integration.sh (or alone, after it):
#   bench/peers/dist_head_memory.py: per-rank peak memory and time of the
#      vocab-sharded head (a DTensor Shard(0) lm_head weight on a 1-D mesh,
#      NCCL, one GPU per rank) against TRL 1.16.0's weight.full_tensor() +
#      ChunkedLogProbFunction, N = 16384, H = 4096, V in {32000, 128256},
#      bf16; K = the number of GPUs (K = 1 on a one-GPU machine: it runs the
#      code, with nothing to save).
# (The distributed tests, CPU tensors over gloo, run with the package's other
# tests in 30-integration.sh's torch-tests.)
# The package is the one 30-integration.sh built for this card: python3 with
# $build/torch-site on PYTHONPATH (build = GEOPREF_GPU_CHECK_BUILD, else
# build-gpu-int), pytest from there too when 30 staged it. TRL from the
# installed package or the wheel in .whl/ (scripts/gpu-check.sh --stage).
# Logs: $OUT/distributed/ (OUT defaults to build-gpu-int/out); the bench's rows
# in $OUT/dist_head_memory.json. The bench's table is printed last.
# Environment: GEOPREF_BENCH_QUICK=1 (3 iterations), GEOPREF_PEERS_SECONDS
# (the bench's limit, default 240), GEOPREF_BENCH_PEERS=0 (no bench).
# Exit status: 0 all passed, 77 no GPU or no package (30 failed), 1 something failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=${GEOPREF_GPU_CHECK_BUILD:-$root/build-gpu-int}
OUT=${OUT:-$root/build-gpu-int/out}
logs=$OUT/distributed
mkdir -p "$logs"
STEP=35-distributed
# say, check, check_limited, summary
source "$root/scripts/gpu-check.d/steps.bash"

if ! nvidia-smi -L >/dev/null 2>&1; then
  say "no GPU visible (nvidia-smi): skipped"
  exit 77
fi
site=$build/torch-site
if [[ ! -d $site/geopref_torch ]]; then
  say "no geopref_torch in $site (30-integration builds it): skipped"
  exit 77
fi
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
gpus=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
say "$gpus GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"

# The memory bench, K = the GPU count.
quick=()
[[ "${GEOPREF_BENCH_QUICK:-0}" == 1 ]] && quick=(--quick)
# A run cut by its time limit keeps its rows (printed as they come, and in
# the JSON) and is not a failure; its table is then missing.
if [[ "${GEOPREF_BENCH_PEERS:-1}" == 0 ]]; then
  say "GEOPREF_BENCH_PEERS=0: dist-head-memory skipped"
elif (( gpus < 1 )); then
  say "PyTorch sees no GPU: dist-head-memory skipped"
  names+=(dist-head-memory) results+=("skipped (torch sees no GPU)")
else
  check_limited dist-head-memory python3 bench/peers/dist_head_memory.py --world "$gpus" \
    "${quick[@]}" --trl-wheel-dir "$root/.whl" --json "$OUT/dist_head_memory.json"
fi

summary
# The table last (from its log: the lines after the per-row progress).
if [[ -s $logs/dist-head-memory.log ]]; then
  echo
  sed -n '/^V = /,$p' "$logs/dist-head-memory.log"
fi
exit "$failed"
