"""Finite-difference gradient checking: the test every backward pass must pass.

For each parameter (and a layer's or loss's input) the analytic gradient from ``backward`` is
compared with central differences

    dL/dp_k ~ (L(p + eps e_k) - L(p - eps e_k)) / (2 eps)

computed in float64, by the relative error ``||num - ana|| / (||num|| + ||ana||)``. Values below
about 1e-7 mean the backward pass is right; a wrong formula gives 1e-2 or more.

A gradient that is truly zero (a bias feeding a BatchNorm, say) cannot be measured relative to
itself: its numeric estimate is pure rounding noise. So when both ``||num||`` and ``||ana||`` lie
below the noise floor of the differences, ``100 * 2^-52 * max(1, |L|) / eps * sqrt(n)`` for n
perturbed entries, the two agree and the error is 0.

What L is:
  * a layer: L = sum(layer(x) * R) + its penalties (``penalty()`` of it and nested layers),
    R a fixed random array, so dL/dy = R;
  * a loss: the loss itself, differentiated with respect to the prediction;
  * a network: its training loss on ``(X, y)``, penalties included; for a mixed-precision
    network, the float64 chain without its 16-bit casts and loss scaling (the formulas, which
    finite differences can measure).

Random layers (dropout) see the same random numbers in every evaluation: the device generator is
rewound before each forward pass. Buffers (running statistics) are restored afterwards.
"""

from typing import Any

import numpy as np

from ._engine import run_backward, run_forward
from ._structure import NetworkStructure
from .backend import get_backend
from .layers.base import Layer
from .losses import Loss
from .network import Network
from .typing import ArrayLike

__all__ = ["gradcheck", "gradient_errors"]


def gradcheck(obj: Any, *inputs: ArrayLike, backend: Any = None, eps: float = 1e-6,
              training: bool = True, seed: int = 0, max_entries: int | None = None) -> float:
    """Worst relative error between analytic and numeric gradients (see the module docstring).

    Call as ``gradcheck(layer, x)``, ``gradcheck(loss, pred, target)`` or ``gradcheck(net, X, y)``.
    ``inputs`` may be host arrays. An unbuilt layer is built on ``backend`` (default NumPy); a
    built one, and a network, keep their backend. ``max_entries`` limits how many entries of each
    array are perturbed (a seeded random subset), for large layers.
    """
    return max(gradient_errors(obj, *inputs, backend=backend, eps=eps, training=training,
                               seed=seed, max_entries=max_entries).values())


def gradient_errors(obj: Any, *inputs: ArrayLike, backend: Any = None, eps: float = 1e-6,
                    training: bool = True, seed: int = 0,
                    max_entries: int | None = None) -> dict[str, float]:
    """``{name: relative error}`` for every checked array: ``"x"`` (a layer's input), ``"pred"``
    (a loss's prediction), parameters as ``"W"``, ``"b"`` or ``"1.0.W"`` (child 1, its child 0)."""
    rng = np.random.default_rng(seed)
    checker: _Check
    if isinstance(obj, Network):
        _expect(inputs, 2, "gradcheck(net, X, y)")
        checker = _network_check(obj, inputs[0], inputs[1], training)
    elif isinstance(obj, Layer):
        _expect(inputs, 1, "gradcheck(layer, x)")
        checker = _layer_check(obj, inputs[0], get_backend(backend or "numpy"), training, rng)
    elif isinstance(obj, Loss):
        _expect(inputs, 2, "gradcheck(loss, pred, target)")
        checker = _loss_check(obj, inputs[0], inputs[1], get_backend(backend or "numpy"))
    else:
        raise TypeError(f"gradcheck takes a Layer, a Loss or a Network, got {type(obj).__name__}")
    with checker as (evaluate, entries):
        return {name: _compare(evaluate, value, setter, analytic, eps, rng, max_entries)
                for name, value, setter, analytic in entries}


def _expect(inputs, n, usage):
    if len(inputs) != n:
        raise TypeError(f"expected {usage}; got {len(inputs)} input array(s)")


def _compare(evaluate, value, setter, analytic, eps, rng, max_entries):
    value = np.array(value, dtype=np.float64)
    analytic = np.asarray(analytic, dtype=np.float64)
    indices = list(np.ndindex(value.shape))
    if max_entries is not None and len(indices) > max_entries:
        chosen = rng.choice(len(indices), size=max_entries, replace=False)
        indices = [indices[k] for k in sorted(chosen)]
        keep = np.zeros(value.shape, dtype=bool)
        for idx in indices:
            keep[idx] = True
    else:
        keep = np.ones(value.shape, dtype=bool)
    numeric = np.zeros_like(value)
    largest_loss = 1.0
    for idx in indices:
        original = value[idx]
        value[idx] = original + eps
        setter(value)
        plus = evaluate()
        value[idx] = original - eps
        setter(value)
        minus = evaluate()
        value[idx] = original
        numeric[idx] = (plus - minus) / (2.0 * eps)
        largest_loss = max(largest_loss, abs(plus), abs(minus))
    setter(value)
    num, ana = numeric[keep], analytic[keep]
    noise_floor = 100 * np.finfo(np.float64).eps * largest_loss / eps * np.sqrt(max(num.size, 1))
    if np.linalg.norm(num) <= noise_floor and np.linalg.norm(ana) <= noise_floor:
        return 0.0
    return float(np.linalg.norm(num - ana) / (np.linalg.norm(num) + np.linalg.norm(ana)))


def _named_params(layer, prefix=""):
    """``(name, layer, key)`` for every parameter of ``layer`` and its children."""
    for key in layer.params:
        yield prefix + key, layer, key
    for i, child in enumerate(layer.children()):
        yield from _named_params(child, f"{prefix}{i}.")


