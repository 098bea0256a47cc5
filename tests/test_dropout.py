"""Dropout: inverted scaling, statistics against torch.nn.Dropout, reproducibility per seed,
inference identity, gradient check on every backend, validation."""

import math

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Dropout

from layer_helpers import build_layer as _build


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_statistics_match_torch_dropout(backend, torch, p):
    n = 100_000
    x = np.random.default_rng(1).uniform(0.5, 1.5, (100, n // 100))
    layer = _build(Dropout(p), backend)
    y = backend.to_numpy(layer.forward(backend.asarray(x, backend.dtype("float64")), training=True))
    torch.manual_seed(0)
    yt = torch.nn.Dropout(p).train()(torch.tensor(x)).numpy()
    sigma = math.sqrt(p * (1 - p) / n)  # standard deviation of the kept fraction
    for out in (y, yt):
        kept = out != 0
        assert abs(kept.mean() - (1 - p)) < 5 * sigma
        # kept units are scaled by exactly 1 / (1 - p), as torch does
        np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-15)
        assert abs(out.mean() - x.mean()) < 0.02
    assert abs((y != 0).mean() - (yt != 0).mean()) < 10 * sigma


def test_backward_uses_the_forward_mask(backend):
    layer = _build(Dropout(0.4), backend)
    f64 = backend.dtype("float64")
    x = np.random.default_rng(0).standard_normal((6, 7))
    y = backend.to_numpy(layer.forward(backend.asarray(x, f64), training=True))
    dy = np.random.default_rng(1).standard_normal((6, 7))
    dx = backend.to_numpy(layer.backward(backend.asarray(dy, f64)))
    np.testing.assert_allclose(dx, dy * y / x, rtol=1e-12)


def test_inference_and_p0_are_the_identity(backend):
    f64 = backend.dtype("float64")
    x = np.random.default_rng(0).standard_normal((5, 4))
    for layer, training in ((_build(Dropout(0.5), backend), False),
                            (_build(Dropout(0.0), backend), True)):
        y = layer.forward(backend.asarray(x, f64), training=training)
        np.testing.assert_array_equal(backend.to_numpy(y), x)
        dx = layer.backward(backend.asarray(2 * x, f64))
        np.testing.assert_array_equal(backend.to_numpy(dx), 2 * x)


def _masks(backend, seed, steps=2):
    net = bpgpu.Network([Dense(8, 8), Dropout(0.5)], backend=backend, seed=seed)
    X = np.ones((16, 8))
    return [net.forward(X, training=True) for _ in range(steps)], net


def test_masks_are_reproducible_for_a_seed(backend):
    first, net = _masks(backend, seed=3)
    again, _ = _masks(backend, seed=3)
    other, _ = _masks(backend, seed=4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    assert not np.array_equal(backend.to_numpy(first[0]) != 0, backend.to_numpy(first[1]) != 0)
    assert not np.array_equal(backend.to_numpy(first[0]) != 0, backend.to_numpy(other[0]) != 0)


def test_gradcheck(backend):
    layer = _build(Dropout(0.3), backend)
    errors = bpgpu.gradient_errors(layer, np.random.default_rng(0).standard_normal((4, 6)))
    assert errors["x"] < 1e-8, errors


def test_network_gradcheck_with_dropout(backend):
    net = bpgpu.Network([Dense(4, 6), Dropout(0.5), Dense(6, 3)], loss="cross_entropy",
                        backend=backend, dtype="float64", seed=0)
    X = np.random.default_rng(0).standard_normal((5, 4))
    errors = bpgpu.gradient_errors(net, X, np.array([0, 1, 2, 0, 1]))
    assert max(errors.values()) < 1e-7, errors


def test_float32_output_stays_float32(backend):
    layer = _build(Dropout(0.5), backend, dtype="float32")
    x = backend.asarray(np.ones((3, 4)), backend.dtype("float32"))
    assert layer.forward(x, training=True).dtype == backend.dtype("float32")


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, float("nan"), "0.5", True, None])
def test_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"Dropout p .* \[0, 1\)"):
        Dropout(p)


def test_needs_a_device_generator():
    layer = Dropout(0.5).build(bpgpu.get_backend("numpy"), np.float64, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="device random generator"):
        layer.forward(np.ones((2, 2)), training=True)


def test_config_round_trip():
    assert Dropout.from_config(Dropout(0.25).get_config()).p == 0.25
