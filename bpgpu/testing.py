"""Helpers for testing layers, your own included, on every backend this machine can run.

* :func:`available_backends` lists the usable backends, for ``pytest.mark.parametrize``.
* :func:`check_layer` runs the finite-difference gradient check of a layer on each of them
  (float64) and raises ``AssertionError`` naming the backend and the worst parameter.

Example (in a test file)::

    import pytest
    from bpgpu.testing import available_backends, check_layer

    def test_my_layer_gradients():
        check_layer(lambda: MyLayer(4), (3, 4))

    @pytest.mark.parametrize("backend", available_backends())
    def test_my_layer_forward(backend):
        ...
"""

import numpy as np

from ._validation import is_real_number
from .backend import available_backends as _usable_backends
from .backend import get_backend
from .gradcheck import gradient_errors
from .layers.base import Layer

__all__ = ["available_backends", "check_layer"]


def available_backends():
    """Names of the backends usable here (``"numpy"`` and ``"array_api_strict"`` always, plus
    ``"torch"`` when installed and ``"cupy"`` when a CUDA device answers), each accepted by
    ``Network(backend=...)`` and :func:`check_layer`."""
    return list(_usable_backends())


def check_layer(layer, input_shape, backends=None, tol=1e-6, training=True, seed=0, eps=1e-6,
                max_entries=None):
    """Gradient-check a layer on every backend; return ``{backend: {name: relative error}}``.

    Args:
        layer: a :class:`~bpgpu.layers.Layer`, or a function returning a fresh one. A layer
            object is rebuilt (fresh float64 parameters drawn with ``seed``) on each backend.
        input_shape: shape of the test input, batch axis included, e.g. ``(4, 3)``; its values are
            standard normal draws from ``seed``.
        backends: names to check (default: :func:`available_backends`).
        tol: largest accepted relative error (see :mod:`bpgpu.gradcheck`; right formulas give
            about 1e-8 or less, wrong ones 1e-2 or more).
        training, eps, max_entries: passed to :func:`bpgpu.gradient_errors` (``max_entries``
            limits how many entries of each array are perturbed, for big layers).

    Raises:
        AssertionError: naming the backend, the layer and its worst parameter (``"x"`` is the
            input gradient; nested parameters are named like ``"1.0.W"``) with its error.
    """
    if not isinstance(layer, Layer) and not callable(layer):
        raise TypeError(f"check_layer takes a Layer or a function returning one, got "
                        f"{type(layer).__name__}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1
                            for n in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints (batch axis "
                         f"included), got {input_shape!r}")
    if not is_real_number(tol) or not tol > 0:
        raise ValueError(f"tol must be a number > 0, got {tol!r}")
    names = available_backends() if backends is None else list(backends)
    x = np.random.default_rng(seed).standard_normal(shape)
    results = {}
    for name in names:
        backend = get_backend(name)
        instance = layer if isinstance(layer, Layer) else layer()
        if not isinstance(instance, Layer):
            raise TypeError(f"the layer factory returned {type(instance).__name__}, not a Layer")
        instance.build(backend, backend.dtype("float64"), np.random.default_rng(seed),
                       backend.make_rng(seed))
        errors = gradient_errors(instance, x, eps=eps, training=training, seed=seed,
                                 max_entries=max_entries)
        worst = max(errors, key=lambda name: errors[name])
        if not errors[worst] <= tol:
            detail = ", ".join(f"{k}: {v:.3g}" for k, v in errors.items())
            raise AssertionError(
                f"gradient check of {instance!r} failed on backend {name!r}: the gradient of "
                f"{worst!r} has relative error {errors[worst]:.3g} > tol {tol:g} (all: {detail})")
        results[name] = errors
    return results
