"""MaxPool2D and AvgPool2D: outputs and gradients equal to torch.nn.MaxPool2d / AvgPool2d
(ties included), gradient checks on every backend, shapes, validation."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import AvgPool2D, MaxPool2D

from layer_helpers import build_layer as _build
from layer_helpers import forward_backward_with_torch

# (kernel_size, stride, input H x W)
GEOMETRIES = [
    (2, None, (4, 6)),
    (2, None, (5, 5)),          # odd size: the last row and column are dropped
    (3, 1, (5, 4)),             # overlapping windows
    ((2, 3), (1, 2), (5, 7)),
    (2, 3, (7, 7)),             # stride > kernel: some pixels in no window
]
POOLS = {"max": (MaxPool2D, "MaxPool2d"), "avg": (AvgPool2D, "AvgPool2d")}


def _run_both(backend, torch, kind, kernel, stride, x, dy_seed=1):
    ours_cls, torch_name = POOLS[kind]
    layer = _build(ours_cls(kernel, stride), backend)
    f64 = backend.dtype("float64")
    y = layer.forward(backend.asarray(x, f64), training=True)
    dy = np.random.default_rng(dy_seed).standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, f64))
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn, torch_name)(kernel, stride)(xt)
    yt.backward(torch.tensor(dy))
    return (backend.to_numpy(y), backend.to_numpy(dx)), (yt.detach().numpy(), xt.grad.numpy())


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("kind", list(POOLS))
def test_matches_torch(backend, torch, kind, geometry):
    kernel, stride, hw = geometry
    x = np.random.default_rng(0).standard_normal((2, 3) + hw)
    (y, dx), (yt, dxt) = _run_both(backend, torch, kind, kernel, stride, x)
    assert y.shape == yt.shape
    np.testing.assert_allclose(y, yt, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, dxt, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kernel,stride", [(2, None), (3, 1)])
def test_max_pool_ties_go_where_torch_sends_them(backend, torch, kernel, stride):
    """Many equal values: each window's gradient goes to its first maximum (row-major)."""
    x = np.random.default_rng(3).integers(0, 2, (2, 2, 6, 6)).astype(np.float64)
    (y, dx), (yt, dxt) = _run_both(backend, torch, "max", kernel, stride, x)
    np.testing.assert_array_equal(y, yt)
    np.testing.assert_allclose(dx, dxt, rtol=1e-12, atol=1e-15)


def test_max_pool_gradient_sums_over_overlapping_windows(backend):
    """A single large pixel that is the maximum of all 4 overlapping 2x2 windows gets all 4."""
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 5.0
    layer = _build(MaxPool2D(2, 1), backend)
    f64 = backend.dtype("float64")
    layer.forward(backend.asarray(x, f64), training=True)
    dx = backend.to_numpy(layer.backward(backend.asarray(np.ones((1, 1, 2, 2)), f64)))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 1, 1] = 4.0
    np.testing.assert_array_equal(dx, expected)


@pytest.mark.parametrize("geometry", GEOMETRIES[2:4], ids=str)
@pytest.mark.parametrize("kind", list(POOLS))
def test_gradcheck(backend, kind, geometry):
    kernel, stride, hw = geometry
    layer = _build(POOLS[kind][0](kernel, stride), backend)
    x = np.random.default_rng(4).standard_normal((2, 2) + hw)
    errors = bpgpu.gradient_errors(layer, x, max_entries=25)
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("kind", list(POOLS))
def test_output_shape_matches_forward(kind):
    backend = bpgpu.get_backend("numpy")
    for kernel, stride, hw in GEOMETRIES:
        layer = _build(POOLS[kind][0](kernel, stride), backend)
        y = layer.forward(np.zeros((1, 3) + hw))
        assert layer.output_shape((3,) + hw) == tuple(y.shape[1:])


