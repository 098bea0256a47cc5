#!/usr/bin/env bash
# The one prepared GPU check (issue 10): everything that needs a GPU, in ONE call of at most
# 8 minutes on one H200 (Python 3.12, CuPy 14, NumPy 2, PyTorch, pytest; no package registry:
# the other dependencies come as wheels in .whl/, made by ci/fetch_gpu_wheels.sh).
#
#   ci/fetch_gpu_wheels.sh && ci/gpu_check.sh --dry-run    # on any machine: is everything here?
#   ci/gpu_check.sh                                         # on the GPU host
#
# Runs the CuPy half of the test suite with CuPy required, bpgpu vs PyTorch CUDA eager (quick),
# with and without CUDA graphs, fit throughput and GPU memory, and writes ONE JSON file:
# $OUT/gpu_check.json when $OUT is set, else benchmarks/results/gpu-check-<date>.json.
# Details: ci/gpu_check.py and docs/guide/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" ci/gpu_check.py "$@"
