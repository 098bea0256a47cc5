"""The engine seam (bpgpu._engine): one place chooses the path and says why; fit with metrics,
predict and evaluate run on the fast engine; gradient hooks see one flat buffer and may skip.

Oracles: the reference engine (fast=False) for every number the fast engine produces, and for
hooks a closed form (a hook doubling the gradient under plain SGD equals twice the learning
rate without it).
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU, Sigmoid, Tanh
from bpgpu.losses import MSE, BinaryCrossEntropy, CrossEntropy
from bpgpu.optimizers import SGD, Adam

TOL = dict(rtol=1e-10, atol=1e-12)


def _layers(dropout=False):
    layers = [Dense(5, 8), ReLU(), Dense(8, 6), Tanh()]
    if dropout:
        layers.append(Dropout(0.3))
    return layers + [Dense(6, 3)]


def _net(fast, backend="numpy", optimizer=None, loss=None, dropout=False, seed=0):
    return bpgpu.Network(_layers(dropout), loss=loss or CrossEntropy(),
                         optimizer=optimizer or Adam(1e-2), backend=backend, dtype="float64",
                         seed=seed, fast=fast)


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, 3, n)


# -- the choice and its reason --------------------------------------------------------------------
def test_numpy_networks_run_fast_and_say_what_is_fused():
    net = _net(None)
    assert net.engine.fast
    reason = net.engine.reason
    assert reason.startswith("fast: numpy kernels") and "3 Dense operation(s), 2 with the activation fused" in reason
    assert "fast CrossEntropy" in reason and "flat Adam update" in reason
    assert f"engine: {reason}" in net.summary()


def test_reference_layers_are_named_in_the_fast_reason():
    net = _net(None, dropout=True)
    assert net.engine.fast and "reference layers Dropout" in net.engine.reason


@pytest.mark.parametrize("make,expected", [
    (lambda: _net(False), "reference: fast=False"),
    (lambda: _net(None, backend="array_api_strict"),
     "reference: the array_api_strict backend has no fast kernels"),
    (lambda: bpgpu.Network([Dense(5, 1), Sigmoid()], loss=BinaryCrossEntropy(), backend="numpy"),
     "reference: a final Sigmoid with BinaryCrossEntropy"),
])
def test_reference_engine_says_why(make, expected):
    net = make()
    assert not net.engine.fast
    assert net.engine.reason.startswith(expected)
    assert f"engine: {net.engine.reason}" in net.summary()


def test_environment_variable_forces_the_reference_engine(monkeypatch):
    monkeypatch.setenv("BPGPU_REFERENCE", "1")
    net = _net(None)
    assert not net.engine.fast and net.engine.reason == "reference: BPGPU_REFERENCE is set"


def test_unserved_requirement_selects_the_reference_engine_until_dropped():
    net = _net(None)  # NumPy's kernel set has no mixed-precision step
    net.engine_requirements.add("mixed precision")
    assert not net.engine.fast
    assert net.engine.reason == "reference: mixed precision has no fast version"
    net.engine_requirements.clear()
    assert net.engine.fast


@pytest.fixture(scope="module")
def emulated_cupy():
    """bpgpu's CuPy kernels on the CPU (tests/cuda_emu): a kernel set serving mixed precision."""
    from cuda_emu import cuda
    from cuda_emu.backend import EmulatedCuPy, EmulatedCuPyBackend

    cuda.reset()
    return EmulatedCuPyBackend(EmulatedCuPy())


@pytest.mark.parametrize("layers, loss, expected", [
    (lambda: _layers(), CrossEntropy, "fast: mixed float16 compute, float32 masters; cupy kernels"),
    (lambda: [Dense(5, 4), ReLU(), Dense(4, 1)], MSE, "fast: mixed float16 compute"),
    (lambda: _layers(dropout=True), CrossEntropy,
     "reference: mixed precision runs fast only on float16 kernels, and Dropout has no float16 "
     "kernel"),
    (lambda: [Dense(5, 1)], lambda: BinaryCrossEntropy(from_logits=True),
     "reference: mixed precision runs fast only on float16 kernels, and BinaryCrossEntropy has "
     "no float16 loss kernel"),
])
def test_mixed_precision_engine_choice_on_a_kernel_set_that_serves_it(emulated_cupy, layers, loss,
                                                                      expected):
    net = bpgpu.Network(layers(), loss=loss(), backend=emulated_cupy, seed=0,
                        precision="mixed_float16")
    assert net.engine.reason.startswith(expected)
    assert net.engine.fast == expected.startswith("fast")
    net.fast = False
    assert net.engine.reason == "reference: fast=False"


