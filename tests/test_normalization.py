"""BatchNorm and LayerNorm: PyTorch's outputs, gradients and running statistics (train and eval),
gradient checks on every backend, buffers replaced not mutated, save/load, validation."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import BatchNorm, Conv2D, Dense, Flatten, LayerNorm, ReLU

from layer_helpers import build_layer as _build
from layer_helpers import rel_error as _rel


def _set(layer, backend, **arrays):
    for name, value in arrays.items():
        layer.params[name] = backend.asarray(value, backend.dtype("float64"))


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 2, 5)], ids=["BatchNorm1d", "BatchNorm2d"])
def test_batchnorm_matches_torch_over_several_steps(backend, torch, shape):
    rng = np.random.default_rng(0)
    momentum = 0.3
    ours = _build(BatchNorm(3, momentum=momentum), backend)
    theirs = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        3, momentum=momentum).double()
    gamma, beta = rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)
    _set(ours, backend, weight=gamma, bias=beta)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(gamma))
        theirs.bias.copy_(torch.tensor(beta))
    f64 = backend.dtype("float64")
    for step in range(3):
        for training in (True, False):
            offsets = rng.standard_normal(shape[1:2] + (1,) * (len(shape) - 2))  # per channel
            x = 3.0 * rng.standard_normal(shape) + offsets
            dy = rng.standard_normal(shape)
            y = ours.forward(backend.asarray(x, f64), training=training)
            dx = ours.backward(backend.asarray(dy, f64))
            theirs.train(training)
            theirs.zero_grad()
            xt = torch.tensor(x, requires_grad=True)
            yt = theirs(xt)
            yt.backward(torch.tensor(dy))
            where = f"step {step}, training={training}"
            assert _rel(backend.to_numpy(y), yt.detach().numpy()) < 1e-9, where
            assert _rel(backend.to_numpy(dx), xt.grad.numpy()) < 1e-9, where
            assert _rel(backend.to_numpy(ours.grads["weight"]), theirs.weight.grad.numpy()) < 1e-9, where
            assert _rel(backend.to_numpy(ours.grads["bias"]), theirs.bias.grad.numpy()) < 1e-9, where
            assert _rel(backend.to_numpy(ours.buffers["running_mean"]),
                        theirs.running_mean.numpy()) < 1e-9, where
            assert _rel(backend.to_numpy(ours.buffers["running_var"]),
                        theirs.running_var.numpy()) < 1e-9, where


def test_batchnorm_running_statistics_closed_form(backend):
    """One step from (0, 1): running_mean = m * mean, running_var = (1 - m) + m * unbiased var."""
    x = np.random.default_rng(0).standard_normal((6, 2, 3, 3))
    layer = _build(BatchNorm(2, momentum=0.25), backend)
    layer.forward(backend.asarray(x, backend.dtype("float64")), training=True)
    per_channel = np.moveaxis(x, 1, 0).reshape(2, -1)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_mean"]),
                               0.25 * per_channel.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(layer.buffers["running_var"]),
                               0.75 + 0.25 * per_channel.var(axis=1, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradcheck(backend, shape, training):
    layer = _build(BatchNorm(3), backend)
    rng = np.random.default_rng(1)
    _set(layer, backend, weight=rng.uniform(0.5, 2.0, 3), bias=rng.standard_normal(3))
    layer.buffers["running_mean"] = backend.asarray(rng.standard_normal(3), backend.dtype("float64"))
    layer.buffers["running_var"] = backend.asarray(rng.uniform(0.5, 2.0, 3), backend.dtype("float64"))
    before = {k: backend.to_numpy(v) for k, v in layer.buffers.items()}
    errors = bpgpu.gradient_errors(layer, rng.standard_normal(shape), training=training)
    assert set(errors) == {"x", "weight", "bias"}
    assert max(errors.values()) < 1e-7, errors
    for k, v in layer.buffers.items():  # gradcheck restores the running statistics
        np.testing.assert_array_equal(backend.to_numpy(v), before[k])


def test_batchnorm_replaces_buffers_instead_of_mutating(backend):
    layer = _build(BatchNorm(4), backend)
    old_mean, old_var = layer.buffers["running_mean"], layer.buffers["running_var"]
    x = np.random.default_rng(0).standard_normal((5, 4)) + 2.0
    layer.forward(backend.asarray(x, backend.dtype("float64")), training=True)
    assert layer.buffers["running_mean"] is not old_mean
    np.testing.assert_array_equal(backend.to_numpy(old_mean), np.zeros(4))
    np.testing.assert_array_equal(backend.to_numpy(old_var), np.ones(4))
    layer.forward(backend.asarray(x, backend.dtype("float64")), training=False)
    assert layer.buffers["running_mean"] is not old_mean  # eval leaves them as they are


@pytest.mark.parametrize("normalized_shape", [5, (2, 5)])
def test_layernorm_matches_torch(backend, torch, normalized_shape):
    rng = np.random.default_rng(0)
    norm = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    shape = (3, 2, 5)
    ours = _build(LayerNorm(normalized_shape, eps=1e-4), backend)
    gamma, beta = rng.uniform(0.5, 2.0, norm), rng.standard_normal(norm)
    _set(ours, backend, weight=gamma, bias=beta)
    theirs = torch.nn.LayerNorm(norm, eps=1e-4).double()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(gamma))
        theirs.bias.copy_(torch.tensor(beta))
    x, dy = 2.0 * rng.standard_normal(shape) + 1.0, rng.standard_normal(shape)
    f64 = backend.dtype("float64")
    y = ours.forward(backend.asarray(x, f64), training=True)
    dx = ours.backward(backend.asarray(dy, f64))
    xt = torch.tensor(x, requires_grad=True)
    theirs(xt).backward(torch.tensor(dy))
    assert _rel(backend.to_numpy(y), theirs(torch.tensor(x)).detach().numpy()) < 1e-9
    assert _rel(backend.to_numpy(dx), xt.grad.numpy()) < 1e-9
    assert _rel(backend.to_numpy(ours.grads["weight"]), theirs.weight.grad.numpy()) < 1e-9
    assert _rel(backend.to_numpy(ours.grads["bias"]), theirs.bias.grad.numpy()) < 1e-9


@pytest.mark.parametrize("normalized_shape,shape", [(4, (3, 4)), ((2, 3), (2, 2, 3))])
def test_layernorm_gradcheck(backend, normalized_shape, shape):
    layer = _build(LayerNorm(normalized_shape), backend)
    rng = np.random.default_rng(2)
    norm = shape[-len(layer.normalized_shape):]
    _set(layer, backend, weight=rng.uniform(0.5, 2.0, norm), bias=rng.standard_normal(norm))
    errors = bpgpu.gradient_errors(layer, rng.standard_normal(shape))
    assert max(errors.values()) < 1e-7, errors


def test_batchnorm_network_save_load_keeps_running_statistics(backend, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 1, 4, 4)), rng.integers(0, 3, 32)
    net = bpgpu.Network([Conv2D(1, 2, 3, padding=1), BatchNorm(2), ReLU(), Flatten(),
                         Dense(32, 8), BatchNorm(8, momentum=0.5), LayerNorm(8), Dense(8, 3)],
                        loss="cross_entropy", backend=backend, dtype="float64", seed=0)
    net.fit(X, y, epochs=2, batch_size=8, verbose=0)
    stats = [(k, backend.to_numpy(v)) for layer in net._all_layers for k, v in layer.buffers.items()]
    assert len(stats) == 4 and not np.allclose(stats[0][1], 0.0)
    net.save(tmp_path / "bn.npz")
    loaded = bpgpu.load(tmp_path / "bn.npz", backend="numpy")
    again = [(k, loaded.backend.to_numpy(v)) for layer in loaded._all_layers
             for k, v in layer.buffers.items()]
    for (k1, a), (k2, b) in zip(stats, again, strict=True):
        assert k1 == k2
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(X), net.predict(X), rtol=1e-12, atol=1e-14)


def test_compute_gradients_leaves_running_statistics_alone(backend):
    net = bpgpu.Network([Dense(3, 4), BatchNorm(4), Dense(4, 1)], backend=backend, seed=0)
    X, y = np.random.default_rng(0).standard_normal((6, 3)), np.zeros(6)
    before = backend.to_numpy(net.layers[1].buffers["running_mean"])
    net.compute_gradients(X, y)
    np.testing.assert_array_equal(backend.to_numpy(net.layers[1].buffers["running_mean"]), before)
    net.train_step(X, y)
    assert not np.array_equal(backend.to_numpy(net.layers[1].buffers["running_mean"]), before)


@pytest.mark.parametrize("kwargs", [{"num_features": 0}, {"num_features": 2.5},
                                    {"num_features": 3, "momentum": 1.5},
                                    {"num_features": 3, "momentum": -0.1},
                                    {"num_features": 3, "eps": 0.0},
                                    {"num_features": 3, "eps": "1e-5"}])
def test_batchnorm_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="BatchNorm"):
        BatchNorm(**kwargs)


@pytest.mark.parametrize("shape", [(4, 2), (4, 3, 2), (4, 2, 2, 2)])
def test_batchnorm_rejects_wrong_input_shapes(shape):
    layer = _build(BatchNorm(3), bpgpu.get_backend("numpy"))
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(N, 3, H, W\)"):
        layer.forward(np.ones(shape), training=True)


def test_batchnorm_needs_two_values_per_channel_in_training():
    layer = _build(BatchNorm(3), bpgpu.get_backend("numpy"))
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer.forward(np.ones((1, 3)), training=True)
    assert layer.forward(np.ones((1, 3)), training=False).shape == (1, 3)


@pytest.mark.parametrize("shape", [0, (), (2, -1), "4", (2.0,)])
def test_layernorm_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="LayerNorm"):
        LayerNorm(shape)


def test_layernorm_rejects_mismatched_input():
    layer = _build(LayerNorm((2, 3)), bpgpu.get_backend("numpy"))
    with pytest.raises(ValueError, match=r"ending in shape \(2, 3\)"):
        layer.forward(np.ones((4, 3, 2)))
    with pytest.raises(ValueError, match="ending in shape"):
        layer.output_shape((3,))


def test_output_shapes_and_configs():
    assert BatchNorm(3).output_shape((3, 5, 5)) == (3, 5, 5)
    assert LayerNorm((2, 3)).output_shape((4, 2, 3)) == (4, 2, 3)
    for layer in (BatchNorm(3, momentum=0.2, eps=1e-3), LayerNorm((2, 3), eps=1e-4)):
        again = type(layer).from_config(layer.get_config())
        assert again.get_config() == layer.get_config()
