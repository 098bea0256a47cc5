"""gradcheck itself: small errors for correct gradients, large ones for wrong gradients (so the
check can fail), the names it reports, and that it leaves what it checks unchanged."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Layer, Sigmoid, Tanh
from bpgpu.losses import MSE

from layer_helpers import build_layer as _built

X = np.random.default_rng(0).standard_normal((5, 3))


class Scale(Layer):
    """y = x * s (s learnable, one per feature); ``bug`` breaks one of the two gradients."""

    def __init__(self, features, bug=None):
        super().__init__()
        self.features, self.bug = features, bug

    def init_params(self, rng):
        self.add_param("s", 0.5 + rng.random(self.features))

    def forward(self, x, training=False):
        self._x = x
        return x * self.params["s"]

    def backward(self, dy):
        ds = self.xp.sum(dy * self._x, axis=0)
        self.grads["s"] = 0.5 * ds if self.bug == "param" else ds
        return dy if self.bug == "input" else dy * self.params["s"]


class WrongTanh(Tanh):
    """tanh with the derivative of the sigmoid: a plausible-looking, wrong backward."""

    def backward(self, dy):
        y = self._y
        return dy * y * (1.0 - y)


class Pair(Layer):
    """Two Scale layers in a row, as children (names ``0.s`` and ``1.s``)."""

    def __init__(self, features, bug=None):
        super().__init__()
        self.first, self.second = Scale(features), Scale(features, bug)

    def children(self):
        return [self.first, self.second]

    def forward(self, x, training=False):
        return self.second.forward(self.first.forward(x, training), training)

    def backward(self, dy):
        return self.first.backward(self.second.backward(dy))


def test_correct_layer_has_a_small_error(backend):
    errors = bpgpu.gradient_errors(_built(Scale(3), backend), X)
    assert set(errors) == {"x", "s"}
    assert max(errors.values()) < 1e-8


@pytest.mark.parametrize("bug, wrong", [("param", "s"), ("input", "x")])
def test_wrong_gradient_gives_a_large_error(backend, bug, wrong):
    errors = bpgpu.gradient_errors(_built(Scale(3, bug), backend), X)
    right = ({"x", "s"} - {wrong}).pop()
    assert errors[wrong] > 1e-3, errors
    assert errors[right] < 1e-8, errors
    assert bpgpu.gradcheck(_built(Scale(3, bug), backend), X) == errors[wrong]


def test_layer_check_includes_the_layers_penalty(backend):
    """Dense(l2>0) adds 2*l2*W to dW in backward; the check's L includes l2*sum(W^2) to match."""
    X3 = np.random.default_rng(2).standard_normal((5, 3))
    assert bpgpu.gradcheck(_built(Dense(3, 4, l2=0.3), backend), X3) < 1e-8

    class ForgetsPenaltyGradient(Dense):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["W"] = self.grads["W"] - (2.0 * self.l2) * self.params["W"]
            return dx

    assert bpgpu.gradient_errors(_built(ForgetsPenaltyGradient(3, 4, l2=0.3), backend), X3)["W"] > 1e-3


def test_truly_zero_gradient_agrees_within_noise_and_a_false_one_is_caught(backend):
    """A bias feeding a BatchNorm has exactly zero gradient: its numeric estimate is rounding
    noise, which must not read as disagreement; a backward claiming a non-zero gradient fails."""
    from bpgpu.layers import BatchNorm, Sequential

    X3 = np.random.default_rng(3).standard_normal((6, 3))
    errors = bpgpu.gradient_errors(_built(Sequential([Dense(3, 4), BatchNorm(4)]), backend), X3)
    assert errors["0.b"] == 0.0 and max(errors.values()) < 1e-8, errors

    class PhantomBiasGradient(Dense):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["b"] = self.grads["b"] + 0.5
            return dx

    block = Sequential([PhantomBiasGradient(3, 4), BatchNorm(4)])
    assert bpgpu.gradient_errors(_built(block, backend), X3)["0.b"] > 0.5


def test_wrong_activation_derivative_is_caught(backend):
    assert bpgpu.gradcheck(_built(WrongTanh(), backend), X) > 1e-2
    assert bpgpu.gradcheck(_built(Tanh(), backend), X) < 1e-8


