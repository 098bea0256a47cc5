#!/usr/bin/env bash
# Download the wheels ci/gpu_check.sh installs on a GPU host without a package registry, into
# .whl/ (gitignored; hand it to the GPU host with the checkout, e.g. the device tool's carry).
# For CPython 3.12 on x86-64 Linux; the host is expected to have Python 3.12, CuPy 14, NumPy 2,
# PyTorch and pytest already. Listed in ci/gpu_wheels.txt (one requirement a line, dependencies
# listed too: --no-deps keeps NumPy, which the host has, out of the ~50 MB carried).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
mkdir -p .whl
"$PYTHON" -m pip download -q --disable-pip-version-check --dest .whl --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --no-deps \
    -r ci/gpu_wheels.txt
ls .whl
