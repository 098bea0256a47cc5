"""The registry: every kind of component (layer, activation, loss, optimizer, schedule, metric)
is found by name and rebuilt from a file the same way, custom ones included.

The end-to-end check for each kind: a network using a custom component trains 2 epochs, is saved,
loaded and trained 2 more; the oracle is the same network trained 4 epochs without interruption
(losses, metrics and weights must agree)."""

import math
import pathlib
import re

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Layer, Tanh
from bpgpu.losses import MSE, Loss
from bpgpu.metrics import Metric
from bpgpu.optimizers import SGD, Adam, Optimizer
from bpgpu.registry import KINDS, Registry, get_registry
from bpgpu.schedules import Schedule


class Softsign(Layer):
    """y = x / (1 + |x|);  dx = dy / (1 + |x|)^2."""

    def forward(self, x, training=False):
        self._x = x
        return x / (1.0 + self.xp.abs(x))

    def backward(self, dy):
        d = 1.0 + self.xp.abs(self._x)
        return dy / (d * d)


class Huber(Loss):
    """L = mean(d^2 / 2 where |d| <= delta, else delta (|d| - delta / 2)), d = pred - target."""

    name = "huber"

    def __init__(self, delta=1.0):
        super().__init__()
        self.delta = delta

    def forward(self, pred, target):
        xp = self._ns(pred)
        self._d = pred - target
        small = xp.abs(self._d) <= self.delta
        terms = xp.where(small, 0.5 * self._d * self._d,
                         self.delta * (xp.abs(self._d) - 0.5 * self.delta))
        return xp.mean(terms)

    def backward(self):
        xp, d = self.xp, self._d
        n = math.prod(d.shape)
        return xp.where(xp.abs(d) <= self.delta, d, self.delta * xp.sign(d)) / n

    def get_config(self):
        return {"delta": self.delta}


class SignMomentum(Optimizer):
    """m <- beta m + g;  p <- p - lr sign(m)."""

    def __init__(self, lr=0.01, beta=0.9, **clipping):
        super().__init__(lr, **clipping)
        self.beta = beta

    def _init_state(self, params):
        return {"momentum": self._zeros(params)}

    def _update(self, i, p, g, lr):
        m = self.beta * self.state["momentum"][i] + g
        self.state["momentum"][i] = m
        return p - lr * self.xp.sign(m)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


class InverseTimeLR(Schedule):
    """lr / (1 + decay t)."""

    def __init__(self, lr, decay, per="epoch"):
        super().__init__(per)
        self.lr, self.decay = lr, decay

    def rate(self, t):
        return self.lr / (1.0 + self.decay * t)

    def get_config(self):
        return {"lr": self.lr, "decay": self.decay, "per": self.per}


class WithinTolerance(Metric):
    """Fraction of output elements within ``tol`` of the target."""

    name = "within_tolerance"

    def __init__(self, tol=0.5):
        super().__init__()
        self.tol = tol

    def update(self, pred, target):
        xp = self.xp
        hits = xp.sum(xp.astype(xp.abs(pred - target) <= self.tol, pred.dtype))
        return self._vector(hits, xp.asarray(float(math.prod(pred.shape)), dtype=pred.dtype))

    def result(self, sums):
        return float(sums[0] / sums[1])

    def get_config(self):
        return {"tol": self.tol}


get_registry("activation").add_name("softsign", Softsign)
get_registry("loss").add_name("huber", Huber)

RNG = np.random.default_rng(3)
X = RNG.standard_normal((64, 3))
Y = np.sin(X[:, :1]) + 0.5 * X[:, 1:2] * X[:, 2:3]


def _net(kind):
    """A float64 NumPy network with one custom component of ``kind``, the rest built in."""
    layers = [Dense(3, 8), Tanh(), Dense(8, 1)]
    loss, optimizer = "mse", Adam(lr=0.01)
    if kind == "layer":
        layers = [Dense(3, 8), Softsign(), Dense(8, 1)]
    elif kind == "activation":
        return bpgpu.Network.from_sizes([3, 8, 1], activation="softsign", backend="numpy",
                                        dtype="float64", seed=0)
    elif kind == "loss":
        loss = Huber(delta=0.3)
    elif kind == "optimizer":
        optimizer = SignMomentum(lr=0.01, beta=0.8)
    elif kind == "schedule":
        optimizer = SGD(lr=InverseTimeLR(0.2, decay=0.5), momentum=0.9)
    return bpgpu.Network(layers, loss=loss, optimizer=optimizer, backend="numpy",
                         dtype="float64", seed=0)


