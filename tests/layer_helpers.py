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


def forward_backward_with_torch(backend, torch, layer, module, x, seed):
    """Run a built ``layer`` and the torch ``module`` forward on the float64 host array ``x`` and
    backward from the same random ``dy`` (drawn with ``seed``). Returns ``(y, dx, yt, xt)``:
    our output and input gradient as host arrays, torch's output and input tensor (its
    ``.grad`` filled). Checks that both outputs, and ``layer.output_shape``, have one shape."""
    f64 = backend.dtype("float64")
    y = layer.forward(backend.asarray(x, f64), training=True)
    dy = np.random.default_rng(seed).standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, f64))
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    yt.backward(torch.tensor(dy))
    assert tuple(y.shape) == tuple(yt.shape)
    assert layer.output_shape(x.shape[1:]) == tuple(yt.shape[1:])
    return backend.to_numpy(y), backend.to_numpy(dx), yt, xt


class CallCounter:
    """Wraps ``fn`` and counts its calls (``.calls``)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)
