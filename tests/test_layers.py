"""Layers: finite-difference gradient checks on every backend, agreement with PyTorch, numerical
stability at +-1000, initialisers and name lookup."""

import math
import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu import initializers
from bpgpu.layers import (
    ACTIVATIONS,
    GELU,
    Dense,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    SiLU,
    Softmax,
    Swish,
    Tanh,
    get_activation,
)

from layer_helpers import build_layer as _build

INITS = ["he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "xavier_normal",
         "xavier_uniform", "lecun_normal", "lecun_uniform", "zeros"]

ACTIVATION_LAYERS = {
    "relu": ReLU,
    "leaky_relu": lambda: LeakyReLU(0.2),
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "silu": SiLU,
    "gelu": GELU,
    "gelu_tanh": lambda: GELU(approximate="tanh"),
    "softmax": Softmax,
    "identity": Identity,
}


def _inputs(shape=(4, 5), seed=0):
    """Standard-normal inputs kept at least 0.05 away from 0 (the kink of ReLU/LeakyReLU)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.05 * np.sign(x) + 0.05 * (x == 0), x)


# -- gradient checks --------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_dense_gradcheck(backend, init):
    layer = _build(Dense(5, 3, init=init), backend)
    errors = bpgpu.gradient_errors(layer, _inputs())
    assert set(errors) == {"x", "W", "b"}
    assert max(errors.values()) < 1e-7, errors


def test_dense_without_bias_gradcheck(backend):
    layer = _build(Dense(5, 3, bias=False), backend)
    errors = bpgpu.gradient_errors(layer, _inputs())
    assert set(errors) == {"x", "W"}
    assert max(errors.values()) < 1e-7, errors


@pytest.mark.parametrize("name", list(ACTIVATION_LAYERS))
def test_activation_gradcheck(backend, name):
    layer = _build(ACTIVATION_LAYERS[name](), backend)
    errors = bpgpu.gradient_errors(layer, 2.0 * _inputs())
    assert set(errors) == {"x"}
    assert errors["x"] < 1e-7, errors


# -- PyTorch as the oracle ----------------------------------------------------------------------------
def _torch_activation(torch, name):
    F = torch.nn.functional
    return {
        "relu": F.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "silu": F.silu,
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "softmax": lambda x: F.softmax(x, dim=-1),
        "identity": lambda x: x,
    }[name]


def _assert_close(actual, expected, rtol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("name", list(ACTIVATION_LAYERS))
def test_activation_matches_torch(backend, torch, name):
    x = 3.0 * _inputs((6, 5), seed=1)
    dy = np.random.default_rng(2).standard_normal(x.shape)
    layer = _build(ACTIVATION_LAYERS[name](), backend)
    f64 = backend.dtype("float64")
    y = layer.forward(backend.asarray(x, dtype=f64), training=True)
    dx = layer.backward(backend.asarray(dy, dtype=f64))

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = _torch_activation(torch, name)(xt)
    yt.backward(torch.tensor(dy))
    _assert_close(backend.to_numpy(y), yt.detach().numpy())
    _assert_close(backend.to_numpy(dx), xt.grad.numpy())


@pytest.mark.parametrize("bias", [True, False])
def test_dense_matches_torch(backend, torch, bias):
    x = _inputs((7, 5), seed=3)
    dy = np.random.default_rng(4).standard_normal((7, 3))
    layer = _build(Dense(5, 3, init="glorot_uniform", bias=bias), backend, seed=5)
    W = backend.to_numpy(layer.params["W"])
    assert W.shape == (5, 3)
    f64 = backend.dtype("float64")
    y = layer.forward(backend.asarray(x, dtype=f64))
    dx = layer.backward(backend.asarray(dy, dtype=f64))

    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.linear(xt, Wt.T, bt if bias else None)
    yt.backward(torch.tensor(dy))
    _assert_close(backend.to_numpy(y), yt.detach().numpy())
    _assert_close(backend.to_numpy(dx), xt.grad.numpy())
    _assert_close(backend.to_numpy(layer.grads["W"]), Wt.grad.numpy())
    if bias:
        _assert_close(backend.to_numpy(layer.grads["b"]), bt.grad.numpy())
    else:
        assert "b" not in layer.params and "b" not in layer.grads


def test_dense_l2_penalty_matches_torch(backend, torch):
    x, dy = _inputs((4, 5)), np.random.default_rng(6).standard_normal((4, 2))
    layer = _build(Dense(5, 2, l2=0.3), backend)
    W = backend.to_numpy(layer.params["W"])
    f64 = backend.dtype("float64")
    layer.forward(backend.asarray(x, dtype=f64))
    layer.backward(backend.asarray(dy, dtype=f64))
    Wt = torch.tensor(W, requires_grad=True)
    yt = torch.tensor(x) @ Wt
    total = (yt * torch.tensor(dy)).sum() + 0.3 * (Wt * Wt).sum()
    total.backward()
    _assert_close(backend.to_numpy(layer.grads["W"]), Wt.grad.numpy())
    _assert_close(backend.to_float(layer.penalty()), 0.3 * float((W * W).sum()))
    assert _build(Dense(5, 2), backend).penalty() is None


def test_dense_first_layer_may_skip_input_gradient(backend):
    layer = _build(Dense(3, 2), backend)
    layer.input_grad = False
    f64 = backend.dtype("float64")
    layer.forward(backend.asarray(_inputs((2, 3)), dtype=f64))
    assert layer.backward(backend.asarray(np.ones((2, 2)), dtype=f64)) is None
    assert tuple(layer.grads["W"].shape) == (3, 2)


# -- stability --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ACTIVATION_LAYERS))
def test_activation_is_stable_at_plus_minus_1000(backend, name, dtype):
    x = np.array([[-1000.0, -30.0, 0.5, 30.0, 1000.0], [1000.0, 1000.0, -1000.0, 0.0, -1000.0]])
    layer = _build(ACTIVATION_LAYERS[name](), backend, dtype)
    # Overflow, division by zero and invalid operations raise; underflow to 0 is the intended
    # result of e^-1000 (NumPy ignores it by default too).
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        y = layer.forward(backend.asarray(x, dtype=backend.dtype(dtype)))
        dx = layer.backward(backend.asarray(np.ones_like(x), dtype=backend.dtype(dtype)))
        y, dx = backend.to_numpy(y), backend.to_numpy(dx)
    assert y.dtype == np.dtype(dtype) and dx.dtype == np.dtype(dtype)
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    # Limits independent of the implementation.
    big, small = x == 1000.0, x == -1000.0
    expected_y = {
        "relu": (1000.0, 0.0), "leaky_relu": (1000.0, -200.0), "sigmoid": (1.0, 0.0),
        "tanh": (1.0, -1.0), "silu": (1000.0, 0.0), "gelu": (1000.0, 0.0), "gelu_tanh": (1000.0, 0.0),
        "identity": (1000.0, -1000.0),
    }
    if name == "softmax":
        np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(y[1], [0.5, 0.5, 0.0, 0.0, 0.0], atol=1e-7)
    else:
        np.testing.assert_allclose(y[big], expected_y[name][0], rtol=1e-6)
        np.testing.assert_allclose(y[small], expected_y[name][1], rtol=1e-6, atol=1e-30)


# -- initialisers ----------------------------------------------------------------------------------
FAN_IN, FAN_OUT = 400, 600
#: (kind, scale): std for normal draws, bound a for uniform ones; written from the definitions.
EXPECTED_SCALE = {
    "he_normal": ("normal", math.sqrt(2 / FAN_IN)),
    "he_uniform": ("uniform", math.sqrt(6 / FAN_IN)),
    "glorot_normal": ("normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "xavier_normal": ("normal", math.sqrt(2 / (FAN_IN + FAN_OUT))),
    "glorot_uniform": ("uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "xavier_uniform": ("uniform", math.sqrt(6 / (FAN_IN + FAN_OUT))),
    "lecun_normal": ("normal", math.sqrt(1 / FAN_IN)),
    "lecun_uniform": ("uniform", math.sqrt(3 / FAN_IN)),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SCALE))
def test_initializer_statistics(name):
    kind, scale = EXPECTED_SCALE[name]
    W = initializers.get_initializer(name)(np.random.default_rng(0), (FAN_IN, FAN_OUT), FAN_IN, FAN_OUT)
    assert W.shape == (FAN_IN, FAN_OUT) and W.dtype == np.float64
    std = scale if kind == "normal" else scale / math.sqrt(3)
    # 240000 draws: the sample std is within ~0.3 % of the truth; 2 % still separates He,
    # Glorot and LeCun (their scales differ by >= 10 % for these fans).
    assert abs(W.std() / std - 1) < 0.02
    assert abs(W.mean()) < 0.01 * std
    if kind == "uniform":
        assert np.abs(W).max() <= scale and np.abs(W).max() > 0.999 * scale
    else:
        assert 0.3 < np.mean(np.abs(W) > std) < 0.34  # normal: P(|z| > 1) = 0.317


def test_zeros_initializer():
    W = initializers.get_initializer("zeros")(np.random.default_rng(0), (3, 4), 3, 4)
    assert W.shape == (3, 4) and not W.any()


@pytest.mark.parametrize("name", INITS)
def test_dense_uses_the_named_initializer_on_every_backend(backend, name):
    layer = _build(Dense(FAN_IN // 10, FAN_OUT // 10, init=name), backend, seed=7)
    expected = initializers.get_initializer(name)(
        np.random.default_rng(7), (FAN_IN // 10, FAN_OUT // 10), FAN_IN // 10, FAN_OUT // 10)
    np.testing.assert_array_equal(backend.to_numpy(layer.params["W"]), expected)
    np.testing.assert_array_equal(backend.to_numpy(layer.params["b"]), np.zeros(FAN_OUT // 10))


def test_xavier_is_glorot():
    for kind in ("normal", "uniform"):
        a = initializers.get_initializer(f"xavier_{kind}")(np.random.default_rng(1), (5, 6), 5, 6)
        b = initializers.get_initializer(f"glorot_{kind}")(np.random.default_rng(1), (5, 6), 5, 6)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", ["he", "glorot", "", None, 3])
def test_unknown_initializer(bad):
    with pytest.raises(ValueError, match="unknown initializer") as info:
        initializers.get_initializer(bad)
    assert "he_normal" in str(info.value) and "glorot_uniform" in str(info.value)
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(2, 3, init=bad)


# -- construction, names, shapes -----------------------------------------------------------------------
@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.5, 3), ("4", 3), (True, 3)])
def test_dense_rejects_bad_sizes(args):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        Dense(*args)


@pytest.mark.parametrize("l2", [-0.1, float("nan"), "x"])
def test_dense_rejects_bad_l2(l2):
    with pytest.raises(ValueError, match="l2 must be a number >= 0"):
        Dense(2, 3, l2=l2)


@pytest.mark.parametrize("slope", [float("inf"), float("nan"), "0.1", None])
def test_leaky_relu_rejects_bad_slope(slope):
    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        LeakyReLU(slope)


def test_dense_shapes():
    layer = Dense(4, 2)
    assert layer.input_shape() == (4,)
    assert layer.output_shape((4,)) == (2,)
    with pytest.raises(ValueError, match="expects inputs with 4 features"):
        layer.output_shape((5,))
    assert ReLU().output_shape((7,)) == (7,)


def test_activation_names():
    expected = {"relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh,
                "silu": SiLU, "swish": SiLU, "gelu": GELU, "softmax": Softmax,
                "identity": Identity, "linear": Identity}
    for name, cls in expected.items():
        assert type(get_activation(name)) is cls
        assert type(get_activation(name.upper())) is cls
        assert name in ACTIVATIONS
    assert Swish is SiLU
    assert type(get_activation(None)) is Identity
    layer = Tanh()
    assert get_activation(layer) is layer
    assert get_activation("relu") is not get_activation("relu")  # a fresh layer every time


@pytest.mark.parametrize("bad", ["rectifier", "", 3])
def test_unknown_activation(bad):
    with pytest.raises(ValueError, match="unknown activation") as info:
        get_activation(bad)
    assert "relu" in str(info.value) and "sigmoid" in str(info.value)


def test_layer_dtype_follows_the_network_dtype(backend):
    layer = _build(Dense(3, 2), backend, "float32")
    assert layer.params["W"].dtype == backend.xp.float32
    y = layer.forward(backend.asarray(np.ones((2, 3)), dtype=backend.dtype("float32")))
    assert y.dtype == backend.xp.float32
    for name, make in ACTIVATION_LAYERS.items():
        act = _build(make(), backend, "float32")
        out = act.forward(y)
        assert out.dtype == backend.xp.float32, name
        assert act.backward(out).dtype == backend.xp.float32, name


def test_gelu_is_within_5e_4_of_the_exact_erf_form(backend, torch):
    """The docstring's claim: the tanh form differs from x * Phi(x) by less than 5e-4."""
    x = np.linspace(-8.0, 8.0, 4001)
    layer = _build(GELU(approximate="tanh"), backend)
    y = backend.to_numpy(layer.forward(backend.asarray(x, dtype=backend.dtype("float64"))))
    exact = torch.nn.functional.gelu(torch.tensor(x)).numpy()
    assert np.abs(y - exact).max() < 5e-4