def _fit(net, epochs, kind):
    metrics = [WithinTolerance(0.25)] if kind == "metric" else None
    return net.fit(X, Y, epochs=epochs, batch_size=16, verbose=0, metrics=metrics)


@pytest.mark.parametrize("kind", ["layer", "activation", "loss", "optimizer", "schedule", "metric"])
def test_custom_component_saves_loads_and_trains_on(kind, tmp_path):
    straight = _net(kind)
    _fit(straight, 4, kind)

    resumed = _net(kind)
    _fit(resumed, 2, kind)
    resumed.save(tmp_path / "model.npz")
    loaded = bpgpu.load(tmp_path / "model.npz", backend="numpy")
    assert bpgpu.registry.get_registry("layer").serialize(loaded.layers[1]) == \
        bpgpu.layers.serialize_layer(resumed.layers[1])
    assert type(loaded.loss) is type(resumed.loss)
    assert loaded.loss.get_config() == resumed.loss.get_config()
    assert type(loaded.optimizer) is type(resumed.optimizer)
    assert loaded.optimizer.get_config() == resumed.optimizer.get_config()
    _fit(loaded, 2, kind)

    for name, values in straight.history.history.items():
        np.testing.assert_allclose(loaded.history.history[name], values, rtol=1e-12,
                                   err_msg=f"history {name!r} after resuming")
    for w_loaded, w_straight in zip(loaded.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(w_loaded, w_straight, rtol=1e-12, atol=1e-15)
    if kind == "metric":
        assert len(straight.history.history["within_tolerance"]) == 4


def test_custom_components_are_found_by_name():
    net = bpgpu.Network.from_sizes([3, 4, 1], activation="softsign", loss="HUBER",
                                   optimizer="SignMomentum", backend="numpy", seed=0)
    assert isinstance(net.layers[1], Softsign)
    assert isinstance(net.loss, Huber) and net.loss.delta == 1.0
    assert isinstance(net.optimizer, SignMomentum)
    history = net.fit(X, Y, epochs=1, verbose=0, metrics=["WithinTolerance"])
    hits = history.history["within_tolerance"][0]
    assert 0.0 <= hits <= 1.0


def test_the_custom_metric_matches_its_definition():
    net = _net("layer")
    pred = net.predict(X)
    expected = float(np.mean(np.abs(pred - Y) <= 0.4))
    metric = WithinTolerance(0.4).bind(net.backend, net.loss)
    metric.begin()
    sums = net.backend.to_numpy(metric.update(net.backend.asarray(pred), net.backend.asarray(Y)))
    assert 0.0 < expected < 1.0
    assert metric.result(sums) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kind, obj", [
    ("schedule", InverseTimeLR(0.1, decay=2.0, per="batch")),
    ("metric", WithinTolerance(0.125)),
    ("loss", Huber(delta=2.5)),
    ("optimizer", SignMomentum(lr=0.5, beta=0.25, clip_norm=1.0)),
    ("layer", Dense(2, 3, init="zeros")),
])
def test_serialize_then_deserialize_rebuilds_an_equal_object(kind, obj):
    reg = get_registry(kind)
    spec = reg.serialize(obj)
    rebuilt = reg.deserialize(spec)
    assert type(rebuilt) is type(obj)
    assert rebuilt.get_config() == obj.get_config()
    assert reg.serialize(rebuilt) == spec


def test_each_kind_has_its_own_registry():
    assert set(KINDS) == {"layer", "activation", "loss", "optimizer", "schedule", "metric",
                          "callback"}
    assert get_registry("loss").class_named("MSE") is MSE
    with pytest.raises(ValueError, match="unknown loss class 'Dense'; known losses: .*MSE"):
        get_registry("loss").deserialize({"class": "Dense", "config": {}})
    with pytest.raises(ValueError, match="unknown kind of component 'model'"):
        get_registry("model")


def test_a_second_class_with_a_taken_name_is_refused_and_changes_nothing():
    reg = get_registry("loss")
    before = dict(reg.classes)
    namespace = {"__name__": "someone_elses_module", "Loss": Loss}
    with pytest.raises(ValueError, match="a loss class named 'Huber' is already registered "
                                         r"\(test_registry.Huber\)"):
        exec("class Huber(Loss):\n    pass\n", namespace)
    assert reg.classes == before
    assert reg.class_named("Huber") is Huber


