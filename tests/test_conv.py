"""Conv2D: outputs and gradients equal to torch.nn.Conv2d, gradient checks on every backend,
shapes, the im2col/col2im pair, networks starting with a convolution, validation."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Conv2D, Dense, Flatten, ReLU
from bpgpu.layers._im2col import Windows

from layer_helpers import build_layer as _build
from layer_helpers import forward_backward_with_torch
from layer_helpers import rel_error as _rel

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


# -- dilation and groups -------------------------------------------------------------------------------
# (in_channels, out_channels, kernel_size, stride, padding, dilation, groups, input H x W)
GROUPED = [
    (2, 3, 3, 1, 0, 2, 1, (7, 6)),            # dilation alone
    (4, 6, (3, 2), (2, 1), (2, 1), (1, 3), 2, (6, 8)),
    (3, 3, 3, 1, 1, 1, 3, (5, 5)),            # depthwise: groups = in_channels = out_channels
    (3, 6, 3, 2, 2, 2, 3, (6, 7)),            # depthwise with channel multiplier 2
    (6, 4, 1, 1, 0, 1, 2, (3, 3)),            # grouped 1x1
]


def _conv_pair(backend, torch, geometry, seed=1):
    """Our layer and torch.nn.Conv2d with the same random weights, run on the same x and dy."""
    c_in, c_out, kernel, stride, padding, dilation, groups, hw = geometry
    layer = _build(Conv2D(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups),
                   backend)
    rng = np.random.default_rng(seed)
    W, b = rng.standard_normal(tuple(layer.params["W"].shape)), rng.standard_normal(c_out)
    f64 = backend.dtype("float64")
    layer.params["W"], layer.params["b"] = backend.asarray(W, f64), backend.asarray(b, f64)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation,
                           groups=groups).double()
    assert tuple(conv.weight.shape) == W.shape
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(W))
        conv.bias.copy_(torch.tensor(b))
    return layer, conv, rng.standard_normal((2, c_in) + hw)


@pytest.mark.parametrize("geometry", GROUPED, ids=str)
def test_dilation_and_groups_match_torch(backend, torch, geometry):
    layer, conv, x = _conv_pair(backend, torch, geometry)
    y, dx, yt, xt = forward_backward_with_torch(backend, torch, layer, conv, x, seed=2)
    assert _rel(y, yt.detach().numpy()) < 1e-12
    assert _rel(dx, xt.grad.numpy()) < 1e-12
    assert _rel(backend.to_numpy(layer.grads["W"]), conv.weight.grad.numpy()) < 1e-12
    assert _rel(backend.to_numpy(layer.grads["b"]), conv.bias.grad.numpy()) < 1e-12


@pytest.mark.parametrize("geometry", GROUPED[1:4], ids=str)
def test_dilation_and_groups_gradcheck(backend, geometry):
    c_in, c_out, kernel, stride, padding, dilation, groups, hw = geometry
    layer = _build(Conv2D(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups),
                   backend)
    x = np.random.default_rng(3).standard_normal((2, c_in) + hw)
    errors = bpgpu.gradient_errors(layer, x, max_entries=10)
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) < 1e-7, errors


def test_grouped_weights_and_initial_scale_follow_the_group_size():
    layer = _build(Conv2D(64, 64, 3, groups=32, init="he_normal"), bpgpu.get_backend("numpy"),
                   seed=0)
    W = np.asarray(layer.params["W"])
    assert W.shape == (64, 2, 3, 3)
    # he_normal: std sqrt(2 / fan_in), fan_in = (64 / 32) * 3 * 3 = 18 (as torch counts it);
    # counting all 64 input channels would give a std 4 times smaller.
    assert abs(W.std() / np.sqrt(2.0 / 18) - 1.0) < 0.2


@pytest.mark.parametrize("args,kwargs,match", [
    ((3, 4, 3), {"groups": 2}, r"groups=2 must divide both in_channels \(3\) and out_channels \(4\)"),
    ((6, 4, 3), {"groups": 3}, r"groups=3 must divide both in_channels \(6\) and out_channels \(4\)"),
    ((3, 4, 3), {"groups": 0}, "groups"),
    ((3, 4, 3), {"dilation": 0}, "dilation"),
    ((3, 4, 3), {"dilation": (1, 2, 3)}, "dilation"),
])
def test_rejects_impossible_groups_and_dilation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv2D(*args, **kwargs)


def test_torch_style_positional_dilation_is_refused_with_advice():
    with pytest.raises(ValueError, match="pass dilation and groups by keyword"):
        Conv2D(2, 4, 3, 1, 1, 2)


def test_dilated_kernel_larger_than_the_input_is_rejected_and_changes_nothing():
    layer = _build(Conv2D(1, 1, 3, dilation=3), bpgpu.get_backend("numpy"))
    W = np.array(layer.params["W"], copy=True)
    ok = layer.forward(np.ones((1, 1, 7, 7)), training=True)  # span 7: one window
    assert ok.shape == (1, 1, 1, 1)
    cached = layer._cols
    with pytest.raises(ValueError, match=r"kernel size 3 with dilation 3 \(span 7\) is larger "
                                         r"than the padded input \(6 \+ 2 \* 0\); the output "
                                         "would have no rows or columns"):
        layer.forward(np.ones((1, 1, 6, 8)))
    with pytest.raises(ValueError, match="span 7"):
        layer.output_shape((1, 6, 8))
    assert layer._cols is cached and np.array_equal(np.asarray(layer.params["W"]), W)


def test_network_with_dilation_and_groups_survives_save_and_load(tmp_path):
    layers = [Conv2D(2, 4, 3, padding=2, dilation=2, groups=2), ReLU(),
              Conv2D(4, 4, 3, groups=4, bias=False), Flatten(), Dense(4 * 4 * 4, 3)]
    net = bpgpu.Network(layers, loss="cross_entropy", backend="numpy", dtype="float64", seed=1)
    X = np.random.default_rng(0).standard_normal((5, 2, 6, 6))
    net.save(tmp_path / "conv.npz")
    again = bpgpu.load(tmp_path / "conv.npz")
    assert [layer.get_config() for layer in again.layers] == \
        [layer.get_config() for layer in net.layers]
    assert (again.layers[0].dilation, again.layers[0].groups) == ((2, 2), 2)
    np.testing.assert_array_equal(again.predict(X), net.predict(X))


def test_config_without_dilation_and_groups_loads_as_before():
    """Configs written before these options existed rebuild the plain convolution."""
    old = {"in_channels": 2, "out_channels": 3, "kernel_size": [3, 3], "stride": [1, 1],
           "padding": [0, 0], "init": "he_normal", "bias": True}
    layer = Conv2D.from_config(old)
    assert (layer.dilation, layer.groups) == ((1, 1), 1)
