"""The fast path (bpgpu.kernels) computes what the reference path computes.

Every comparison builds the same network twice, ``fast=True`` and ``fast=False`` (the reference:
the standard-only layer, loss and optimizer code), trains both on the same batches and compares
losses and weights: to 1e-12 relative in float64, to float32 rounding in float32. Backends without
a fast path (torch, array_api_strict) must report none and train through the reference path.
The CuPy kernels run in these tests only where a CUDA device answers.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import train_step_for
from bpgpu.kernels._update_rules import flat_rule_name
from bpgpu.layers import GELU, BatchNorm, Dense, Dropout, Identity, LeakyReLU, ReLU, Sigmoid, Tanh
from bpgpu.losses import MSE, BinaryCrossEntropy, CrossEntropy
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop
from bpgpu.schedules import CosineAnnealingLR

from layer_helpers import flat_update_setup

FAST_BACKENDS = ("numpy", "cupy")

TOL = {"float64": dict(rtol=1e-12, atol=1e-14), "float32": dict(rtol=2e-5, atol=2e-6)}

OPTIMIZERS = {
    "adam": lambda: Adam(1e-2),
    "adam_l2_clipnorm": lambda: Adam(1e-2, weight_decay=0.1, clip_norm=0.5),
    "adamw_clipvalue": lambda: AdamW(1e-2, clip_value=0.02),
    "sgd": lambda: SGD(0.1),
    "sgd_momentum_dampening_wd": lambda: SGD(0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    "sgd_nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: RMSprop(1e-2),
    "rmsprop_centered_momentum_wd": lambda: RMSprop(1e-2, momentum=0.5, centered=True,
                                                    weight_decay=0.1, clip_value=1.0),
    "adam_cosine_per_batch": lambda: Adam(CosineAnnealingLR(1e-2, T_max=4, per="batch")),
}


def _data(n_in, n_out, n, loss, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_in))
    if loss == "cross_entropy":
        y = rng.integers(0, n_out, n)
    elif loss == "cross_entropy_rows":
        y = rng.dirichlet(np.ones(n_out), n)
    else:
        y = rng.standard_normal((n, n_out))
    return X, y


def _loss(name):
    return CrossEntropy() if name.startswith("cross_entropy") else MSE()


def _pair(make_layers, backend, loss="cross_entropy", optimizer="adam", dtype="float64", seed=0):
    """The same network twice: fast path and reference path."""
    nets = []
    for fast in (True, False):
        opt = OPTIMIZERS[optimizer]() if isinstance(optimizer, str) else optimizer()
        nets.append(bpgpu.Network(make_layers(), loss=_loss(loss), optimizer=opt, backend=backend,
                                  dtype=dtype, seed=seed, fast=fast))
    return nets


def _mlp(act=ReLU, sizes=(5, 16, 12, 3), **dense):
    def make():
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(Dense(a, b, **dense))
            if i < len(sizes) - 2:
                layers.append(act())
        return layers
    return make


def _assert_same(fast, ref, dtype, losses=None):
    tol = TOL[dtype]
    if losses is not None:
        np.testing.assert_allclose(losses[0], losses[1], **tol)
    for a, b in zip(fast.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **tol)


def _train(nets, X, y, steps, batch=None):
    losses = [[], []]
    n = X.shape[0]
    for s in range(steps):
        lo = (s * (batch or n)) % n
        xb, yb = (X, y) if batch is None else (X[lo:lo + batch], y[lo:lo + batch])
        for k, net in enumerate(nets):
            losses[k].append(net.train_step(xb, yb))
    return losses


def _needs_fast(backend):
    if backend.name not in FAST_BACKENDS:
        pytest.skip(f"backend {backend.name!r} has no fast path (covered by "
                    "test_backends_without_fast_path_use_the_reference)")


# -- whole steps: every optimizer, both losses, float64 and float32 ------------------------------------
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fast_step_matches_reference_float64(backend, optimizer):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend, optimizer=optimizer)
    X, y = _data(5, 3, 24, "cross_entropy")
    losses = _train((fast, ref), X, y, steps=6, batch=8)
    assert train_step_for(fast) is not None and train_step_for(ref) is None
    _assert_same(fast, ref, "float64", losses)


@pytest.mark.parametrize("loss", ["cross_entropy", "cross_entropy_rows", "mse"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fast_step_matches_reference_per_loss(backend, loss, dtype):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(sizes=(4, 10, 3)), backend, loss=loss, dtype=dtype)
    X, y = _data(4, 3, 20, loss, seed=1)
    losses = _train((fast, ref), X, y, steps=5)
    _assert_same(fast, ref, dtype, losses)


@pytest.mark.parametrize("act", [ReLU, Tanh, Sigmoid, Identity, GELU,
                                 lambda: LeakyReLU(0.1), lambda: LeakyReLU(1.5)],
                         ids=["relu", "tanh", "sigmoid", "identity", "gelu", "leaky0.1",
                              "leaky1.5"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dense_with_each_activation_matches_reference(backend, act, dtype):
    """Fused where the kernels support the activation, a reference op next to Dense otherwise."""
    _needs_fast(backend)
    fast, ref = _pair(_mlp(act=act), backend, dtype=dtype)
    X, y = _data(5, 3, 16, "cross_entropy", seed=2)
    losses = _train((fast, ref), X, y, steps=4)
    _assert_same(fast, ref, dtype, losses)


@pytest.mark.parametrize("optimizer", ["adam_l2_clipnorm", "adamw_clipvalue",
                                       "sgd_momentum_dampening_wd", "rmsprop_centered_momentum_wd"])
def test_update_in_blocks_matches_reference(monkeypatch, optimizer, numpy_update_passes):
    """Large networks update their flat buffer block by block (NumPy): shrink the block so a
    small network takes that path, with a ragged last block."""
    from bpgpu.kernels import _numpy_update as numpy_update

    monkeypatch.setattr(numpy_update, "BLOCK_BYTES", 48 * 8)  # 48 float64 elements
    monkeypatch.setattr(numpy_update, "MIN_BLOCKS", 2)
    fast, ref = _pair(_mlp(), "numpy", optimizer=optimizer)
    assert train_step_for(fast).size % 48 and train_step_for(fast).size >= 2 * 48
    X, y = _data(5, 3, 24, "cross_entropy", seed=14)
    losses = _train((fast, ref), X, y, steps=4, batch=8)
    _assert_same(fast, ref, "float64", losses)


#: More clip cases for the blocked update: plain SGD runs in one piece (its deferred clip
#: written out first), both clips together are applied before the update (the norm is the
#: clipped gradient's).
BLOCKED_OPTIMIZERS = {**{name: make for name, make in OPTIMIZERS.items() if "cosine" not in name},
                      "sgd_clipnorm": lambda: SGD(0.1, clip_norm=0.5),
                      "sgd_momentum_clipvalue": lambda: SGD(0.05, momentum=0.9, clip_value=0.3),
                      "adam_clip_both": lambda: Adam(1e-2, clip_value=0.02, clip_norm=0.5)}


def _flat_updates(optimizer, blocked, dtype, steps=3, size=1000):
    """``steps`` NumPy flat updates of one flat buffer of ``size`` parameters (whole buffers: the
    clip, then the rule; blocked: the clip by value or by norm deferred into the blocks, both
    clips first); the parameters and the state buffers after them."""
    from bpgpu.kernels import _numpy_fast as numpy_fast
    from bpgpu.kernels import _numpy_update as numpy_update

    kernels = numpy_fast.NumPyKernels
    optimizer, params, work, rng = flat_update_setup(BLOCKED_OPTIMIZERS[optimizer], dtype, size)
    rule = numpy_update.RULES[flat_rule_name(optimizer)]
    for _ in range(steps):
        grads = kernels.zeros(size, dtype)
        grads[:] = rng.standard_normal(size)
        optimizer.step_count += 1
        state = {key: values[0] for key, values in optimizer.state.items()}
        if blocked:  # a single clip is deferred into the blocks
            clipped = kernels.clip(optimizer, grads, work)
            one_clip = (optimizer.clip_value is None) != (optimizer.clip_norm is None)
            assert isinstance(clipped, numpy_update.DeferredClip) == one_clip
            numpy_update.in_blocks(rule, optimizer, optimizer.learning_rate(), params, clipped,
                                  state, work)
        else:
            clipped = kernels.clip(optimizer, grads, work, defer=False)
            assert isinstance(clipped, np.ndarray)
            rule(optimizer, optimizer.learning_rate(), params, clipped, state, work)
    return [params] + [values[0] for _, values in sorted(optimizer.state.items())]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", list(BLOCKED_OPTIMIZERS))
def test_blocked_update_is_bit_identical_to_whole_buffer(monkeypatch, optimizer, dtype):
    """The block-by-block update (96-element blocks, a ragged last one of 40) computes exactly
    what the rule computes over the whole buffers: parameters and every state buffer equal bit for
    bit, with weight decay (L2 and decoupled), momentum, dampening, Nesterov, centering, clip by
    value and clip by norm (block by block) and both clips."""
    from bpgpu.kernels import _numpy_update as numpy_update

    monkeypatch.setattr(numpy_update, "BLOCK_BYTES", 96 * np.dtype(dtype).itemsize)
    monkeypatch.setattr(numpy_update, "MIN_BLOCKS", 2)
    whole = _flat_updates(optimizer, False, dtype)
    blocked = _flat_updates(optimizer, True, dtype)
    assert len(whole) == len(blocked) > 0
    for a, b in zip(whole, blocked, strict=True):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


def test_small_buffers_and_plain_sgd_update_in_one_piece(monkeypatch):
    """Under MIN_BLOCKS blocks the rule runs once over the whole buffers, and so does plain SGD at
    any size; SGD with momentum runs block by block from MIN_BLOCKS blocks, a ragged one last."""
    from bpgpu.kernels import _numpy_update as numpy_update

    calls = []

    def run(optimizer, size):
        calls.clear()
        params = np.zeros(size, np.float32)
        state = {"momentum_buffer": np.zeros(size, np.float32)} if optimizer.momentum else {}
        numpy_update.in_blocks(numpy_update._sgd, optimizer, 0.1, params, params, state,
                              lambda name, n=None, size=size: np.zeros(n or size, np.float32))
        return calls
    block, count = numpy_update.BLOCK_BYTES // 4, numpy_update.MIN_BLOCKS  # float32 elements
    original = numpy_update._sgd

    def counting(optimizer, lr, params, grads, state, work):
        calls.append(params.shape[0])
        original(optimizer, lr, params, grads, state, work)
    monkeypatch.setattr(numpy_update, "_sgd", counting)  # _in_blocks knows plain SGD by its rule
    momentum = SGD(0.1, momentum=0.9)
    momentum.step_count = 2
    assert run(momentum, count * block - 1) == [count * block - 1]
    assert run(momentum, count * block + 5) == [block] * count + [5]
    assert run(SGD(0.1), count * block + 5) == [count * block + 5]


@pytest.mark.parametrize("loss", ["cross_entropy", "cross_entropy_rows"])
def test_many_classes_match_reference(backend, loss):
    """More classes than the column-by-column row maximum handles (NumPy: axis reduction)."""
    _needs_fast(backend)
    fast, ref = _pair(_mlp(sizes=(4, 8, 40)), backend, loss=loss)
    X, y = _data(4, 40, 30, loss, seed=15)
    losses = _train((fast, ref), X, y, steps=3)
    _assert_same(fast, ref, "float64", losses)


def test_dense_without_bias_and_with_l2_matches_reference(backend):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(bias=False, l2=0.01), backend, optimizer="sgd_momentum_dampening_wd")
    X, y = _data(5, 3, 16, "cross_entropy", seed=3)
    losses = _train((fast, ref), X, y, steps=4)
    _assert_same(fast, ref, "float64", losses)


def test_mixed_network_with_reference_layers_matches(backend):
    """Dropout, BatchNorm and a final layer the kernels do not fuse run their own code inside the
    fast step (same device random numbers), with the flat optimizer update. The Dense before
    BatchNorm has no bias: BatchNorm cancels it, so its gradient would be rounding noise."""
    _needs_fast(backend)

    def make():
        return [Dense(6, 12, bias=False), BatchNorm(12), ReLU(), Dropout(0.3), Dense(12, 8), Tanh(),
                Dense(8, 3), Sigmoid()]
    fast, ref = _pair(make, backend, loss="mse", optimizer="rmsprop_centered_momentum_wd")
    X, y = _data(6, 3, 16, "mse", seed=4)
    losses = _train((fast, ref), X, y, steps=4)
    _assert_same(fast, ref, "float64", losses)
    for a, b in zip(fast._all_layers, ref._all_layers, strict=True):
        for key in a.buffers:
            np.testing.assert_allclose(fast.backend.to_numpy(a.buffers[key]),
                                       ref.backend.to_numpy(b.buffers[key]), **TOL["float64"])


def test_sigmoid_with_bce_keeps_the_reference_path(backend):
    """A final Sigmoid fused with BinaryCrossEntropy has no fast version: reference path."""
    _needs_fast(backend)
    net = bpgpu.Network([Dense(3, 4), ReLU(), Dense(4, 1), Sigmoid()],
                        loss=BinaryCrossEntropy(), backend=backend, dtype="float64", seed=0)
    assert train_step_for(net) is None
    X, y = _data(3, 1, 8, "mse")
    net.train_step(X, (y > 0).astype(float))


def test_fit_matches_reference(backend):
    """Shuffled mini-batches with a short last batch (two buffer sizes), several epochs."""
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend, dtype="float32")
    X, y = _data(5, 3, 50, "cross_entropy", seed=5)
    h_fast = fast.fit(X, y, epochs=3, batch_size=16, verbose=0)
    h_ref = ref.fit(X, y, epochs=3, batch_size=16, verbose=0)
    np.testing.assert_allclose(h_fast["loss"], h_ref["loss"], **TOL["float32"])
    _assert_same(fast, ref, "float32")


# -- the flat buffers stay in step with the rest of the API ------------------------------------------------
def test_set_weights_between_fast_steps_is_honoured(backend):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend)
    X, y = _data(5, 3, 12, "cross_entropy", seed=6)
    _train((fast, ref), X, y, steps=2)
    rng = np.random.default_rng(7)
    new = [rng.standard_normal(w.shape) * 0.3 for w in fast.get_weights()]
    fast.set_weights(new)
    ref.set_weights(new)
    losses = _train((fast, ref), X, y, steps=3)
    _assert_same(fast, ref, "float64", losses)


def test_optimizer_state_loaded_between_steps_is_honoured(backend):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend)
    X, y = _data(5, 3, 12, "cross_entropy", seed=8)
    _train((fast, ref), X, y, steps=2)
    saved = ref.optimizer.state_dict()
    _train((fast, ref), X, y, steps=2)
    for net in (fast, ref):
        xp = net.backend.xp
        net.optimizer.load_state_dict({**saved, "state": {
            k: [xp.asarray(a, copy=True) for a in v] for k, v in saved["state"].items()}})
    losses = _train((fast, ref), X, y, steps=3)
    _assert_same(fast, ref, "float64", losses)


def test_swapping_the_optimizer_starts_fresh_state(backend):
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend)
    X, y = _data(5, 3, 12, "cross_entropy", seed=9)
    _train((fast, ref), X, y, steps=2)
    for net in (fast, ref):
        net.optimizer = SGD(0.05, momentum=0.9).bind(net.backend)
    losses = _train((fast, ref), X, y, steps=3)
    _assert_same(fast, ref, "float64", losses)


def test_gradients_and_public_step_api_match(backend):
    """gradients() after a fast step, and forward/compute_loss/backward/apply_gradients (the
    flat update fed from the layers' gradients)."""
    _needs_fast(backend)
    fast, ref = _pair(_mlp(), backend)
    X, y = _data(5, 3, 12, "cross_entropy", seed=10)
    _train((fast, ref), X, y, steps=1)
    for a, b in zip(fast.gradients(), ref.gradients(), strict=True):
        np.testing.assert_allclose(a, b, **TOL["float64"])
    for net in (fast, ref):
        net.compute_loss(net.forward(X, training=True), y)
        net.backward()
        net.apply_gradients()
    _assert_same(fast, ref, "float64")


def test_weights_snapshot_survives_fast_steps(backend):
    """The fast path updates parameters in place; get_weights() returns copies."""
    _needs_fast(backend)
    net = bpgpu.Network(_mlp()(), loss="cross_entropy", backend=backend, dtype="float64", seed=0)
    X, y = _data(5, 3, 12, "cross_entropy", seed=11)
    net.train_step(X, y)
    before = net.get_weights()
    kept = [np.array(w, copy=True) for w in before]
    net.train_step(X, y)
    for a, b in zip(before, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(net.get_weights(), kept, strict=True))


def test_parameters_are_views_of_one_buffer(backend):
    _needs_fast(backend)
    net = bpgpu.Network(_mlp()(), loss="cross_entropy", backend=backend, seed=0)
    X, y = _data(5, 3, 12, "cross_entropy", seed=12)
    net.train_step(X, y)
    step = train_step_for(net)
    assert step is not None
    for (layer, key), view in zip(net._slots, step.params, strict=True):
        assert layer.params[key] is view
    assert step.flat_params.shape == (step.size,)
    assert step.size >= net.n_params


@pytest.mark.parametrize("optimizer", ["adam_l2_clipnorm", "sgd"])
def test_nan_gradient_spreads_through_clip_norm_as_in_reference(backend, optimizer):
    """With clip_norm, one NaN gradient makes the global norm NaN and so every updated weight
    NaN, as ``xp.minimum`` does on the reference path (CUDA's ``min`` would drop the NaN and
    leave the other weights finite)."""
    _needs_fast(backend)
    make = (lambda: SGD(0.1, clip_norm=0.5)) if optimizer == "sgd" else optimizer
    fast, ref = _pair(_mlp(), backend, optimizer=make)
    X, y = _data(5, 3, 8, "cross_entropy", seed=21)
    for net in (fast, ref):
        net.compute_gradients(X, y)
        grads = [layer.grads for layer in net._all_layers if layer.grads]
        w = net.backend.to_numpy(grads[0]["W"]).copy()
        w[0, 0] = np.nan
        grads[0]["W"] = net.backend.asarray(w, dtype=net.dtype)
        net.apply_gradients()
    assert train_step_for(fast) is not None
    for a, b in zip(fast.get_weights(), ref.get_weights(), strict=True):
        assert np.isnan(b).all()
        assert np.isnan(a).all()


# -- switches ---------------------------------------------------------------------------------------------
def test_fast_false_and_env_var_force_the_reference_path(monkeypatch):
    net = bpgpu.Network(_mlp()(), backend="numpy", fast=False)
    assert train_step_for(net) is None
    monkeypatch.setenv("BPGPU_REFERENCE", "1")
    net = bpgpu.Network(_mlp()(), backend="numpy")
    assert net.fast is False and train_step_for(net) is None
    net = bpgpu.Network(_mlp()(), backend="numpy", fast=True)
    assert train_step_for(net) is not None
    monkeypatch.setenv("BPGPU_REFERENCE", "0")
    assert bpgpu.Network(_mlp()(), backend="numpy").fast is True


def test_switching_fast_off_mid_training_keeps_training_consistent():
    fast, ref = _pair(_mlp(), "numpy")
    X, y = _data(5, 3, 12, "cross_entropy", seed=13)
    _train((fast, ref), X, y, steps=2)
    fast.fast = False
    _train((fast, ref), X, y, steps=2)
    fast.fast = True
    losses = _train((fast, ref), X, y, steps=2)
    _assert_same(fast, ref, "float64", losses)


def test_fast_must_be_a_bool_or_none():
    with pytest.raises(TypeError, match="fast must be True, False or None"):
        bpgpu.Network(_mlp()(), backend="numpy", fast="yes")


def test_backends_without_fast_path_use_the_reference(backend):
    if backend.name in FAST_BACKENDS:
        pytest.skip(f"backend {backend.name!r} has a fast path (tested above)")
    assert backend.kernels is None
    net = bpgpu.Network(_mlp()(), loss="cross_entropy", backend=backend, seed=0)
    assert net.fast is True and train_step_for(net) is None
    X, y = _data(5, 3, 12, "cross_entropy")
    first = net.train_step(X, y)
    assert net.train_step(X, y) < first


# -- CuPy only --------------------------------------------------------------------------------------------
@pytest.fixture
def cupy_backend():
    try:
        return bpgpu.get_backend("cupy")
    except bpgpu.BackendUnavailableError as exc:
        pytest.skip(f"no CUDA device: the CuPy kernels need a GPU ({exc.reason})")


_SPIN = r"""
extern "C" __global__ void bpgpu_test_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def test_cupy_step_does_not_wait_for_the_gpu(cupy_backend):
    """A fast step only queues kernels: queued behind about two seconds of GPU work, it returns
    while that work still runs (any host synchronisation inside would have waited for it)."""
    import cupy

    net = bpgpu.Network(_mlp()(), loss="cross_entropy", backend=cupy_backend, seed=0)
    X, y = _data(5, 3, 64, "cross_entropy")
    Xd, yd = net._data(X, y)
    net._train_batch(Xd, yd)            # compile the kernels, fill the memory pool
    cupy_backend.synchronize()
    cupy.RawKernel(_SPIN, "bpgpu_test_spin")((1,), (1,), (np.int64(3_000_000_000),))
    loss = net._train_batch(Xd, yd)
    assert not cupy.cuda.get_current_stream().done
    assert np.isfinite(cupy_backend.to_float(loss))


def test_cupy_tf32_switch(cupy_backend):
    from cupy._core import _routines_linalg as linalg

    before = linalg.get_compute_type(np.float32)
    try:
        cupy_backend.set_tf32(False)
        assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_DEFAULT
    finally:
        linalg.set_compute_type(np.float32, before)
