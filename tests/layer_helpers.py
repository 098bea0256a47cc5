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


def flat_update_setup(make_optimizer, dtype, size, seed=21):
    """One flat NumPy parameter buffer of ``size`` random values in ``dtype``, the optimizer from
    ``make_optimizer()`` bound to NumPy with its state over that buffer, a scratch provider
    ``work(name, n=size)`` (one buffer per name and length, kept) and the random generator;
    for tests that run the flat update rules by hand."""
    from bpgpu import backend as backends
    from bpgpu.kernels._numpy_fast import NumPyKernels

    rng = np.random.default_rng(seed)
    optimizer = make_optimizer().bind(backends.get_backend("numpy"))
    params = NumPyKernels.zeros(size, dtype)
    params[:] = rng.standard_normal(size)
    optimizer.state = optimizer._init_state([params])
    buffers = {}

    def work(name, n=None):
        n = size if n is None else n
        if (name, n) not in buffers:
            buffers[name, n] = NumPyKernels.zeros(n, dtype)
        return buffers[name, n]
    return optimizer, params, work, rng