def test_nested_layers_are_named_by_position(backend):
    errors = bpgpu.gradient_errors(_built(Pair(3, bug="param"), backend), X)
    assert set(errors) == {"x", "0.s", "1.s"}
    assert errors["1.s"] > 1e-3 and errors["0.s"] < 1e-8


def test_network_check_catches_a_wrong_layer(backend):
    y = np.random.default_rng(1).standard_normal((5, 2))
    good = bpgpu.Network([Dense(3, 3), Tanh(), Dense(3, 2)], backend=backend, dtype="float64", seed=0)
    bad = bpgpu.Network([Dense(3, 3), WrongTanh(), Dense(3, 2)], backend=backend, dtype="float64", seed=0)
    assert bpgpu.gradcheck(good, X, y) < 1e-7
    errors = bpgpu.gradient_errors(bad, X, y)
    assert set(errors) == {"0.W", "0.b", "2.W", "2.b"}
    assert errors["0.W"] > 1e-3 and errors["0.b"] > 1e-3  # below the wrong layer
    assert errors["2.W"] < 1e-7 and errors["2.b"] < 1e-7  # above it, still right
    nested = bpgpu.Network([Dense(3, 3), Pair(3, bug="param"), Dense(3, 2)], backend=backend,
                           dtype="float64", seed=0)
    errors = bpgpu.gradient_errors(nested, X, y)
    assert {"1.0.s", "1.1.s"} <= set(errors)
    assert errors["1.1.s"] > 1e-3 and errors["1.0.s"] < 1e-7


def test_loss_check_catches_a_wrong_loss(backend):
    class HalfMSE(MSE):
        def backward(self):
            return 0.5 * super().backward()

    pred, target = X, X[::-1].copy()
    assert bpgpu.gradient_errors(MSE(), pred, target, backend=backend) == {
        "pred": pytest.approx(0.0, abs=1e-8)}
    assert bpgpu.gradcheck(HalfMSE(), pred, target, backend=backend) > 0.1  # = 1/3 exactly


def test_check_leaves_the_layer_as_it_was(backend):
    layer = Dense(3, 2).build(backend, backend.dtype("float32"), np.random.default_rng(0))
    before = backend.to_numpy(layer.params["W"])
    assert bpgpu.gradcheck(layer, X) < 1e-7  # done in float64 although the layer is float32
    assert layer.params["W"].dtype == backend.xp.float32
    np.testing.assert_array_equal(backend.to_numpy(layer.params["W"]), before)
    assert layer.input_grad is True


def test_network_check_restores_weights_and_first_layer_flag(backend):
    net = bpgpu.Network([Dense(3, 2), Sigmoid()], loss="bce", backend=backend, dtype="float64", seed=0)
    before = net.get_weights()
    y = (X[:, :2] > 0).astype(float)
    assert bpgpu.gradcheck(net, X, y) < 1e-7
    for a, b in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert net.layers[0].input_grad is False
    assert net.optimizer.step_count == 0


def test_unbuilt_layer_is_built_on_the_requested_backend(backend):
    layer = Scale(3)
    assert bpgpu.gradcheck(layer, X, backend=backend) < 1e-8
    assert layer.backend.name == backend.name


def test_max_entries_samples_a_subset():
    layer = _built(Dense(40, 30), bpgpu.get_backend("numpy"))
    x = np.random.default_rng(2).standard_normal((4, 40))
    errors = bpgpu.gradient_errors(layer, x, max_entries=25)
    assert max(errors.values()) < 1e-7
    wrong = _built(Scale(40, bug="param"), bpgpu.get_backend("numpy"))
    assert bpgpu.gradient_errors(wrong, x, max_entries=5)["s"] > 1e-3


def test_usage_errors():
    layer = Tanh()
    with pytest.raises(TypeError, match=r"expected gradcheck\(layer, x\); got 2 input array\(s\)"):
        bpgpu.gradcheck(layer, X, X)
    with pytest.raises(TypeError, match=r"expected gradcheck\(loss, pred, target\)"):
        bpgpu.gradcheck(MSE(), X)
    with pytest.raises(TypeError, match="gradcheck takes a Layer, a Loss or a Network, got ufunc"):
        bpgpu.gradcheck(np.tanh, X)
