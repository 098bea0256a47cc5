"""Sequential, Residual, Checkpoint, Flatten and Reshape: formulas, gradient checks on every
backend, nested parameters seen by get_weights / gradients / optimizers / save-load (against a
PyTorch model), and checkpointing equal to the plain block while holding no activations."""

import functools

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import (
    AvgPool2D,
    BatchNorm,
    Checkpoint,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    MaxPool2D,
    ReLU,
    Reshape,
    Residual,
    Sequential,
    Tanh,
)

from layer_helpers import build_layer

_build = functools.partial(build_layer, device_seed=7)


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- Sequential and Residual ----------------------------------------------------------------------
def test_sequential_is_the_chain_of_its_layers(backend):
    f64 = backend.dtype("float64")
    seq = _build(Sequential([Dense(3, 4), Tanh(), Dense(4, 2)]), backend)
    a, t, b = seq.layers
    x = _x((5, 3))
    W1, b1, W2, b2 = (backend.to_numpy(p) for p in (a.params["W"], a.params["b"],
                                                    b.params["W"], b.params["b"]))
    y = backend.to_numpy(seq.forward(backend.asarray(x, f64)))
    np.testing.assert_allclose(y, np.tanh(x @ W1 + b1) @ W2 + b2, rtol=1e-12)


def test_sequential_gradcheck_names_nested_parameters(backend):
    layer = _build(Sequential([Dense(3, 4), Sequential([Tanh(), Dense(4, 2)])]), backend)
    errors = bpgpu.gradient_errors(layer, _x((4, 3)))
    assert set(errors) == {"x", "0.W", "0.b", "1.1.W", "1.1.b"}
    assert max(errors.values()) < 1e-7, errors


def test_residual_closed_form(backend):
    """Residual(Dense): y = x + x W + b, dx = dy + dy W^T."""
    f64 = backend.dtype("float64")
    layer = _build(Residual(Dense(4, 4)), backend)
    W, b = (backend.to_numpy(layer.block.params[k]) for k in ("W", "b"))
    x, dy = _x((3, 4)), _x((3, 4), seed=1)
    y = layer.forward(backend.asarray(x, f64))
    dx = layer.backward(backend.asarray(dy, f64))
    np.testing.assert_allclose(backend.to_numpy(y), x + x @ W + b, rtol=1e-12)
    np.testing.assert_allclose(backend.to_numpy(dx), dy + dy @ W.T, rtol=1e-12)


def test_residual_gradcheck(backend):
    block = Sequential([Dense(4, 5, bias=False), BatchNorm(5), ReLU(), Dense(5, 4), LayerNorm(4)])
    errors = bpgpu.gradient_errors(_build(Residual(block), backend), _x((6, 4)))
    assert max(errors.values()) < 1e-7, errors


def test_residual_rejects_a_shape_changing_block():
    with pytest.raises(ValueError, match=r"maps per-sample shape \(3,\) to \(4,\)"):
        bpgpu.Network([Residual(Dense(3, 4))])


def _nested_net(backend, optimizer="adam"):
    return bpgpu.Network(
        [Sequential([Dense(4, 6), ReLU()]),
         Residual(Sequential([Dense(6, 6), Tanh(), Dense(6, 6)])),
         Dense(6, 3)],
        loss="cross_entropy", optimizer=optimizer, backend=backend, dtype="float64", seed=0)


def _torch_nested(torch, weights, X):
    W0, b0, W1, b1, W2, b2, W3, b3 = weights
    h = torch.relu(X @ W0 + b0)
    h = h + (torch.tanh(h @ W1 + b1) @ W2 + b2)
    return h @ W3 + b3


def test_nested_parameters_gradients_and_adam_match_torch(backend, torch):
    net = _nested_net(backend, optimizer=bpgpu.optimizers.Adam(lr=0.05))
    X, y = _x((8, 4)), np.arange(8) % 3
    weights = net.get_weights()
    assert [w.shape for w in weights] == [(4, 6), (6,), (6, 6), (6,), (6, 6), (6,), (6, 3), (3,)]
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    optimizer = torch.optim.Adam(params, lr=0.05)
    for _ in range(3):
        loss, grads = net.compute_gradients(X, y)
        optimizer.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(_torch_nested(torch, params, torch.tensor(X)),
                                                       torch.tensor(y))
        torch_loss.backward()
        assert abs(loss - torch_loss.item()) < 1e-12 * abs(loss)
        for ours, theirs in zip(grads, params, strict=True):
            np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-9, atol=1e-13)
        net.train_step(X, y)
        optimizer.step()
        for ours, theirs in zip(net.get_weights(), params, strict=True):
            np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-9, atol=1e-13)


