"""Mixed precision: the loss scaler against torch's GradScaler, a forced-overflow run against
torch's autocast + GradScaler, skipped steps, masters in float32, checkpoints, refusals, and the
float16 matrix product's reference twin. (Per-layer gradients: test_precision_gradients.py;
accuracy: test_precision_accuracy.py.)"""

import numpy as np
import pytest

import bpgpu
from bpgpu.backend import backend_status
from bpgpu.callbacks import Callback
from bpgpu.layers import Dense, Dropout, ReLU
from bpgpu.optimizers import SGD, Adam
from bpgpu.precision import LossScaler, MixedPrecision

MIXED_BACKENDS = ("numpy", "torch", "cupy")  # the backends with float16


def _mixed_backend(backend):
    if backend.name not in MIXED_BACKENDS:
        pytest.skip(f"{backend.name} has no float16 (tested in test_refusals_name_the_reason)")
    return backend


# -- the scaler's rule against torch.amp.GradScaler -------------------------------------------------------
def _torch_scales(torch, pattern, **config):
    """The scale after each step of torch's GradScaler fed gradients that are inf where
    ``pattern`` is True."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    scaler = torch.amp.GradScaler("cpu", **config)
    scales = []
    for bad in pattern:
        scaler.scale(torch.ones(()))
        p.grad = torch.full((1,), float("inf") if bad else 1.0)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales


def _our_scales(pattern, **config):
    scaler = LossScaler(**config)
    scales = []
    for bad in pattern:
        scaler.update(bad)
        scales.append(scaler.scale)
    return scaler, scales


def test_scaler_defaults_follow_torch_gradscaler(torch):
    torch_defaults = torch.amp.GradScaler("cpu")
    ours = LossScaler()
    assert ours.scale == torch_defaults.get_scale() == 2.0 ** 16
    assert ours.growth_interval == torch_defaults.get_growth_interval() == 2000
    assert ours.growth_factor == torch_defaults.get_growth_factor()
    assert ours.backoff_factor == torch_defaults.get_backoff_factor()
    # 2000 good steps double the scale; an overflow halves it and restarts the count.
    pattern = [False] * 2000 + [True] + [False] * 1999 + [True, True] + [False] * 2001
    scaler, scales = _our_scales(pattern)
    assert scales == _torch_scales(torch, pattern)
    assert scaler.skipped_steps == 3


def test_scaler_matches_torch_on_a_random_pattern_with_custom_factors(torch):
    pattern = list(np.random.default_rng(0).random(300) < 0.15)
    config = dict(init_scale=1024.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=5)
    scaler, scales = _our_scales(pattern, **config)
    assert scales == _torch_scales(torch, pattern, **config)
    assert scaler.skipped_steps == sum(pattern)


@pytest.mark.parametrize("config, message", [
    (dict(init_scale=0.0), "init_scale"), (dict(growth_factor=1.0), "growth_factor"),
    (dict(backoff_factor=1.0), "backoff_factor"), (dict(growth_interval=0), "growth_interval"),
    (dict(growth_interval=2.5), "growth_interval")])
def test_scaler_rejects_bad_settings(config, message):
    with pytest.raises(ValueError, match=message):
        LossScaler(**config)


def test_scaler_state_round_trips_and_bad_state_changes_nothing():
    scaler, _ = _our_scales([True, False, False], growth_interval=2)
    state = scaler.state_dict()
    other = LossScaler(growth_interval=2)
    other.load_state_dict(state)
    assert other.state_dict() == state == {"scale": 2.0 ** 16, "growth_tracker": 0,
                                            "skipped_steps": 1}
    for bad in ({**state, "scale": -1.0}, {**state, "scale": float("inf")},
                {**state, "growth_tracker": -1}, {**state, "skipped_steps": 1.5}):
        with pytest.raises(ValueError):
            other.load_state_dict(bad)
        assert other.state_dict() == state


# -- a forced-overflow run against torch's autocast + GradScaler ------------------------------------------
def _overflow_case():
    """Inputs of size ~5: the scaled float16 gradients overflow at scale 2^16. Over 16 steps of
    batches of 8 the scale backs off, grows back (growth_interval=3) and backs off again; in a
    float64 replay no step's largest scaled gradient lies within 20 % of float16's 65504, so
    rounding cannot flip a decision."""
    rng = np.random.default_rng(3)
    X = (5.0 * rng.standard_normal((64, 4))).astype(np.float32)
    y = rng.standard_normal((64, 2)).astype(np.float32)
    return X, y


def _batch(a, step):
    return a[(step % 8) * 8:(step % 8 + 1) * 8]


def _torch_amp_run(torch, weights, X, y, steps, lr, growth_interval):
    lin1, lin2 = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    with torch.no_grad():
        for lin, (W, b) in ((lin1, weights[0:2]), (lin2, weights[2:4])):
            lin.weight.copy_(torch.tensor(W.T))
            lin.bias.copy_(torch.tensor(b))
    params = [*lin1.parameters(), *lin2.parameters()]
    opt = torch.optim.SGD(params, lr=lr)
    scaler = torch.amp.GradScaler("cpu", growth_interval=growth_interval)
    scales = []
    for step in range(steps):
        xb, yb = torch.tensor(_batch(X, step)), torch.tensor(_batch(y, step))
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            out = lin2(torch.relu(lin1(xb)))
        loss = torch.nn.functional.mse_loss(out.float(), yb)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, [lin1.weight.detach().numpy().T, lin1.bias.detach().numpy(),
                    lin2.weight.detach().numpy().T, lin2.bias.detach().numpy()]


def test_forced_overflow_scale_sequence_matches_torch_amp(backend, torch):
    _mixed_backend(backend)
    X, y = _overflow_case()
    growth_interval, lr, steps = 3, 1e-4, 16
    policy = MixedPrecision("float16", LossScaler(growth_interval=growth_interval))
    net = bpgpu.Network([Dense(4, 8), ReLU(), Dense(8, 2)], loss="mse", optimizer=SGD(lr=lr),
                        backend=backend, seed=0, precision=policy)
    start = net.get_weights()
    scales = []
    for step in range(steps):
        net.train_step(_batch(X, step), _batch(y, step))
        scales.append(policy.scaler.scale)
    expected, torch_weights = _torch_amp_run(torch, start, X, y, steps, lr, growth_interval)
    assert scales == expected
    assert policy.scaler.skipped_steps == 8  # backed off, stepped, grew and backed off again
    assert max(scales[9:]) > min(scales[:9])
    for ours, theirs in zip(net.get_weights(), torch_weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3 * np.max(np.abs(theirs)))


def test_a_skipped_step_changes_no_weight_and_no_optimizer_state(backend):
    _mixed_backend(backend)
    X, y = _overflow_case()
    net = bpgpu.Network([Dense(4, 8), ReLU(), Dense(8, 2)], loss="mse", optimizer=Adam(),
                        backend=backend, seed=0, precision="mixed_float16")
    net.train_step(X[:2] / 100.0, y[:2])  # a normal step first: the optimizer has state
    before = net.get_weights()
    state = {k: [net.backend.to_numpy(a) for a in v] for k, v in net.optimizer.state.items()}
    loss = net.train_step(X * 100.0, y)  # scaled gradients overflow float16
    assert np.isfinite(loss)
    assert net.precision.scaler.scale == 2.0 ** 15 and net.precision.scaler.skipped_steps == 1
    assert net.optimizer.step_count == 1
    for a, b in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, values in net.optimizer.state.items():
        for a, b in zip(values, state[name], strict=True):
            np.testing.assert_array_equal(net.backend.to_numpy(a), b)


class _ScaleLog(Callback):
    def __init__(self):
        super().__init__()
        self.scales = []

    def on_batch_end(self, batch, logs=None):
        self.scales.append(self.network.precision.scaler.scale)


def test_fit_skips_overflowing_steps_without_divergence_and_records_them(backend):
    _mixed_backend(backend)
    X, y = _overflow_case()
    log = _ScaleLog()
    net = bpgpu.Network([Dense(4, 8), ReLU(), Dense(8, 2)], loss="mse", optimizer=SGD(lr=1e-4),
                        backend=backend, seed=0, precision="mixed_float16")
    history = net.fit(X, y, epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=[log])
    skipped = history.history["skipped_steps"]
    assert sum(skipped) == net.precision.scaler.skipped_steps > 0
    assert all(np.isfinite(history.history["loss"]))
    assert history.history["loss_scale"][-1] == net.precision.scaler.scale == log.scales[-1]
    # each skipped step halved the scale; none grew (growth needs 2000 good steps)
    assert log.scales[-1] == 2.0 ** 16 * 0.5 ** sum(skipped)
    assert all(np.all(np.isfinite(w)) for w in net.get_weights())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_non_finite_loss_is_a_divergence_and_keeps_the_weights(backend):
    _mixed_backend(backend)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 4)).astype(np.float32)
    X[20, 0] = 1e5  # finite in float32, beyond float16's largest value 65504
    net = bpgpu.Network([Dense(4, 3)], loss="mse", optimizer=SGD(lr=1e-3), backend=backend,
                        seed=0, precision="mixed_float16")
    net.fit(X[:16], np.zeros((16, 3)), epochs=1, batch_size=8, shuffle=False, verbose=0)
    before = net.get_weights()
    with pytest.raises(bpgpu.TrainingDivergedError) as info:
        net.fit(X[16:], np.zeros((16, 3)), epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert (info.value.epoch, info.value.step) == (1, 0)
    for a, b in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


# -- what the policy promises about dtypes and the step --------------------------------------------------
def test_masters_optimizer_state_and_gradients_are_float32(backend):
    _mixed_backend(backend)
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    net = bpgpu.Network([Dense(5, 6), ReLU(), Dense(6, 3)], loss="cross_entropy",
                        backend=backend, seed=0, precision="mixed_float16")
    net.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert all(w.dtype == np.float32 for w in net.get_weights())
    assert all(g.dtype == np.float32 for g in net.gradients())
    assert all(a.dtype == net.dtype for v in net.optimizer.state.values() for a in v)
    assert all(layer.params[key].dtype == net.dtype for layer, key in net._slots)
    assert net.forward(X).dtype == net.dtype
    assert net.predict(X).dtype == np.float32


def test_compute_gradients_are_unscaled_and_move_nothing(backend):
    _mixed_backend(backend)
    rng = np.random.default_rng(2)  # gradients below 1: no overflow at the scale 2^16
    X, y = 0.1 * rng.standard_normal((16, 5)), 0.1 * rng.standard_normal((16, 2))
    mixed = bpgpu.Network([Dense(5, 6, l2=0.1), ReLU(), Dense(6, 2)], loss="mse",
                          backend=backend, seed=0, precision="mixed_float16")
    plain = bpgpu.Network([Dense(5, 6, l2=0.1), ReLU(), Dense(6, 2)], loss="mse",
                          backend=backend, seed=0)
    loss_m, grads_m = mixed.compute_gradients(X, y)
    loss_p, grads_p = plain.compute_gradients(X, y)
    assert mixed.precision.scaler.state_dict() == LossScaler().state_dict()
    assert abs(loss_m - loss_p) < 1e-2 * abs(loss_p)
    for gm, gp in zip(grads_m, grads_p, strict=True):  # the l2 term included: scaled with the loss
        assert np.max(np.abs(gm - gp)) < 1e-2 * np.max(np.abs(gp))


def test_dropout_draws_the_masks_of_a_float32_run():
    X = np.random.default_rng(4).standard_normal((16, 6))
    outs = []
    for precision in (None, "mixed_float16"):
        net = bpgpu.Network([Dense(6, 6), Dropout(0.5)], backend="numpy", seed=3,
                            precision=precision)
        outs.append(net.backend.to_numpy(net.forward(X, training=True)))
    np.testing.assert_array_equal(outs[0] == 0, outs[1] == 0)


def test_mixed_precision_uses_the_reference_engine_and_says_why():
    net = bpgpu.Network([Dense(3, 2)], backend="numpy", precision="mixed_float16")
    assert not net.engine.fast
    assert net.engine.reason == "reference: mixed precision has no fast version"
    assert "mixed_float16" in net.summary() and "mixed_float16" in repr(net)
    assert bpgpu.Network([Dense(3, 2)], backend="numpy").engine.fast


def test_bfloat16_on_torch_trains_without_a_scaler(torch):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((32, 5)), rng.integers(0, 3, 32)
    net = bpgpu.Network([Dense(5, 8), ReLU(), Dense(8, 3)], loss="cross_entropy",
                        backend="torch:cpu", seed=0, precision="mixed_bfloat16")
    assert net.precision.scaler is None and net.precision.compute == torch.bfloat16
    history = net.fit(X, y, epochs=5, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "loss_scale" not in history.history
    assert all(w.dtype == np.float32 for w in net.get_weights())


# -- checkpoints ----------------------------------------------------------------------------------------------
def test_checkpoint_keeps_the_policy_and_the_scale_and_resumes_exactly(tmp_path):
    X, y = _overflow_case()

    def make():
        policy = MixedPrecision("float16", LossScaler(growth_interval=3))
        return bpgpu.Network([Dense(4, 8), ReLU(), Dense(8, 2)], loss="mse",
                             optimizer=Adam(lr=1e-3), backend="numpy", seed=0, precision=policy)

    whole = make()
    whole.fit(X, y, epochs=4, batch_size=8, verbose=0)
    half = make()
    half.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert half.precision.scaler.skipped_steps > 0
    half.save(tmp_path / "net.npz")
    loaded = bpgpu.load(tmp_path / "net.npz", backend="numpy")
    assert loaded.precision.name == "mixed_float16"
    assert loaded.precision.scaler.get_config() == half.precision.scaler.get_config()
    assert loaded.precision.state_dict() == half.precision.state_dict()
    loaded.fit(X, y, epochs=2, batch_size=8, verbose=0)
    assert loaded.precision.state_dict() == whole.precision.state_dict()
    assert loaded.history.history == whole.history.history
    for a, b in zip(loaded.get_weights(), whole.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_plain_checkpoint_loads_without_precision(tmp_path):
    net = bpgpu.Network([Dense(3, 2)], backend="numpy", seed=0)
    net.save(tmp_path / "plain.npz")
    assert bpgpu.load(tmp_path / "plain.npz").precision is None


# -- refusals -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name, precision, reason", [
    ("numpy", "mixed_bfloat16", "NumPy has no bfloat16"),
    ("cupy", "mixed_bfloat16", "CuPy has no bfloat16"),
    ("array_api_strict", "mixed_float16", "no 16-bit floating dtypes"),
    ("array_api_strict", "mixed_bfloat16", "no 16-bit floating dtypes")])
def test_refusals_name_the_reason(backend_name, precision, reason):
    reason_unusable = backend_status()[backend_name]
    if reason_unusable is not None:
        pytest.skip(f"backend {backend_name!r} unusable here: {reason_unusable}")
    layers = [Dense(3, 2)]
    with pytest.raises(ValueError, match=reason):
        bpgpu.Network(layers, backend=backend_name, precision=precision)
    assert not layers[0].built  # a rejected call changes nothing


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(precision="float16"), ValueError, "precision must be"),
    (dict(precision="mixed_float16", dtype="float64"), ValueError, "float32 master weights"),
])
def test_bad_precision_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        bpgpu.Network([Dense(3, 2)], backend="numpy", **kwargs)


def test_bad_policy_settings_are_refused():
    with pytest.raises(ValueError, match="compute_dtype"):
        MixedPrecision("float8")
    with pytest.raises(TypeError, match="loss_scale"):
        MixedPrecision("float16", loss_scale=2.0)


# -- NumPy's float16 product and its reference twin ----------------------------------------------------------
def test_numpy_float16_matmul_equals_numpys_own_to_rounding():
    rng = np.random.default_rng(6)
    a = rng.standard_normal((33, 70)).astype(np.float16)
    b = rng.standard_normal((70, 9)).astype(np.float16)
    fast = bpgpu.get_backend("numpy").matmul(a, b)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert fast.dtype == np.float16
    # Both round an (essentially) exact sum once: within one float16 ulp of each other.
    ulp = np.spacing(np.abs(exact).astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(fast - exact) <= 0.5 * ulp + 1e-6 * np.abs(exact))
    assert np.all(np.abs(fast.astype(np.float64) - (a @ b).astype(np.float64)) <= ulp)


def test_gradcheck_of_a_mixed_network_checks_its_float64_formulas():
    rng = np.random.default_rng(7)
    net = bpgpu.Network([Dense(3, 4, l2=0.1), ReLU(), Dense(4, 2)], loss="mse", backend="numpy",
                        seed=0, precision="mixed_float16")
    assert bpgpu.gradcheck(net, rng.standard_normal((6, 3)), rng.standard_normal((6, 2))) < 1e-7
    assert all(w.dtype == np.float32 for w in net.get_weights())  # put back as they were
