#!/usr/bin/env bash
# The test suite on a GPU host, with the CuPy backend REQUIRED: every cupy-parametrized test that
# cannot run (no CuPy, no CUDA device, driver error) fails with the reason instead of skipping.
#
#   ci/gpu_tests.sh                 # whole suite, every backend, CuPy required
#   ci/gpu_tests.sh tests/test_layers.py -x    # extra arguments go to pytest
#
# Environment:
#   BPGPU_CUDA_EXTRA   which CuPy build to install when CuPy is missing and nvidia-smi is present:
#                      cuda12 (default) or cuda13
#   BPGPU_CI_TORCH     1 (default): install PyTorch when torch is missing, so the
#                      comparisons against PyTorch run too; 0: skip them
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
extra=${BPGPU_CUDA_EXTRA:-cuda12}
case "$extra" in cuda12|cuda13) ;; *) echo "BPGPU_CUDA_EXTRA must be cuda12 or cuda13, got '$extra'" >&2; exit 2 ;; esac

# CuPy is installed only where an NVIDIA driver is visible; elsewhere the run fails below
# ("CuPy is not installed"), which is the point of requiring it.
if ! "$PYTHON" -c "import cupy" 2>/dev/null && command -v nvidia-smi >/dev/null; then
    "$PYTHON" -m pip install -q -e ".[test,$extra]"
elif ! "$PYTHON" -c "import bpgpu, pytest, array_api_strict" 2>/dev/null; then
    "$PYTHON" -m pip install -q -e ".[test]"
fi
if [ "${BPGPU_CI_TORCH:-1}" = 1 ] && ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install -q torch
fi

# What this host offers, for the log (the run below fails on its own if CuPy is unusable).
"$PYTHON" - <<'PY'
import bpgpu
from bpgpu.backend import backend_status
for name, reason in backend_status().items():
    print(f"backend {name:17s} {'usable' if reason is None else 'UNUSABLE: ' + reason}")
print("auto ->", bpgpu.get_backend("auto"))
PY

export BPGPU_REQUIRE_BACKENDS=cupy
exec "$PYTHON" -m pytest --require-backend cupy "$@"