def test_nested_network_trains_like_the_flat_one(backend):
    """Same seed, same layers: a Sequential-wrapped network is the flat network."""
    X, y = _x((16, 3)), _x((16, 2), seed=1)
    nested = bpgpu.Network([Sequential([Dense(3, 5), ReLU(), Sequential([Dense(5, 2)])])],
                           backend=backend, dtype="float64", seed=1)
    flat = bpgpu.Network([Dense(3, 5), ReLU(), Dense(5, 2)], backend=backend, dtype="float64",
                         seed=1)
    a = nested.fit(X, y, epochs=3, batch_size=4, verbose=0).history["loss"]
    b = flat.fit(X, y, epochs=3, batch_size=4, verbose=0).history["loss"]
    np.testing.assert_allclose(a, b, rtol=1e-9)
    for u, v in zip(nested.get_weights(), flat.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


def test_set_weights_reaches_nested_layers(backend):
    net = _nested_net(backend)
    new = [np.full(w.shape, float(i)) for i, w in enumerate(net.get_weights())]
    net.set_weights(new)
    np.testing.assert_array_equal(
        backend.to_numpy(net.layers[1].block.layers[2].params["W"]), np.full((6, 6), 4.0))


def test_save_load_round_trips_nested_layers(backend, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 1, 6, 6)), rng.integers(0, 3, 16)
    block = Sequential([Conv2D(2, 2, 3, padding=1, bias=False), BatchNorm(2), ReLU()])
    net = bpgpu.Network(
        [Conv2D(1, 2, 3, padding=1), Residual(Checkpoint(block)), MaxPool2D(2), AvgPool2D(2, 1),
         Reshape((-1,)), Dropout(0.2), Sequential([Dense(8, 8), LayerNorm(8)]), Flatten(),
         Dense(8, 3)],
        loss="cross_entropy", backend=backend, dtype="float64", seed=0)
    net.fit(X, y, epochs=2, batch_size=8, verbose=0)
    net.save(tmp_path / "nested.npz")
    loaded = bpgpu.load(tmp_path / "nested.npz", backend=backend)
    assert [repr(layer) for layer in loaded.layers] == [repr(layer) for layer in net.layers]
    for u, v in zip(loaded.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_array_equal(u, v)
    stats = [backend.to_numpy(v) for layer in net._all_layers for v in layer.buffers.values()]
    again = [backend.to_numpy(v) for layer in loaded._all_layers for v in layer.buffers.values()]
    assert len(stats) == 2 and not np.allclose(stats[0], 0.0)
    for u, v in zip(stats, again, strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_allclose(loaded.predict(X), net.predict(X), rtol=1e-12, atol=1e-14)


# -- Checkpoint -----------------------------------------------------------------------------------
def _block():
    return Sequential([Dense(5, 6, bias=False), BatchNorm(6), ReLU(), Dropout(0.5), Dense(6, 5),
                       Tanh()])


def _held_arrays(layer, backend):
    """Names of backend arrays a layer holds outside its params, grads and buffers."""
    return [name for name, value in vars(layer).items()
            if name not in ("params", "grads", "buffers") and backend.is_native(value)]


def _restart(backend, rng):
    """Restore the generator to its own state: what Checkpoint does before drawing, so that the
    plain block below draws the same stream on every backend (on CuPy a restore reseeds)."""
    backend.set_rng_state(rng, backend.rng_state(rng))


def test_checkpoint_equals_the_plain_block(backend):
    f64 = backend.dtype("float64")
    plain = _build(_block(), backend)
    ckpt = _build(Checkpoint(_block()), backend)
    x, dy = _x((8, 5)), _x((8, 5), seed=1)
    _restart(backend, plain.device_rng)
    y_plain = plain.forward(backend.asarray(x, f64), training=True)
    y_ckpt = ckpt.forward(backend.asarray(x, f64), training=True)
    np.testing.assert_array_equal(backend.to_numpy(y_ckpt), backend.to_numpy(y_plain))
    for layer in (plain, ckpt):  # the layers after the block draw their own masks
        layer.device_rng.uniform((3,), f64)
    _restart(backend, plain.device_rng)
    dx_plain = plain.backward(backend.asarray(dy, f64))
    dx_ckpt = ckpt.backward(backend.asarray(dy, f64))
    np.testing.assert_allclose(backend.to_numpy(dx_ckpt), backend.to_numpy(dx_plain), rtol=1e-13)
    for a, b in zip(plain.walk(), ckpt.block.walk(), strict=True):
        assert a.grads.keys() == b.grads.keys()
        for k in a.grads:
            np.testing.assert_allclose(backend.to_numpy(b.grads[k]), backend.to_numpy(a.grads[k]),
                                       rtol=1e-13)
        for k in a.buffers:  # running statistics moved once, not twice
            np.testing.assert_array_equal(backend.to_numpy(b.buffers[k]),
                                          backend.to_numpy(a.buffers[k]))
    # the generator continues where the plain run left it: later masks are unaffected
    np.testing.assert_array_equal(backend.to_numpy(ckpt.device_rng.uniform((4,), f64)),
                                  backend.to_numpy(plain.device_rng.uniform((4,), f64)))


def test_checkpoint_keeps_only_its_input(backend):
    f64 = backend.dtype("float64")
    ckpt = _build(Checkpoint(Sequential([_block(), Residual(Dense(5, 5))])), backend)
    plain = _build(Sequential([_block(), Residual(Dense(5, 5))]), backend)
    x = backend.asarray(_x((4, 5)), f64)
    plain.forward(x, training=True)
    assert any(_held_arrays(layer, backend) for layer in plain.walk())
    for _ in range(2):
        ckpt.forward(x, training=True)
        assert _held_arrays(ckpt, backend) == ["_x"]
        assert all(not _held_arrays(layer, backend) for layer in ckpt.block.walk())
        ckpt.backward(backend.asarray(_x((4, 5), seed=1), f64))
        assert all(not _held_arrays(layer, backend) for layer in ckpt.block.walk())
        assert all(layer.grads.keys() == layer.params.keys() for layer in ckpt.block.walk())


@pytest.mark.parametrize("nested", [False, True])
def test_checkpoint_gradcheck(backend, nested):
    block = _block()
    layer = Checkpoint(Sequential([Checkpoint(block), Dense(5, 3)]) if nested else block)
    errors = bpgpu.gradient_errors(_build(layer, backend), _x((6, 5)))
    assert max(errors.values()) < 1e-7, errors


def test_checkpointed_network_trains_like_the_plain_one(backend):
    def layers(wrap):
        blocks = [Sequential([Dense(4, 6), BatchNorm(6), ReLU()]),
                  Sequential([Dense(6, 6), Tanh()])]
        return [wrap(b) for b in blocks] + [Dense(6, 2)]

    X, y = _x((12, 4)), np.arange(12) % 2
    nets = [bpgpu.Network(layers(wrap), loss="cross_entropy", backend=backend, dtype="float64",
                          seed=3) for wrap in (lambda b: b, Checkpoint)]
    losses = [net.fit(X, y, epochs=3, batch_size=4, verbose=0).history["loss"] for net in nets]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-9)
    for u, v in zip(nets[1].get_weights(), nets[0].get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)
    stats = [[backend.to_numpy(v) for layer in net._all_layers for v in layer.buffers.values()]
             for net in nets]
    for u, v in zip(*stats, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9)
    nets[1].compute_loss(nets[1].forward(X, training=True), y)
    assert nets[1].backward() is None  # the first layer still skips dL/dX inside the Checkpoint


# -- Flatten and Reshape --------------------------------------------------------------------------
def test_flatten_and_reshape(backend):
    f64 = backend.dtype("float64")
    x = _x((2, 3, 2, 2))
    for layer, shape in ((Flatten(), (2, 12)), (Reshape((4, 3)), (2, 4, 3)),
                         (Reshape((-1, 2)), (2, 6, 2))):
        _build(layer, backend)
        y = layer.forward(backend.asarray(x, f64))
        np.testing.assert_array_equal(backend.to_numpy(y), x.reshape(shape))
        assert layer.output_shape((3, 2, 2)) == shape[1:]
        dx = layer.backward(y)
        np.testing.assert_array_equal(backend.to_numpy(dx), x)


@pytest.mark.parametrize("shape", [(), 0, (2, -1, -1), (2.0, 3), "4", (True,)])
def test_reshape_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="Reshape shape"):
        Reshape(shape)


def test_reshape_rejects_incompatible_samples():
    with pytest.raises(ValueError, match=r"needs 12 values per sample"):
        Reshape((3, 4)).output_shape((10,))
    with pytest.raises(ValueError, match="not a multiple of 4"):
        Reshape((4, -1)).output_shape((10,))


# -- construction ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: Sequential([]), lambda: Sequential(Dense(2, 2)),
                                  lambda: Sequential([Dense(2, 2), "relu"]),
                                  lambda: Residual([Dense(2, 2)]), lambda: Checkpoint(3)])
def test_containers_take_layers(make):
    with pytest.raises(TypeError, match="Layer"):
        make()


def test_configs_round_trip_and_shapes():
    layers = [Sequential([Dense(2, 3), ReLU()]), Residual(Dense(3, 3)),
              Checkpoint(Sequential([Dense(3, 3), Tanh()]))]
    for layer in layers:
        again = type(layer).from_config(layer.get_config())
        assert repr(again) == repr(layer)
    assert layers[0].input_shape() == (2,) and layers[0].output_shape((2,)) == (3,)
    assert layers[2].input_shape() == (3,) and layers[2].output_shape((3,)) == (3,)
