#!/usr/bin/env bash
# Create .cuda-venv/: a virtual environment holding CuPy and NVRTC for ci/compile_cuda.py, apart
# from the test environment (CuPy must stay "not installed" there, so no test claims a GPU).
# It sees the test environment's packages (numpy, array-api-compat) through
# --system-site-packages; only the three pinned CUDA wheels go into it (~236 MB, ~30 s).
# Prints the environment's python. Idempotent: an existing, working environment is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
VENV=.cuda-venv
WHEELS=("cupy-cuda12x==14.2.0" "nvidia-cuda-nvrtc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*")

if ! "$VENV/bin/python" -c "import cupy; from cupy_backends.cuda.libs import nvrtc; nvrtc.getVersion()" \
        >/dev/null 2>&1; then
    rm -rf "$VENV"
    "$PYTHON" -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${WHEELS[@]}"
fi
echo "$VENV/bin/python"