def test_the_engine_is_cached_and_rebuilt_when_fast_changes():
    net = _net(None)
    first = net.engine
    assert net.engine is first
    net.fast = False
    assert not net.engine.fast
    net.fast = True
    assert net.engine.fast and net.engine is not first


# -- fit with metrics, predict and evaluate on the fast engine ---------------------------------------
def _count_fast_steps(net, monkeypatch):
    plan = net.engine.plan
    calls = []
    original = plan.compute

    def counting(*args, **kwargs):
        calls.append(kwargs.get("output", args[2] if len(args) > 2 else False))
        return original(*args, **kwargs)
    monkeypatch.setattr(plan, "compute", counting)
    return calls


def test_fit_with_metrics_runs_the_fast_step_and_matches_the_reference(monkeypatch):
    X, y = _data(50)
    fast, ref = _net(None), _net(False)
    calls = _count_fast_steps(fast, monkeypatch)
    histories = [net.fit(X, y, epochs=2, batch_size=16, metrics=["accuracy"], verbose=0,
                         validation_data=_data(20, seed=1)) for net in (fast, ref)]
    assert calls == [True] * 8  # 2 epochs of 4 batches, each handing back its output
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(histories[0].history[key], histories[1].history[key], **TOL)
    for a, b in zip(fast.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_fit_with_metrics_on_row_shards_hands_back_the_whole_output(monkeypatch):
    monkeypatch.setenv("BPGPU_CPU_SHARDS", "3")
    X, y = _data(61)
    nets = [_net(None), _net(False)]
    histories = [net.fit(X, y, epochs=2, batch_size=None, metrics=["accuracy"], verbose=0)
                 for net in nets]
    assert len(nets[0].engine.plan._shards) == 3
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[0].history[key], histories[1].history[key], **TOL)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_predict_uses_the_fast_forward_and_returns_fresh_arrays(monkeypatch, batch_size):
    fast, ref = _net(None, dropout=True), _net(False, dropout=True)
    X, _ = _data(30)
    plan = fast.engine.plan
    seen = []
    original = plan.forward
    monkeypatch.setattr(plan, "forward", lambda x, training=False: seen.append(training)
                        or original(x, training))
    first = fast.predict(X, batch_size=batch_size)
    kept = first.copy()
    second = fast.predict(X[::-1], batch_size=batch_size)
    assert seen and not any(seen)  # inference mode, every chunk through the fast forward
    np.testing.assert_array_equal(first, kept)  # the second call did not overwrite the first
    np.testing.assert_allclose(first, ref.predict(X, batch_size=batch_size), **TOL)
    np.testing.assert_allclose(second, ref.predict(X[::-1]), **TOL)


@pytest.mark.parametrize("loss", [CrossEntropy, MSE])
def test_evaluate_on_the_fast_engine_matches_the_reference(loss):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((25, 5))
    y = rng.integers(0, 3, 25) if loss is CrossEntropy else rng.standard_normal((25, 3))
    results = [_net(fast, loss=loss()).evaluate(X, y) for fast in (None, False)]
    assert results[0].keys() == results[1].keys()
    for key in results[0]:
        np.testing.assert_allclose(results[0][key], results[1][key], **TOL)


def test_predict_and_evaluate_in_chunks_match_one_pass(monkeypatch):
    """Beyond INFERENCE_CHUNK rows, predict and evaluate run in blocks (bounded buffers) and give
    what one pass over every row gives."""
    import bpgpu.network

    X, y = _data(50)
    net = _net(None)
    whole = net.predict(X), net.evaluate(X, y)
    monkeypatch.setattr(bpgpu.network, "INFERENCE_CHUNK", 8)
    np.testing.assert_allclose(net.predict(X), whole[0], **TOL)
    chunked = net.evaluate(X, y)
    for key in whole[1]:
        np.testing.assert_allclose(chunked[key], whole[1][key], **TOL)
    with pytest.raises(ValueError, match="X holds no samples; evaluate needs at least one"):
        net.evaluate(X[:0], y[:0])


