"""The fast mixed-precision step (bpgpu.kernels._mixed_step) on a real GPU: the comparisons that
tests/test_cuda_emulated.py runs on the CPU through the CUDA emulation, here with CuPy, NVRTC
and cuBLAS (float16 GEMMs on tensor cores, float32 accumulation) against the reference mixed
step on the same GPU. Skipped, with the reason, without a CUDA device; run by ci/gpu_check.sh.
"""

import pytest
import test_cuda_emulated as emulated_tests
import test_kernels

from bpgpu.layers import LeakyReLU, ReLU, Sigmoid, Tanh

cupy_backend = test_kernels.cupy_backend  # the fixture: skipped with the reason without a GPU


@pytest.mark.parametrize("act", [None, ReLU, Tanh, Sigmoid, lambda: LeakyReLU(0.2)],
                         ids=["linear", "relu", "tanh", "sigmoid", "leaky"])
def test_gpu_mixed_step_matches_reference_mixed_step(cupy_backend, act):
    emulated_tests.test_mixed_step_matches_reference_mixed_step(cupy_backend, act)


@pytest.mark.parametrize("target", ["probability_rows", "mse"])
def test_gpu_mixed_step_other_losses_match_reference(cupy_backend, target):
    emulated_tests.test_mixed_step_other_losses_match_reference(cupy_backend, target)


def test_gpu_mixed_step_skips_the_same_steps_as_reference(cupy_backend):
    emulated_tests.test_mixed_step_skips_the_same_steps_as_reference(cupy_backend)


def test_gpu_mixed_fit_with_metrics_matches_reference(cupy_backend):
    emulated_tests.test_mixed_fit_with_metrics_matches_reference(cupy_backend)
