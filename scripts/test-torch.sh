#!/usr/bin/env bash
# The PyTorch package (bindings/torch) from this clone: installs torch,
# pytest and the pinned TRL and transformers when they are missing, builds and installs geopref-torch
# the way a user does (pip install --no-build-isolation ./bindings/torch), then
# runs its tests (bindings/torch/tests). Without a visible GPU only the CPU
# operators are compiled (setup.py's automatic choice; GEOPREF_TORCH_CUDA=0/1
# forces it) and the tests run on CPU; with a GPU and the CUDA kernels built,
# the same tests run on CUDA too (scripts/gpu-check.d/30-integration.sh).
# Called by scripts/test.sh; PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
t0=$(date +%s)

echo "== torch package: dependencies =="
# Already installed: pip only confirms it. A fresh machine downloads torch of
# the 2.15 series these tests were written against, with its CUDA libraries
# (its import needs them even on CPU).
"$py" -m pip install -q --disable-pip-version-check "torch==2.15.*" pytest ninja "setuptools>=64" wheel
# The TRL release the TRL tests and docs/math.md describe, and the
# transformers it is run with (current releases on 2026-12-07); their tests
# build a tiny model locally and download nothing.
"$py" -m pip install -q --disable-pip-version-check "trl==1.16.0" "transformers==5.25.0"
t1=$(date +%s)

echo "== torch package: pip install --no-build-isolation ./bindings/torch =="
"$py" -m pip install -q --disable-pip-version-check --no-build-isolation ./bindings/torch
t2=$(date +%s)

echo "== torch package: tests =="
# From the repository root, so `import geopref_torch` is the installed
# package, not the source folder without its compiled library.
"$py" -m pytest -q -p no:cacheprovider bindings/torch/tests
t3=$(date +%s)
echo "torch package: $((t3 - t0)) s (dependencies $((t1 - t0)) s, build + install $((t2 - t1)) s," \
     "tests $((t3 - t2)) s)"
