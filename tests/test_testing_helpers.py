"""bpgpu.testing: available_backends() and check_layer(), which passes correct layers and fails
wrong ones naming the backend and parameter; the guide's custom-layer example runs as written."""

import pathlib
import re

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import BatchNorm, Conv2D, Dense, Layer, Sequential, Tanh
from bpgpu.testing import available_backends, check_layer

EXTENDING_GUIDE = pathlib.Path(__file__).parent.parent / "docs" / "guide" / "extending.md"


class _Quadratic(Layer):
    """y = x * x * s, one scale s per feature; ``wrong`` gives a backward pass with a bug in ds."""

    def __init__(self, features, wrong=False):
        super().__init__()
        self.features, self.wrong = features, wrong

    def init_params(self, rng):
        self.add_param("s", rng.uniform(0.5, 1.5, self.features))

    def forward(self, x, training=False):
        self._x = x
        return x * x * self.params["s"]

    def backward(self, dy):
        x = self._x
        self.grads["s"] = self.xp.sum(dy * x * (1.0 if self.wrong else x), axis=0)
        return 2.0 * x * dy * self.params["s"]

    def get_config(self):
        return {"features": self.features, "wrong": self.wrong}


def test_available_backends_are_usable():
    names = available_backends()
    assert names[:2] == ["numpy", "array_api_strict"]
    assert names == bpgpu.available_backends()
    for name in names:
        assert bpgpu.get_backend(name).name == name.split(":")[0]


def test_check_layer_passes_correct_layers_on_every_backend():
    errors = check_layer(lambda: _Quadratic(3), (4, 3))
    assert list(errors) == available_backends()
    for per_backend in errors.values():
        assert set(per_backend) == {"x", "s"}
        assert max(per_backend.values()) < 1e-7


@pytest.mark.parametrize("factory,shape", [
    (lambda: Conv2D(2, 2, 3, stride=2, padding=1), (2, 2, 5, 5)),
    (lambda: Sequential([Dense(3, 4, bias=False), BatchNorm(4), Tanh()]), (5, 3)),
])
def test_check_layer_passes_built_in_layers(factory, shape):
    errors = check_layer(factory, shape, max_entries=10)
    assert all(max(e.values()) < 1e-7 for e in errors.values())


def test_check_layer_rebuilds_a_layer_object_on_each_backend():
    layer = _Quadratic(2)
    errors = check_layer(layer, (3, 2), backends=["numpy", "array_api_strict"])
    assert list(errors) == ["numpy", "array_api_strict"]
    assert layer.backend.name == "array_api_strict"


def test_check_layer_fails_a_wrong_layer_naming_backend_and_parameter():
    with pytest.raises(AssertionError) as info:
        check_layer(lambda: _Quadratic(3, wrong=True), (4, 3))
    message = str(info.value)
    assert f"on backend {available_backends()[0]!r}" in message
    assert "the gradient of 's' has relative error" in message
    assert "_Quadratic(features=3, wrong=True)" in message


def test_check_layer_tolerance_is_respected():
    errors = check_layer(lambda: _Quadratic(3), (4, 3), backends=["numpy"])
    worst = max(errors["numpy"].values())
    with pytest.raises(AssertionError, match="> tol"):
        check_layer(lambda: _Quadratic(3), (4, 3), backends=["numpy"], tol=worst / 2)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"layer": "Dense", "input_shape": (2, 2)}, TypeError, "Layer or a function"),
    ({"layer": lambda: 3, "input_shape": (2, 2)}, TypeError, "returned int"),
    ({"layer": lambda: Dense(2, 2), "input_shape": (0, 2)}, ValueError, "input_shape"),
    ({"layer": lambda: Dense(2, 2), "input_shape": 4}, ValueError, "input_shape"),
    ({"layer": lambda: Dense(2, 2), "input_shape": (2, 2), "tol": 0}, ValueError, "tol"),
    ({"layer": lambda: Dense(2, 2), "input_shape": (2, 2), "backends": ["jax"]}, ValueError,
     "unknown backend"),
])
def test_check_layer_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_layer(**kwargs)


def _guide_custom_layer_code():
    text = EXTENDING_GUIDE.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "check_layer(" in b and "class MyPReLU" in b]
    assert len(found) == 1, "the guide's custom-layer example is missing"
    return found[0]


def test_guide_custom_layer_example_runs(tmp_path, capsys):
    namespace = {"__name__": "guide_example"}
    exec(compile(_guide_custom_layer_code(), str(EXTENDING_GUIDE), "exec"), namespace)
    assert set(namespace["errors"]) == set(available_backends())
    assert all(max(e.values()) < 1e-7 for e in namespace["errors"].values())
    losses = namespace["history"].history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert "->" in capsys.readouterr().out
    # the custom layer saves and loads like a built-in one (its class is registered)
    net = namespace["net"]
    net.save(tmp_path / "custom.npz")
    loaded = bpgpu.load(tmp_path / "custom.npz")
    X = np.random.default_rng(1).standard_normal((5, 3))
    np.testing.assert_allclose(loaded.predict(X), net.predict(X), rtol=1e-6)
    # a wrong backward pass in the same layer is caught
    wrong = namespace["MyPReLU"]

    class WrongPReLU(wrong):
        def backward(self, dy):
            dx = super().backward(dy)
            self.grads["a"] = -self.grads["a"]
            return dx

    with pytest.raises(AssertionError, match="gradient of 'a'"):
        check_layer(lambda: WrongPReLU(5), (4, 5))
