"""``backend="cupy:N"`` on a machine with two GPUs: every array of the network lives on device N
and training there matches the NumPy reference. Skipped (with the reason) elsewhere; the same
logic is tested on the CPU with stand-in devices in test_cuda_backend.py."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU


@pytest.fixture
def second_gpu():
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        pytest.skip("needs two CUDA devices: CuPy is not installed")
    except Exception as exc:  # no driver
        pytest.skip(f"needs two CUDA devices: CUDA is unusable here ({exc})")
    if count < 2:
        pytest.skip(f"needs two CUDA devices; this machine has {count}")
    return cupy


def test_network_on_device_1_keeps_everything_there(second_gpu):
    cupy = second_gpu
    X = np.random.default_rng(0).standard_normal((64, 6))
    y = np.arange(64) % 3
    layers = [Dense(6, 16), ReLU(), Dropout(0.2), Dense(16, 3)]
    net = bpgpu.Network(layers, loss="cross_entropy", optimizer="adam", backend="cupy:1",
                        dtype="float64", seed=0)
    net.fit(X, y, epochs=2, batch_size=16, verbose=0)
    arrays = [layer.params[key] for layer, key in net.structure.slots]
    arrays += [a for values in net.optimizer.state.values() for a in values]
    assert arrays and all(a.device.id == 1 for a in arrays)
    assert cupy.cuda.Device().id == 0  # the device is entered per call, not switched for good
    ref = bpgpu.Network([Dense(6, 16), ReLU(), Dense(16, 3)], loss="cross_entropy",
                        optimizer="adam", backend="numpy", dtype="float64", seed=0)
    gpu = bpgpu.Network([Dense(6, 16), ReLU(), Dense(16, 3)], loss="cross_entropy",
                        optimizer="adam", backend="cupy:1", dtype="float64", seed=0)
    for net_ in (ref, gpu):
        net_.fit(X, y, epochs=2, batch_size=16, verbose=0, shuffle=False)
    for a, b in zip(ref.get_weights(), gpu.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
