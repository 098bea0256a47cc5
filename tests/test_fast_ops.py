"""Each fast operation of a kernel set against its reference, on one batch, so that a failure
names the operation: Dense (+ fused activation, alone and chained through [W; b]), the loss
operations, the flat update rules and the flat clipping.

The reference is the standard-only code the operation's docstring names (the Dense and activation
layers, the Loss classes, the optimizers' ``_update`` and ``clip``), run on the same float64
arrays. CuPy's kernel set joins where a CUDA device answers.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import kernels_for
from bpgpu.kernels._update_rules import FLAT_RULES, flat_rule_name
from bpgpu.layers import Dense, LeakyReLU, ReLU, Tanh
from bpgpu.losses import MSE, CrossEntropy
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop

TOL = dict(rtol=1e-12, atol=1e-13)
ACTIVATIONS = {None: None, "relu": ReLU, "leaky_relu": lambda: LeakyReLU(0.1), "tanh": Tanh}


@pytest.fixture(params=["numpy", "cupy"])
def kernel_backend(request):
    try:
        backend = bpgpu.get_backend(request.param)
    except bpgpu.BackendUnavailableError as exc:
        pytest.skip(f"backend {request.param} is not usable here (CuPy needs a CUDA device): {exc}")
    kernels = kernels_for(backend)
    return backend, kernels


def _host(backend, x):
    return backend.to_numpy(x)


def _dense_pair(backend, kernels, act, bias, n_in, n_out, seed, l2=0.0):
    """A built Dense (+ activation) and its fast operation over flat W|b buffers."""
    rng = np.random.default_rng(seed)
    f64 = backend.dtype("float64")
    layer = Dense(n_in, n_out, bias=bias, l2=l2)
    layer.build(backend, f64, rng)
    activation = ACTIVATIONS[act]() if act else None
    if activation is not None:
        activation.build(backend, f64, rng)
    size = (n_in + 1) * n_out
    flat_p, flat_g = kernels.zeros(size, f64), kernels.zeros(size, f64)
    W, dW = kernels.view(flat_p, 0, (n_in, n_out)), kernels.view(flat_g, 0, (n_in, n_out))
    kernels.copy(W, layer.params["W"])
    b = db = joint = None
    if bias:
        b, db = kernels.view(flat_p, n_in * n_out, (n_out,)), kernels.view(flat_g, n_in * n_out,
                                                                           (n_out,))
        kernels.copy(b, layer.params["b"])
        joint = (kernels.view(flat_p, 0, (n_in + 1, n_out)),
                 kernels.view(flat_g, 0, (n_in + 1, n_out)))
    fused = None if act is None else (act, getattr(activation, "negative_slope", 0.0))
    if act is not None and act not in kernels.activations:
        pytest.skip(f"the {kernels.name} kernels do not fuse {act}")
    op = kernels.dense_op(layer, fused, W, dW, b, db, joint, True)
    return layer, activation, op


def _reference_dense(layer, activation, x, dy):
    y = layer.forward(x, training=True)
    if activation is not None:
        y = activation.forward(y, training=True)
        dy = activation.backward(dy)
    return y, layer.backward(dy)


@pytest.mark.parametrize("act", list(ACTIVATIONS), ids=lambda a: f"dense+{a or 'linear'}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_dense_operation(kernel_backend, act, bias):
    backend, kernels = kernel_backend
    layer, activation, op = _dense_pair(backend, kernels, act, bias, 3, 5, seed=1, l2=0.05)
    kernels.link([op], None)
    rng = np.random.default_rng(2)
    x = backend.asarray(rng.standard_normal((7, 3)))
    dy = backend.asarray(rng.standard_normal((7, 5)))
    y = op.forward(x)
    np.testing.assert_allclose(_host(backend, y), _host(backend, _reference_dense(
        layer, activation, x, dy)[0]), **TOL, err_msg="forward")
    ref_grads = {k: _host(backend, v) for k, v in layer.grads.items()}
    ref_dx = _host(backend, layer.backward(activation.backward(dy) if activation else dy))
    dx = op.backward(dy)
    for key, value in ref_grads.items():
        np.testing.assert_allclose(_host(backend, layer.grads[key]), value, **TOL,
                                   err_msg=f"gradient of {key}")
    np.testing.assert_allclose(_host(backend, dx), ref_dx, **TOL, err_msg="input gradient")


@pytest.mark.parametrize("act", ["relu", "tanh"], ids=lambda a: f"chained_dense+{a}")
def test_chained_dense_operations(kernel_backend, act):
    """Two fast Dense operations linked as the step links them (the second multiplies [x 1]
    by [W; b] where the kernel set chains them), against the two reference layers."""
    backend, kernels = kernel_backend
    first, act1, op1 = _dense_pair(backend, kernels, act, True, 4, 6, seed=3)
    second, _, op2 = _dense_pair(backend, kernels, None, True, 6, 2, seed=4)
    kernels.link([op1, op2], None)
    rng = np.random.default_rng(5)
    x = backend.asarray(rng.standard_normal((9, 4)))
    dy = backend.asarray(rng.standard_normal((9, 2)))
    out = op2.forward(op1.forward(x))
    dx = op1.backward(op2.backward(dy))
    fast = {f"{name}.{k}": _host(backend, v) for name, layer in (("first", first),
                                                                 ("second", second))
            for k, v in layer.grads.items()}
    hidden = act1.forward(first.forward(x, training=True), training=True)
    ref_out = second.forward(hidden, training=True)
    ref_dx = first.backward(act1.backward(second.backward(dy)))
    np.testing.assert_allclose(_host(backend, out), _host(backend, ref_out), **TOL,
                               err_msg="forward")
    for name, layer in (("first", first), ("second", second)):
        for key, value in layer.grads.items():
            np.testing.assert_allclose(fast[f"{name}.{key}"], _host(backend, value), **TOL,
                                       err_msg=f"gradient of {name}.{key}")
    np.testing.assert_allclose(_host(backend, dx), _host(backend, ref_dx), **TOL,
                               err_msg="input gradient")


@pytest.mark.parametrize("loss,target", [(CrossEntropy, "ids"), (CrossEntropy, "rows"),
                                         (MSE, "values")],
                         ids=["cross_entropy_ids", "cross_entropy_rows", "mse"])
@pytest.mark.parametrize("classes", [2, 23])
@pytest.mark.parametrize("layout", ["rows", "transposed"])
def test_loss_operation(kernel_backend, loss, target, classes, layout):
    """Value and gradient; the logits as a C-ordered batch or as the transpose of a
    class-major buffer (what a fast Dense hands on)."""
    backend, kernels = kernel_backend
    rng = np.random.default_rng(6)
    n = 11
    z = rng.standard_normal((n, classes)) * 3.0
    if layout == "transposed":
        z = np.ascontiguousarray(z.T).T
    t = {"ids": rng.integers(0, classes, n), "rows": rng.dirichlet(np.ones(classes), n),
         "values": rng.standard_normal((n, classes))}[target]
    zd = backend.asarray(z) if layout == "rows" else backend.xp.asarray(z)
    td = backend.asarray(t)
    reference = loss().bind(backend)
    expected_value = backend.to_float(reference.forward(backend.asarray(z), td))
    expected_grad = _host(backend, reference.backward())
    op = kernels.loss_op(loss())
    value = backend.to_float(op.forward(zd, td))
    np.testing.assert_allclose(value, expected_value, **TOL, err_msg="loss value")
    np.testing.assert_allclose(_host(backend, op.grad), expected_grad, **TOL, err_msg="gradient")


OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "sgd_momentum_dampening_decay": lambda: SGD(0.05, momentum=0.9, dampening=0.2,
                                                weight_decay=0.01),
    "sgd_nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: RMSprop(1e-2),
    "rmsprop_centered_momentum_decay": lambda: RMSprop(1e-2, momentum=0.5, centered=True,
                                                       weight_decay=0.1),
    "adam": lambda: Adam(1e-2),
    "adam_l2": lambda: Adam(1e-2, weight_decay=0.1),
    "adamw": lambda: AdamW(1e-2),
}


def test_every_optimizer_in_the_table_is_exercised():
    assert {type(make()) for make in OPTIMIZERS.values()} == set(FLAT_RULES)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_update_rule(kernel_backend, name):
    """Three flat updates against the optimizer's reference rule on the same parameters."""
    backend, kernels = kernel_backend
    f64 = backend.dtype("float64")
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(40)
    grads = [rng.standard_normal(40) for _ in range(3)]
    reference, fast = OPTIMIZERS[name]().bind(backend), OPTIMIZERS[name]().bind(backend)
    rule = kernels.update_rule(fast)
    assert rule is not None and flat_rule_name(fast) is not None
    params = [backend.asarray(p0)]
    flat = kernels.zeros(40, f64)
    kernels.copy(flat, backend.asarray(p0))
    fast.state = fast._init_state([flat])
    work_buffers = {}

    def work(key, size=None):
        return work_buffers.setdefault(key, kernels.zeros(size or 40, f64))
    for g in grads:
        params = reference.step(params, [backend.asarray(g)])
        fast.step_count += 1
        state = {key: values[0] for key, values in fast.state.items()}
        g_flat = kernels.zeros(40, f64)
        kernels.copy(g_flat, backend.asarray(g))
        rule(fast, fast.learning_rate(), flat, kernels.clip(fast, g_flat, work), state, work)
    np.testing.assert_allclose(_host(backend, flat), _host(backend, params[0]), rtol=1e-12,
                               atol=1e-14, err_msg=f"flat {flat_rule_name(fast)} rule")


@pytest.mark.parametrize("clipping", [{"clip_value": 0.3}, {"clip_norm": 0.5},
                                      {"clip_value": 0.3, "clip_norm": 0.5}],
                         ids=["clip_value", "clip_norm", "clip_both"])
def test_flat_clip(kernel_backend, clipping):
    backend, kernels = kernel_backend
    if kernels.name == "cupy":
        pytest.skip("the CuPy kernel set clips inside its update kernels (test_update_rule)")
    f64 = backend.dtype("float64")
    rng = np.random.default_rng(8)
    g = rng.standard_normal(30)
    optimizer = SGD(0.1, **clipping).bind(backend)
    expected = np.concatenate([_host(backend, c) for c in optimizer.clip(
        [backend.asarray(g[:10]), backend.asarray(g[10:])])])
    flat = kernels.zeros(30, f64)
    kernels.copy(flat, backend.asarray(g))
    buffers = {}
    clipped = kernels.clip(optimizer, flat, lambda k, size=None: buffers.setdefault(
        k, kernels.zeros(30, f64)))
    np.testing.assert_allclose(_host(backend, clipped), expected, **TOL, err_msg="clip")
    np.testing.assert_array_equal(_host(backend, flat), g)  # the raw gradient stays unclipped
