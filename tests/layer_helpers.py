"""Small helpers shared by the tests."""

import numpy as np


def build_layer(layer, backend, dtype="float64", *, seed=0, device_seed=None):
    """``layer`` built on ``backend`` in ``dtype``: initial values from ``seed``, device random
    numbers from ``device_seed`` (default: ``seed``)."""
    return layer.build(backend, backend.dtype(dtype), np.random.default_rng(seed),
                       backend.make_rng(seed if device_seed is None else device_seed))


def rel_error(a, b):
    """Largest absolute difference relative to the largest magnitude of the reference ``b``."""
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-300))


class CallCounter:
    """Wraps ``fn`` and counts its calls (``.calls``)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)
