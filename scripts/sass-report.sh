#!/usr/bin/env bash
# The static cost report of the logits kernels (docs/benchmarks.md, "Static
# cost"): the hot loops' SASS, MUFU and 16-byte loads per element, registers
# and spills of every forward_kernel / backward_kernel / stats_kernel instantiation in the
# sm_90 code of kernels/c_api.cu, the predicted fraction of the copy rate on
# H100 and H200, and a non-zero exit when a budget is exceeded.
#
#   scripts/sass-report.sh                 compile kernels/c_api.cu for sm_90 only (-cubin)
#   scripts/sass-report.sh OBJECT          use a built object or cubin holding sm_90 code,
#                                          e.g. build/kernels/CMakeFiles/geopref_cuda_objects.dir/c_api.cu.o
#   scripts/sass-report.sh --markdown ...  the table as markdown
#
# cuobjdump comes from the CUDA toolkit when it has one, otherwise from PyPI's
# nvidia-cuda-cuobjdump (and nvidia-cuda-nvdisasm, which it runs), installed with pip into GEOPREF_TOOLS_DIR (default
# ~/.cache/geopref/cuda-tools) on first use. SASS_KEEP=DIR keeps the dumps.
set -euo pipefail
cd "$(dirname "$0")/.."

markdown=()
if [[ "${1:-}" == "--markdown" ]]; then
  markdown=(--markdown)
  shift
fi
object="${1:-}"

nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cuobjdump=$(command -v cuobjdump || true)
if [[ -z "$cuobjdump" && -x "$(dirname "$nvcc")/cuobjdump" ]]; then
  cuobjdump="$(dirname "$nvcc")/cuobjdump"
fi
if [[ -z "$cuobjdump" ]]; then
  tools="${GEOPREF_TOOLS_DIR:-$HOME/.cache/geopref/cuda-tools}"
  cuobjdump=$(find "$tools" -path '*/bin/cuobjdump' -type f 2>/dev/null | head -n 1 || true)
  if [[ -z "$cuobjdump" ]]; then
    echo "sass-report: no cuobjdump in the toolkit; installing nvidia-cuda-cuobjdump into $tools" >&2
    # cuobjdump -sass runs nvdisasm, which the toolkit here lacks too.
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
      --target "$tools" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm >&2
    cuobjdump=$(find "$tools" -path '*/bin/cuobjdump' -type f | head -n 1 || true)
  fi
  if [[ -z "$cuobjdump" ]]; then
    echo "sass-report: cuobjdump not found and could not be installed" >&2
    exit 2
  fi
fi
# cuobjdump looks for nvdisasm on PATH.
export PATH="$PATH:$(dirname "$cuobjdump")"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
compile() {
  # The flags of the release build of kernels/ (kernels/CMakeLists.txt), one
  # architecture, cubin only: a few seconds.
  object="$work/c_api.cubin"
  "$nvcc" -O3 -DNDEBUG -std=c++17 -arch=sm_90 -cubin -Iinclude -o "$object" kernels/c_api.cu
}
dump() {
  local arch=()
  [[ "$object" == *.cubin ]] || arch=(-arch sm_90)
  "$cuobjdump" -sass "${arch[@]}" "$object" >"$work/sass.txt"
  "$cuobjdump" -res-usage "${arch[@]}" "$object" >"$work/res.txt"
}
if [[ -z "$object" || ! -f "$object" ]]; then
  [[ -z "$object" ]] || echo "sass-report: $object not found; compiling kernels/c_api.cu" >&2
  compile
  dump
else
  dump
  if ! grep -q forward_kernel "$work/sass.txt"; then
    echo "sass-report: no sm_90 code in $object; compiling kernels/c_api.cu for sm_90" >&2
    compile
    dump
  fi
fi
if [[ -n "${SASS_KEEP:-}" ]]; then
  mkdir -p "$SASS_KEEP"
  cp "$work/sass.txt" "$work/res.txt" "$SASS_KEEP/"
fi
python3 scripts/sass_report.py "${markdown[@]}" "$work/sass.txt" "$work/res.txt"
