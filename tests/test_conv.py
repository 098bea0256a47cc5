"""Conv2D: outputs and gradients equal to torch.nn.Conv2d, gradient checks on every backend,
shapes, the im2col/col2im pair, networks starting with a convolution, validation."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Conv2D, Dense, Flatten, ReLU
from bpgpu.layers.im2col import Windows
from layer_helpers import build_layer as _build, rel_error as _rel

# (in_channels, out_channels, kernel_size, stride, padding, input H x W)
GEOMETRIES = [
    (2, 3, 3, 1, 0, (6, 5)),
    (2, 3, 3, 2, 1, (7, 6)),
    (3, 2, (2, 3), (2, 1), (1, 0), (5, 7)),
    (1, 4, 1, 1, 0, (3, 4)),
    (2, 2, 3, 3, 2, (4, 4)),   # stride > kernel and padding: pixels no window reads
    (1, 2, 4, 1, 0, (4, 4)),   # kernel = image: one window
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_conv2d(backend, torch, geometry, bias):
    c_in, c_out, kernel, stride, padding, hw = geometry
    layer = _build(Conv2D(c_in, c_out, kernel, stride, padding, bias=bias), backend)
    rng = np.random.default_rng(1)
    W = rng.standard_normal(tuple(layer.params["W"].shape))
    b = rng.standard_normal(c_out)
    f64 = backend.dtype("float64")
    layer.params["W"] = backend.asarray(W, f64)
    if bias:
        layer.params["b"] = backend.asarray(b, f64)
    x = rng.standard_normal((3, c_in) + hw)
    y = layer.forward(backend.asarray(x, f64), training=True)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, f64))

    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(W))
        if bias:
            conv.bias.copy_(torch.tensor(b))
    xt = torch.tensor(x, requires_grad=True)
    yt = conv(xt)
    yt.backward(torch.tensor(dy))
    assert tuple(y.shape) == tuple(yt.shape)
    assert _rel(backend.to_numpy(y), yt.detach().numpy()) < 1e-9
    assert _rel(backend.to_numpy(dx), xt.grad.numpy()) < 1e-9
    assert _rel(backend.to_numpy(layer.grads["W"]), conv.weight.grad.numpy()) < 1e-9
    if bias:
        assert _rel(backend.to_numpy(layer.grads["b"]), conv.bias.grad.numpy()) < 1e-9
    else:
        assert "b" not in layer.params


@pytest.mark.parametrize("geometry", GEOMETRIES[:3], ids=str)
def test_gradcheck(backend, geometry):
    c_in, c_out, kernel, stride, padding, hw = geometry
    layer = _build(Conv2D(c_in, c_out, kernel, stride, padding), backend)
    x = np.random.default_rng(2).standard_normal((2, c_in) + hw)
    errors = bpgpu.gradient_errors(layer, x, max_entries=12)
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) < 1e-7, errors


def test_col2im_is_the_adjoint_of_im2col(backend):
    """<im2col(x), c> = <x, col2im(c)> for every x and c: col2im sums each pixel's copies."""
    win = Windows(backend, 2, 5, 6, (3, 2), (2, 1), (1, 2), "test")
    rng = np.random.default_rng(0)
    f64 = backend.dtype("float64")
    x = rng.standard_normal((2, 2, 5, 6))
    c = rng.standard_normal((2, win.n_windows, win.window_size))
    cols = backend.to_numpy(win.im2col(backend.asarray(x, f64)))
    back = backend.to_numpy(win.col2im(backend.asarray(c, f64)))
    assert cols.shape == c.shape and back.shape == x.shape
    assert abs(np.sum(cols * c) - np.sum(x * back)) < 1e-10 * np.sum(np.abs(cols * c))


def test_output_shape_matches_forward():
    backend = bpgpu.get_backend("numpy")
    for c_in, c_out, kernel, stride, padding, hw in GEOMETRIES:
        layer = _build(Conv2D(c_in, c_out, kernel, stride, padding), backend)
        y = layer.forward(np.zeros((1, c_in) + hw))
        assert layer.output_shape((c_in,) + hw) == tuple(y.shape[1:])


def test_first_layer_skips_the_input_gradient(backend):
    layer = _build(Conv2D(1, 2, 3), backend)
    layer.input_grad = False
    y = layer.forward(backend.asarray(np.ones((2, 1, 4, 4)), backend.dtype("float64")))
    assert layer.backward(y) is None
    assert tuple(layer.grads["W"].shape) == (2, 1, 3, 3)


def test_float32_stays_float32(backend):
    layer = Conv2D(2, 3, 3, padding=1).build(backend, backend.dtype("float32"),
                                             np.random.default_rng(0))
    x = backend.asarray(np.ones((2, 2, 4, 4)), backend.dtype("float32"))
    y = layer.forward(x, training=True)
    assert y.dtype == backend.dtype("float32")
    assert layer.backward(y).dtype == backend.dtype("float32")


def test_network_starting_with_conv2d_trains_and_gradchecks(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 1, 5, 5))
    y = (X[:, 0, 2, 2] > 0).astype(np.int64)
    net = bpgpu.Network([Conv2D(1, 3, 3), ReLU(), Flatten(), Dense(27, 2)], loss="cross_entropy",
                        optimizer=bpgpu.optimizers.Adam(lr=0.01), backend=backend,
                        dtype="float64", seed=0)
    errors = bpgpu.gradient_errors(net, X[:4], y[:4])
    assert max(errors.values()) < 1e-7, errors
    history = net.fit(X, y, epochs=30, batch_size=None, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    assert net.predict(X).shape == (12, 2)
    with pytest.raises(ValueError, match=r"Conv2D\(1, 3\) expects samples of shape \(1, H, W\)"):
        net.predict(np.ones((2, 2, 5, 5)))


@pytest.mark.parametrize("args,match", [
    ((0, 2, 3), "in_channels"),
    ((1, 2, 0), "kernel_size"),
    ((1, 2, (3, 3, 3)), "kernel_size"),
    ((1, 2, 3, 0), "stride"),
    ((1, 2, 3, 1, -1), "padding"),
    ((1, 2, 2.5), "kernel_size"),
])
def test_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        Conv2D(*args)


def test_rejects_bad_inputs():
    layer = _build(Conv2D(2, 3, 3), bpgpu.get_backend("numpy"))
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 2, H, W\)"):
        layer.forward(np.ones((1, 3, 5, 5)))
    with pytest.raises(ValueError, match=r"expects input of shape"):
        layer.forward(np.ones((1, 2, 5)))
    with pytest.raises(ValueError, match="kernel size 3 is larger than the padded input"):
        layer.forward(np.ones((1, 2, 2, 5)))


def test_config_round_trip():
    layer = Conv2D(2, 3, (3, 2), stride=2, padding=(1, 0), bias=False)
    again = Conv2D.from_config(layer.get_config())
    assert again.get_config() == layer.get_config()
    assert (again.kernel_size, again.stride, again.padding) == ((3, 2), (2, 2), (1, 0))