def test_running_the_same_class_statement_again_replaces_the_class():
    reg = Registry("loss")
    first = reg.register(type("Replaceable", (), {"__module__": "notebook"}))
    second = reg.register(type("Replaceable", (), {"__module__": "notebook"}))
    assert first is not second and reg.class_named("Replaceable") is second
    reg.add_name("replaceable", first)
    reg.add_name("replaceable", second)
    assert reg.create("replaceable").__class__ is second


def test_names_are_unique_and_checked():
    reg = Registry("metric")
    reg.add_name("Half", lambda: 0.5)
    assert reg.create("HALF") == 0.5
    before = dict(reg.names)
    with pytest.raises(ValueError, match="the metric name 'half' is already taken"):
        reg.add_name("half", lambda: 1.0)
    with pytest.raises(TypeError, match="must be callable"):
        reg.add_name("third", 1 / 3)
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add_name("", lambda: 0.0)
    assert reg.names == before
    with pytest.raises(ValueError, match="name table maps lower-case names"):
        reg.use_names({"Upper": lambda: 0})
    assert reg.names == before


def test_unknown_names_say_what_is_accepted():
    with pytest.raises(ValueError, match="unknown loss 'hinge'; expected a loss object or one of "
                                         "mse, .*huber"):
        bpgpu.losses.get_loss("hinge")
    with pytest.raises(ValueError, match="unknown optimizer 7"):
        bpgpu.optimizers.get_optimizer(7)
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        bpgpu.metrics.get_metric("f2")
    with pytest.raises(ValueError, match="unknown activation 'rectifier'"):
        bpgpu.Network.from_sizes([2, 2], activation="rectifier")


def test_bad_descriptions_are_refused_with_the_reason():
    reg = get_registry("optimizer")
    with pytest.raises(ValueError, match="an optimizer description must be"):
        reg.deserialize(["SGD"])
    with pytest.raises(ValueError, match="does not fit its constructor"):
        reg.deserialize({"class": "SGD", "config": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match="unknown optimizer class '_Hidden'"):
        reg.deserialize({"class": "_Hidden", "config": {}})


def test_objects_that_cannot_be_described_are_refused():
    def half_error(y_true, y_pred):
        return 0.5

    with pytest.raises(TypeError, match="cannot be described in a file"):
        get_registry("metric").serialize(bpgpu.metrics.get_metric(half_error))

    class DuckLoss:
        def get_config(self):
            return {}

    with pytest.raises(ValueError, match="is not a registered loss class"):
        get_registry("loss").serialize(DuckLoss())


GUIDE = pathlib.Path(__file__).parent.parent / "docs" / "guide" / "extending.md"


def test_the_extending_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    """Every example of docs/guide/extending.md, in order, in one namespace (the custom-layer
    example, which checks gradients on every backend, runs in test_testing_helpers)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), flags=re.S)
    blocks = [b for b in blocks if "class MyPReLU" not in b]
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "guide_example"}
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), namespace)
    resumed, net = namespace["resumed"], namespace["net"]
    assert type(resumed.optimizer) is namespace["MyLion"]
    assert resumed.optimizer.lr == net.optimizer.lr  # the schedule, rebuilt from its description
    assert type(resumed.loss) is namespace["MyLogCosh"]
    assert isinstance(resumed.layers[1], namespace["MySoftsign"])
    losses = resumed.history.history["loss"]
    assert len(losses) == 40 and losses[-1] < 0.5 * losses[0]
    assert len(resumed.history.history["within_tol"]) == 40
    assert "MyLion(" in capsys.readouterr().out
    # the guide's loss is right: finite differences agree with its backward pass
    rng = np.random.default_rng(0)
    pred, target = rng.standard_normal((6, 2)) * 3, rng.standard_normal((6, 2))
    assert bpgpu.gradcheck(namespace["MyLogCosh"](scale=0.7), pred, target) < 1e-7


def test_callbacks_register_like_the_other_components():
    reg = get_registry("callback")
    assert reg.class_named("EarlyStopping") is bpgpu.callbacks.EarlyStopping

    class StopAtOnce(bpgpu.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.network.stop_training = True

    assert reg.class_named("StopAtOnce") is StopAtOnce
    net = _net("layer")
    history = net.fit(X, Y, epochs=5, verbose=0, callbacks=[reg.class_named("StopAtOnce")()])
    assert len(history.history["loss"]) == 1