def test_stride_defaults_to_the_kernel_size():
    assert MaxPool2D(3).stride == (3, 3)
    assert AvgPool2D((2, 3)).stride == (2, 3)
    assert MaxPool2D(3, 1).stride == (1, 1)


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
@pytest.mark.parametrize("args", [(0,), ((2, 2, 2),), (2, 0), (1.5,), ("2",)])
def test_rejects_bad_arguments(cls, args):
    with pytest.raises(ValueError, match=cls.__name__):
        cls(*args)


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_rejects_bad_inputs(cls):
    layer = _build(cls(3), bpgpu.get_backend("numpy"))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        layer.forward(np.ones((2, 9)))
    with pytest.raises(ValueError, match="kernel size 3 is larger"):
        layer.forward(np.ones((1, 1, 2, 5)))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        layer.output_shape((9,))


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_config_round_trip(cls):
    layer = cls((2, 3), (1, 2))
    assert cls.from_config(layer.get_config()).get_config() == layer.get_config()


# -- padding -----------------------------------------------------------------------------------------
# (kernel_size, stride, padding, input H x W)
PADDED = [
    (3, 1, 1, (5, 4)),
    (2, None, 1, (5, 6)),
    ((3, 2), (2, 1), (1, 0), (6, 5)),
    (5, 2, 2, (4, 4)),           # every window reaches into the padding
]


def _run_padded(backend, torch, layer, torch_pool, x):
    y, dx, yt, xt = forward_backward_with_torch(backend, torch, _build(layer, backend), torch_pool,
                                                x, seed=1)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("geometry", PADDED, ids=str)
def test_max_pool_padding_matches_torch(backend, torch, geometry):
    """The padding holds -inf: an all-negative image must not pool to 0 at its border."""
    kernel, stride, padding, hw = geometry
    x = -1.0 - np.random.default_rng(0).random((2, 3) + hw)
    _run_padded(backend, torch, MaxPool2D(kernel, stride, padding),
                torch.nn.MaxPool2d(kernel, stride, padding), x)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("geometry", PADDED, ids=str)
def test_avg_pool_padding_matches_torch(backend, torch, geometry, count_include_pad):
    kernel, stride, padding, hw = geometry
    x = np.random.default_rng(0).standard_normal((2, 3) + hw)
    _run_padded(backend, torch, AvgPool2D(kernel, stride, padding,
                                          count_include_pad=count_include_pad),
                torch.nn.AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad),
                x)


@pytest.mark.parametrize("layer", [MaxPool2D(3, 2, 1), AvgPool2D(3, 2, 1),
                                   AvgPool2D(3, 2, 1, count_include_pad=False)], ids=repr)
def test_padded_pooling_gradcheck(backend, layer):
    layer = _build(layer, backend)
    x = np.random.default_rng(5).standard_normal((2, 2, 5, 6))
    errors = bpgpu.gradient_errors(layer, x, max_entries=25)
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_padding_beyond_half_the_kernel_is_rejected(cls):
    with pytest.raises(ValueError, match=r"padding \(2, 0\) must be at most half the kernel size "
                                         r"\(3, 3\)"):
        cls(3, 1, (2, 0))
    with pytest.raises(ValueError, match="padding"):
        cls(3, 1, -1)
    assert cls(3, 1, 1).padding == (1, 1)


def test_count_include_pad_must_be_a_bool():
    with pytest.raises(ValueError, match="count_include_pad must be True or False"):
        AvgPool2D(3, 1, 1, count_include_pad="yes")
    with pytest.raises(TypeError):  # keyword-only: torch's fourth argument is ceil_mode
        AvgPool2D(3, 1, 1, False)


def test_padded_pooling_survives_save_and_load(tmp_path):
    from bpgpu.layers import Dense, Flatten

    layers = [MaxPool2D(3, 2, 1), AvgPool2D(2, 1, 1, count_include_pad=False), Flatten(),
              Dense(2 * 5 * 5, 2)]
    net = bpgpu.Network(layers, backend="numpy", dtype="float64", seed=0)
    net.save(tmp_path / "pool.npz")
    again = bpgpu.load(tmp_path / "pool.npz")
    assert again.layers[0].padding == (1, 1) and again.layers[1].count_include_pad is False
    X = np.random.default_rng(0).standard_normal((3, 2, 8, 8))
    np.testing.assert_array_equal(again.predict(X), net.predict(X))
    old = {"kernel_size": [2, 2], "stride": [2, 2]}  # written before padding existed
    assert MaxPool2D.from_config(old).padding == (0, 0)
    assert AvgPool2D.from_config(old).count_include_pad is True