class _Float64:
    """Context: every parameter and buffer of ``layers`` in float64, restored on exit."""

    def __init__(self, layers, backend):
        self.layers, self.backend = layers, backend
        self.f64 = backend.dtype("float64")

    def __enter__(self):
        self.saved = [(layer, dict(layer.params), dict(layer.buffers), layer.input_grad)
                      for layer in self.layers]
        xp = self.backend.xp
        for layer in self.layers:
            layer.params = {k: xp.astype(v, self.f64) for k, v in layer.params.items()}
            layer.buffers = {k: xp.astype(v, self.f64) for k, v in layer.buffers.items()}
        return self

    def __exit__(self, *exc):
        for layer, params, buffers, input_grad in self.saved:
            layer.params, layer.buffers, layer.input_grad = params, buffers, input_grad
            layer.grads = {}


class _Check:
    """Context yielding ``(evaluate, entries)``; subclasses fill both in ``__enter__``."""

    def __init__(self, layers, backend, rng_owner):
        self.f64ctx = _Float64(layers, backend)
        self.backend = backend
        self.rng_owner = rng_owner

    def _rewind(self):
        dev_rng = self.rng_owner.device_rng if self.rng_owner is not None else None
        if dev_rng is not None:
            self.backend.set_rng_state(dev_rng, self.rng_state)

    def __enter__(self):
        self.f64ctx.__enter__()
        dev_rng = self.rng_owner.device_rng if self.rng_owner is not None else None
        self.rng_state = self.backend.rng_state(dev_rng) if dev_rng is not None else None
        return self.setup()

    def __exit__(self, *exc):
        self._rewind()
        self.f64ctx.__exit__(*exc)

    def setup(self):
        """``(evaluate, entries)`` for the object under check (each subclass says how)."""
        raise NotImplementedError


def _param_entries(layer, backend, f64, prefix=""):
    entries = []
    for name, owner, key in _named_params(layer, prefix):
        def setter(value, owner=owner, key=key):
            owner.params[key] = backend.asarray(value, dtype=f64)
        entries.append((name, backend.to_numpy(owner.params[key]), setter,
                        backend.to_numpy(owner.grads[key])))
    return entries


class _layer_check(_Check):
    def __init__(self, layer, x, backend, training, rng):
        if not layer.built:
            layer.build(backend, backend.dtype("float64"), rng, backend.make_rng(0))
        super().__init__(list(layer.walk()), layer.backend, layer)
        self.layer, self.training = layer, training
        self.x = np.array(backend.to_numpy(x) if backend.is_native(x) else x, dtype=np.float64)
        self.projection = None

    def setup(self):
        layer, backend, f64 = self.layer, self.backend, self.f64ctx.f64
        layer.input_grad = True
        x_dev = [backend.asarray(self.x, dtype=f64)]

        def evaluate():
            self._rewind()
            y = layer.forward(x_dev[0], training=self.training)
            value = float(np.sum(backend.to_numpy(y) * self.projection))
            for sub in layer.walk():
                term = sub.penalty()
                if term is not None:
                    value += backend.to_float(term)
            return value

        self._rewind()
        y = backend.to_numpy(layer.forward(x_dev[0], training=self.training))
        self.projection = np.random.default_rng(1).standard_normal(y.shape)
        dx = layer.backward(backend.asarray(self.projection, dtype=f64))

        def set_x(value):
            x_dev[0] = backend.asarray(value, dtype=f64)

        entries = [("x", self.x, set_x, backend.to_numpy(dx))]
        return evaluate, entries + _param_entries(layer, backend, f64)


class _loss_check(_Check):
    def __init__(self, loss, pred, target, backend):
        super().__init__([], backend, None)
        self.loss = loss
        self.pred = np.array(backend.to_numpy(pred) if backend.is_native(pred) else pred,
                             dtype=np.float64)
        target = backend.to_numpy(target) if backend.is_native(target) else np.asarray(target)
        dtype = backend.xp.int64 if target.dtype.kind in "iu" else backend.dtype("float64")
        self.target = backend.asarray(target, dtype=dtype)

    def setup(self):
        backend, f64, loss = self.backend, self.f64ctx.f64, self.loss
        loss.bind(backend)
        pred = [backend.asarray(self.pred, dtype=f64)]

        def evaluate():
            return backend.to_float(loss.forward(pred[0], self.target))

        evaluate()
        analytic = backend.to_numpy(loss.backward())

        def set_pred(value):
            pred[0] = backend.asarray(value, dtype=f64)

        return evaluate, [("pred", self.pred, set_pred, analytic)]


class _network_check(_Check):
    def __init__(self, net, X, y, training):
        super().__init__(net.structure.all_layers, net.backend, net)
        self.net, self.training = net, training
        self.X, self.y = X, y

    def setup(self):
        net, backend, f64 = self.net, self.backend, self.f64ctx.f64
        X = backend.asarray(net._input(self.X), dtype=f64)
        y = net._target(self.y, X.shape[0])
        if backend.xp.isdtype(y.dtype, "real floating"):
            y = backend.xp.astype(y, f64)

        structure = net.structure
        if structure.precision is not None:  # the float64 formulas, not the 16-bit policy
            structure = NetworkStructure(net.layers, net.loss)

        def evaluate():
            self._rewind()
            out = run_forward(structure, X, self.training)
            return backend.to_float(structure.penalized_loss(net.loss.forward(out, y)))

        evaluate()
        run_backward(structure, net.loss)
        entries = []
        for i, layer in enumerate(net.layers):
            entries += _param_entries(layer, backend, f64, prefix=f"{i}.")
        return evaluate, entries