def test_inference_between_steps_leaves_the_training_step_intact():
    """predict and evaluate between two steps use their own operations and buffers."""
    X, y = _data(16)
    fast, ref = _net(None), _net(False)
    for net in (fast, ref):
        net.train_step(X, y)
        net.predict(X[:5])
        net.evaluate(X[:9], y[:9])
        net.train_step(X, y)
    for a, b in zip(fast.get_weights(), ref.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


# -- gradient hooks -------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [None, False])
def test_hook_sees_one_flat_gradient_and_the_row_count(fast):
    X, y = _data(12)
    net = _net(fast, optimizer=SGD(0.0))
    _, expected = net.compute_gradients(X, y)
    seen = []
    net.gradient_hooks.append(lambda flat, rows: seen.append((np.array(flat), rows)))
    net.train_step(X, y)
    (flat, rows), = seen
    assert rows == 12 and flat.ndim == 1
    values = flat[np.abs(flat) > 0]  # the fast buffer has zero gaps between layers
    np.testing.assert_allclose(np.sort(values),
                               np.sort(np.concatenate([g.ravel() for g in expected])), **TOL)


@pytest.mark.parametrize("fast", [None, False])
def test_hook_scaling_the_gradient_equals_scaling_the_learning_rate(fast):
    X, y = _data(20)
    hooked, plain = _net(fast, optimizer=SGD(0.05)), _net(fast, optimizer=SGD(0.1))

    def double(flat, rows):
        flat *= 2.0
    hooked.gradient_hooks.append(double)
    for net in (hooked, plain):
        for _ in range(3):
            net.train_step(X, y)
    for a, b in zip(hooked.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("fast", [None, False])
def test_hook_returning_false_skips_the_update(fast):
    X, y = _data(20)
    net = _net(fast)
    net.train_step(X, y)
    before, count = net.get_weights(), net.optimizer.step_count
    calls = []
    net.gradient_hooks.append(lambda flat, rows: calls.append(rows) or False)
    net.gradient_hooks.append(lambda flat, rows: calls.append(-rows))  # later hooks still run
    loss = net.train_step(X, y)
    assert np.isfinite(loss) and calls == [20, -20]
    assert net.optimizer.step_count == count
    for a, b in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_hook_on_row_shards_sees_the_summed_gradient(monkeypatch):
    X, y = _data(60)
    seen = {}
    for shards in ("1", "3"):
        monkeypatch.setenv("BPGPU_CPU_SHARDS", shards)
        net = _net(None, optimizer=SGD(0.1))
        net.gradient_hooks.append(lambda flat, rows, k=shards: seen.setdefault(k, np.array(flat)))
        net.train_step(X, y)
        seen[shards + " weights"] = net.get_weights()
    assert len(net.engine.plan._shards) == 3
    np.testing.assert_allclose(seen["3"], seen["1"], **TOL)
    for a, b in zip(seen["3 weights"], seen["1 weights"], strict=True):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.mark.parametrize("backend_kind", ["numpy", "emulated_cupy"])
def test_l2_changed_between_steps_is_read_by_the_fast_engine(backend_kind, emulated_cupy):
    """Dense.l2 is read at every step (scikit-learn's per-batch penalty changes it): the fast
    engine, on NumPy and on the emulated CuPy kernels, follows a changing l2 step by step as the
    reference engine does; and the change matters (the weights differ from a constant l2)."""
    backend = "numpy" if backend_kind == "numpy" else emulated_cupy
    X, y = _data()

    def train(fast, factors):
        layers = [Dense(5, 8, l2=0.05), ReLU(), Dense(8, 3, l2=0.05)]
        net = bpgpu.Network(layers, loss=CrossEntropy(), optimizer=SGD(0.1), backend=backend,
                            dtype="float64", seed=0, fast=fast)
        assert net.engine.fast is (fast is None)
        for factor in factors:
            for layer in (layers[0], layers[2]):
                layer.l2 = 0.05 * factor
            net.train_step(X, y)
        return net.get_weights()

    factors = [1.0, 4.0, 0.5, 3.0]
    fast, reference = train(None, factors), train(False, factors)
    for a, b in zip(fast, reference, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    constant = train(None, [1.0] * len(factors))
    assert not np.allclose(constant[0], fast[0], rtol=1e-6, atol=0)
