"""The training loop: batches, schedules and clipping inside fit (against PyTorch), metrics
(against scikit-learn), validation, progress output, device reads, L2 penalties, divergence."""

import copy
import io
import math
import sys
import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu.callbacks import Callback, TerminateOnNaN
from bpgpu.layers import Dense, Sigmoid, Tanh
from bpgpu.metrics import MAE, R2, FunctionMetric, Metric
from bpgpu.optimizers import SGD, Adam, RMSprop
from bpgpu.schedules import CosineAnnealingLR, LinearWarmup, StepLR

from layer_helpers import CallCounter

RNG = np.random.default_rng(42)
X = RNG.normal(size=(37, 4))
Y_REG = np.stack([X[:, 0] - 2 * X[:, 1] + 0.3, X[:, 2] * X[:, 3]], axis=1)
Y_CLS = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)  # 3 classes
Y_BIN = (X[:, 0] - X[:, 3] > 0).astype(np.float64)


def _mlp(backend, sizes=(4, 8, 2), loss="mse", optimizer=None, dtype="float64", seed=7, **kwargs):
    return bpgpu.Network.from_sizes(list(sizes), activation="tanh", loss=loss,
                                    optimizer=optimizer or SGD(lr=0.05), backend=backend,
                                    dtype=dtype, seed=seed, **kwargs)


# -- fit against a PyTorch training run ---------------------------------------------------------------
def _torch_fit(torch, net, X, y, epochs, batch_size, shuffle, optimizer, clip_value=None,
               clip_norm=None, schedule=None, per="epoch"):
    """Train a torch copy of ``net`` (Linear/Tanh MLP) on the same batches fit draws; returns
    (weights in get_weights order, per-epoch mean losses)."""
    rng = copy.deepcopy(net.shuffle_rng)
    weights = net.get_weights()
    linears = []
    for W, b in zip(weights[::2], weights[1::2], strict=True):
        layer = torch.nn.Linear(*W.shape).double()
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(W.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
        linears.append(layer)
    model = torch.nn.Sequential(*sum(([lin, torch.nn.Tanh()] for lin in linears), [])[:-1])
    opt = optimizer(model.parameters())
    scheduler = schedule(opt) if schedule else None
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = X.shape[0]
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            order = rng.permutation(n) if shuffle and batch_size < n else np.arange(n)
            total = 0.0
            for start in range(0, n, batch_size):
                idx = torch.from_numpy(order[start:start + batch_size])
                opt.zero_grad()
                out = model(Xt[idx])
                loss = (torch.nn.functional.mse_loss(out, yt[idx]) if y.ndim == 2
                        else torch.nn.functional.cross_entropy(out, yt[idx]))
                loss.backward()
                if clip_value is not None:
                    torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
                opt.step()
                if scheduler is not None and per == "batch":
                    scheduler.step()
                total += loss.item() * len(idx)
            if scheduler is not None and per == "epoch":
                scheduler.step()
            losses.append(total / n)
    out = []
    for lin in linears:
        out += [lin.weight.detach().numpy().T, lin.bias.detach().numpy()]
    return out, losses


TORCH_RUNS = {
    "sgd-momentum-shuffle": dict(
        ours=lambda: SGD(lr=0.05, momentum=0.9), theirs=lambda T, p: T.optim.SGD(p, lr=0.05, momentum=0.9)),
    "adam-clip-norm": dict(
        ours=lambda: Adam(lr=0.02, clip_norm=0.5),
        theirs=lambda T, p: T.optim.Adam(p, lr=0.02), clip_norm=0.5),
    "rmsprop-clip-value": dict(
        ours=lambda: RMSprop(lr=0.01, clip_value=0.05),
        theirs=lambda T, p: T.optim.RMSprop(p, lr=0.01), clip_value=0.05),
    "sgd-both-clips": dict(
        ours=lambda: SGD(lr=0.1, clip_value=0.2, clip_norm=0.3),
        theirs=lambda T, p: T.optim.SGD(p, lr=0.1), clip_value=0.2, clip_norm=0.3),
    "sgd-steplr-per-epoch": dict(
        ours=lambda: SGD(lr=StepLR(0.1, step_size=2, gamma=0.5), momentum=0.5),
        theirs=lambda T, p: T.optim.SGD(p, lr=0.1, momentum=0.5),
        schedule=lambda T, o: T.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    "adam-warmup-cosine-per-batch": dict(
        ours=lambda: Adam(lr=LinearWarmup(4, CosineAnnealingLR(0.02, T_max=9, per="batch"))),
        theirs=lambda T, p: T.optim.Adam(p, lr=0.02),
        schedule=lambda T, o: T.optim.lr_scheduler.SequentialLR(
            o, [T.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=4),
                T.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9)], milestones=[4]),
        per="batch"),
}


@pytest.mark.parametrize("name", list(TORCH_RUNS))
@pytest.mark.parametrize("target", ["regression", "classes"])
def test_fit_equals_torch_training(backend, torch, name, target):
    run = TORCH_RUNS[name]
    y = Y_REG if target == "regression" else Y_CLS
    net = _mlp(backend, sizes=(4, 6, 2 if target == "regression" else 3),
               loss="mse" if target == "regression" else "cross_entropy", optimizer=run["ours"]())
    expected_w, expected_loss = _torch_fit(
        torch, net, X, y, epochs=4, batch_size=8, shuffle=True,
        optimizer=lambda p: run["theirs"](torch, p), clip_value=run.get("clip_value"),
        clip_norm=run.get("clip_norm"),
        schedule=(lambda o: run["schedule"](torch, o)) if "schedule" in run else None,
        per=run.get("per", "epoch"))
    history = net.fit(X, y, epochs=4, batch_size=8, verbose=0)
    np.testing.assert_allclose(history["loss"], expected_loss, rtol=1e-9)
    for ours, theirs in zip(net.get_weights(), expected_w, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-12)


def test_history_records_the_rate_of_each_epoch(backend):
    net = _mlp(backend, optimizer=SGD(lr=StepLR(0.1, step_size=2, gamma=0.5)))
    history = net.fit(X, Y_REG, epochs=5, batch_size=10, verbose=0)
    assert history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert net.optimizer.schedule_step == 5
    assert "lr" not in _mlp(backend).fit(X, Y_REG, epochs=1, verbose=0).history


# -- metrics -----------------------------------------------------------------------------------------
def test_metrics_equal_scikit_learn(backend):
    """With lr = 0 the weights never move, so the epoch's training metrics must equal the metrics
    of predict(X) computed by scikit-learn; validation metrics likewise on the validation set."""
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the oracle here")
    Xv, yv = X[:15] * 1.5, Y_REG[:15] + 0.2

    def max_error(y_true, y_pred):  # a plain function metric: batch mean of row maxima
        xp = net.backend.xp
        return xp.mean(xp.max(xp.abs(y_pred - y_true), axis=1))

    net = _mlp(backend, optimizer=SGD(lr=0.0))
    h = net.fit(X, Y_REG, epochs=2, batch_size=8, verbose=0, validation_data=(Xv, yv),
                metrics=["mae", "rmse", "r2", max_error])
    for prefix, data, target in (("", X, Y_REG), ("val_", Xv, yv)):
        pred = net.predict(data)
        expected = {"mae": metrics.mean_absolute_error(target, pred),
                    "rmse": math.sqrt(metrics.mean_squared_error(target, pred)),
                    "r2": metrics.r2_score(target, pred),
                    "max_error": np.mean(np.max(np.abs(pred - target), axis=1)),
                    "loss": metrics.mean_squared_error(target, pred)}
        for name, value in expected.items():
            np.testing.assert_allclose(h[prefix + name], [value, value], rtol=1e-10, err_msg=name)


def test_classification_metrics_equal_scikit_learn(backend):
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the oracle here")
    ce = _mlp(backend, sizes=(4, 6, 3), loss="cross_entropy", optimizer=SGD(lr=0.0))
    h = ce.fit(X, Y_CLS, epochs=1, batch_size=10, metrics=["accuracy"], verbose=0,
               validation_split=0.3)
    split = int(math.floor(37 * 0.7))
    for prefix, rows in (("", slice(0, split)), ("val_", slice(split, None))):
        expected = metrics.accuracy_score(Y_CLS[rows], ce.predict(X[rows]).argmax(axis=1))
        assert h[prefix + "accuracy"] == [pytest.approx(expected, rel=1e-12)]
    for loss, last in (("bce", [Sigmoid()]), ("bce_with_logits", [])):
        net = bpgpu.Network([Dense(4, 1), *last], loss=loss, optimizer=SGD(lr=0.0),
                            backend=backend, dtype="float64", seed=3)
        h = net.fit(X, Y_BIN, epochs=1, batch_size=6, metrics=["accuracy", "binary_accuracy"],
                    verbose=0)
        threshold = 0.5 if last else 0.0
        expected = metrics.accuracy_score(Y_BIN, (net.predict(X)[:, 0] > threshold))
        assert h["accuracy"] == h["binary_accuracy"] == [pytest.approx(expected, rel=1e-12)]
        assert 0.0 < expected < 1.0  # a meaningful threshold test


def test_r2_of_a_constant_target_follows_scikit_learn(backend):
    """A constant column has SS_tot = 0: scikit-learn scores it 1 if predicted exactly, else 0."""
    metric = R2().bind(backend, bpgpu.losses.MSE())
    metric.begin()
    xp = backend.xp
    target = backend.asarray(np.ones((4, 2)), dtype=xp.float64)
    pred = backend.asarray(np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 1.0], [1.0, 1.0]]), dtype=xp.float64)
    assert metric.result(backend.to_numpy(metric.update(pred, target)).astype(float)) == 0.5


def test_metric_errors_name_the_problem(backend):
    net = _mlp(backend)
    before = net.get_weights()
    with pytest.raises(ValueError, match="metric 'accuracy' needs a classification loss"):
        net.fit(X, Y_REG, metrics=["accuracy"], verbose=0)
    with pytest.raises(ValueError, match="unknown metric 'f2'"):
        net.fit(X, Y_REG, metrics=["f2"], verbose=0)
    with pytest.raises(ValueError, match="metric names must be unique"):
        net.fit(X, Y_REG, metrics=["mae", MAE()], verbose=0)
    with pytest.raises(ValueError, match="a metric function needs a name"):
        net.fit(X, Y_REG, metrics=[lambda t, p: 0.0], verbose=0)
    with pytest.raises(TypeError, match="metrics must be a list"):
        net.fit(X, Y_REG, metrics=3, verbose=0)
    ce = _mlp(backend, sizes=(4, 3), loss="cross_entropy")
    for name in ("mae", "binary_accuracy"):
        with pytest.raises(ValueError, match="cross_entropy"):
            ce.fit(X, Y_CLS, metrics=[name], verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights(), strict=True)) and net.epoch == 0


def test_metric_subclass_and_function_metric_names(backend):
    class MaxAbs(Metric):
        name = "max_abs_target"

        def update(self, pred, target):
            self.count += 1
            return self.xp.reshape(self.xp.max(self.xp.abs(target)), (1,))

        def result(self, sums):
            return float(sums[0])  # the sum over batches of each batch's max |target|

    net = _mlp(backend, optimizer=SGD(lr=0.0))
    h = net.fit(X, Y_REG, epochs=1, batch_size=37, shuffle=False, verbose=0,
                metrics=[MaxAbs(), FunctionMetric(lambda t, p: 1.0, name="one")])
    assert h["max_abs_target"] == [pytest.approx(np.abs(Y_REG).max(), rel=1e-14)]
    assert h["one"] == [1.0]


# -- validation ----------------------------------------------------------------------------------------
def test_validation_split_holds_out_the_last_fraction(backend):
    a = _mlp(backend)
    b = _mlp(backend)
    ha = a.fit(X, Y_REG, epochs=3, batch_size=8, validation_split=0.25, verbose=0)
    split = int(math.floor(37 * 0.75))
    hb = b.fit(X[:split], Y_REG[:split], epochs=3, batch_size=8,
               validation_data=(X[split:], Y_REG[split:]), verbose=0)
    assert ha.history == hb.history
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert ha["val_loss"][-1] == pytest.approx(a.evaluate(X[split:], Y_REG[split:])["loss"], rel=1e-12)


def test_default_validation_reports_accuracy_for_classifiers(backend):
    net = _mlp(backend, sizes=(4, 3), loss="cross_entropy")
    h = net.fit(X, Y_CLS, epochs=1, validation_data=(X, Y_CLS), verbose=0)
    assert set(h.history) == {"loss", "val_loss", "val_accuracy"}
    expected = net.evaluate(X, Y_CLS)
    assert h["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-12)
    assert h["val_accuracy"][0] == pytest.approx(expected["accuracy"], rel=1e-12)


@pytest.mark.parametrize("kwargs,message", [
    (dict(validation_split=0.2, validation_data=(X, Y_REG)), "not both"),
    (dict(validation_split=1.0), r"validation_split must be a fraction in \(0, 1\)"),
    (dict(validation_split=0), r"validation_split must be a fraction in \(0, 1\)"),
    (dict(validation_split=0.99), "leaves 0 for training and 37 for validation"),
    (dict(validation_split=1e-17), "leaves 37 for training and 0 for validation"),
    (dict(initial_epoch=-1), "initial_epoch must be an integer >= 0"),
    (dict(initial_epoch=3, epochs=3), "epochs is the epoch to stop before"),
    (dict(validation_data=(X[:0], Y_REG[:0])), "validation_data holds no samples"),
    (dict(verbose=3), "verbose must be 0, 1 or 2"),
])
def test_fit_arguments_are_checked_before_training(backend, kwargs, message):
    net = _mlp(backend)
    before, state = net.get_weights(), net.shuffle_rng.bit_generator.state
    with pytest.raises(ValueError, match=message):
        net.fit(X, Y_REG, **{"verbose": 0, **kwargs})
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights(), strict=True))
    assert net.epoch == 0 and net.optimizer.step_count == 0 and len(net.history) == 0
    assert net.shuffle_rng.bit_generator.state == state


def test_initial_epoch_follows_keras(backend):
    net = _mlp(backend)
    net.fit(X, Y_REG, epochs=2, verbose=0)
    h = net.fit(X, Y_REG, epochs=5, initial_epoch=2, verbose=0)
    assert h.epoch == [2, 3, 4] and net.epoch == 5 and net.history.epoch == [0, 1, 2, 3, 4]
    assert net.fit(X, Y_REG, epochs=2, verbose=0).epoch == [5, 6]  # plain fit continues


# -- reads from the device -----------------------------------------------------------------------------
class _QuietBatchCallback(Callback):
    def __init__(self):
        self.losses = []

    def on_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])  # kept on the device, never read


@pytest.mark.parametrize("batch_size", [3, 12])
def test_one_device_read_per_epoch_whatever_the_batches(backend, batch_size):
    """Training loss, metrics and the weights' finiteness come back in one read per epoch (one
    more for validation), however many batches and batch callbacks there are."""
    net = _mlp(backend, loss="mse")
    reads = [CallCounter(net.backend.to_float), CallCounter(net.backend.to_numpy)]
    net.backend.to_float, net.backend.to_numpy = reads
    quiet = _QuietBatchCallback()
    net.fit(X, Y_REG, epochs=3, batch_size=batch_size, metrics=["mae", "r2"], verbose=0,
            validation_split=0.2, callbacks=[quiet])
    assert sum(r.calls for r in reads) == 3 * 2
    assert len(quiet.losses) == 3 * math.ceil(29 / batch_size)
    assert all(net.backend.is_native(loss) or isinstance(loss, np.generic) for loss in quiet.losses)


def test_batch_losses_average_to_the_epoch_loss(backend):
    quiet = _QuietBatchCallback()
    net = _mlp(backend)
    h = net.fit(X, Y_REG, epochs=2, batch_size=10, callbacks=[quiet], verbose=0)
    sizes = [10, 10, 10, 7]
    per_epoch = np.array([float(net.backend.to_float(loss)) for loss in quiet.losses]).reshape(2, 4)
    np.testing.assert_allclose(h["loss"], per_epoch @ sizes / 37, rtol=1e-12)


# -- progress output ---------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_verbose_0_prints_nothing_and_1_prints_one_line_per_epoch_off_a_terminal(backend, capsys):
    net = _mlp(backend)
    net.fit(X, Y_REG, epochs=2, verbose=0, validation_split=0.2)
    assert capsys.readouterr().out == ""
    net.fit(X, Y_REG, epochs=3, verbose=1, validation_split=0.2, metrics=["mae"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"epoch {i + 1}/3  loss ") and " mae " in line and " val_mae " in line
               for i, line in enumerate(lines))


def test_progress_bar_on_a_terminal_with_tqdm(monkeypatch):
    pytest.importorskip("tqdm", reason="tqdm is not installed; the plain bar is tested separately")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    net = _mlp("numpy")
    net.fit(X, Y_REG, epochs=2, batch_size=4, verbose=1)
    out = terminal.getvalue()
    assert "epoch 1/2" in out and "epoch 2/2" in out and "10/10" in out and "batch" in out
    assert f"loss {net.history['loss'][-1]:.6g}" in out


def test_plain_progress_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `import tqdm` fail
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    net = _mlp("numpy")
    net.fit(X, Y_REG, epochs=2, batch_size=4, verbose=1)
    out = terminal.getvalue()
    assert "\repoch 1/2 [" in out and "] 10/10" in out and "=" * 30 in out
    assert out.count("\n") == 2 and f"loss {net.history['loss'][0]:.6g}" in out
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    net.fit(X, Y_REG, epochs=1, verbose=2)  # verbose=2: lines even on a terminal
    assert "[" not in terminal.getvalue() and terminal.getvalue().startswith("epoch 1/1  loss")


# -- L2 penalty -------------------------------------------------------------------------------------------
def _l2_net(backend, l2):
    return bpgpu.Network([Dense(4, 5, l2=l2), Tanh(), Dense(5, 2, l2=2 * l2)], loss="mse",
                         optimizer=SGD(lr=0.0), backend=backend, dtype="float64", seed=5)


def test_l2_penalty_is_in_the_reported_loss(backend):
    net = _l2_net(backend, 0.01)
    W1, b1, W2, b2 = net.get_weights()
    pred = np.tanh(X @ W1 + b1) @ W2 + b2
    expected = np.mean((pred - Y_REG) ** 2) + 0.01 * np.sum(W1 ** 2) + 0.02 * np.sum(W2 ** 2)
    h = net.fit(X, Y_REG, epochs=1, batch_size=None, verbose=0, validation_data=(X, Y_REG))
    assert h["loss"] == [pytest.approx(expected, rel=1e-12)]
    assert h["val_loss"] == [pytest.approx(expected, rel=1e-12)]
    # In mini-batches the penalty counts once per sample on average, not once per batch.
    assert _l2_net(backend, 0.01).fit(X, Y_REG, epochs=1, batch_size=5, verbose=0)["loss"] == \
        [pytest.approx(expected, rel=1e-12)]


def test_l2_penalty_gradients(backend, torch):
    """Finite differences, the closed form 2 l2 W, and torch autograd of loss + l2 sum(W^2)."""
    net = _l2_net(backend, 0.03)
    assert bpgpu.gradcheck(net, X[:9], Y_REG[:9]) < 1e-7
    _, with_l2 = net.compute_gradients(X, Y_REG)
    plain = _l2_net(backend, 0.0)
    _, without = plain.compute_gradients(X, Y_REG)
    W1, _, W2, _ = net.get_weights()
    for g1, g0, extra in zip(with_l2, without, (2 * 0.03 * W1, 0.0, 2 * 0.06 * W2, 0.0), strict=True):
        np.testing.assert_allclose(g1 - g0, np.broadcast_to(extra, g1.shape), rtol=1e-10, atol=1e-13)
    params = [torch.tensor(w, requires_grad=True) for w in net.get_weights()]
    A, a, B, b = params
    Xt = torch.from_numpy(X)
    loss = torch.mean((torch.tanh(Xt @ A + a) @ B + b - torch.from_numpy(Y_REG)) ** 2) \
        + 0.03 * torch.sum(A * A) + 0.06 * torch.sum(B * B)
    loss.backward()
    for ours, p in zip(with_l2, params, strict=True):
        np.testing.assert_allclose(ours, p.grad.numpy(), rtol=1e-10, atol=1e-13)


# -- divergence ------------------------------------------------------------------------------------------
def _diverging_data():
    rng = np.random.default_rng(0)
    Xd = rng.normal(size=(64, 3))
    return Xd, Xd @ np.array([[1.0], [-2.0], [0.5]])


def _manual_divergence(make, X, y, batch_size, epochs):
    """Independent oracle: the same batches fed by train_step, reading every loss. Returns
    (epoch, step, weights before the previous step) at the first non-finite loss."""
    net = make()
    n = X.shape[0]
    previous = None
    for epoch in range(epochs):
        order = net.shuffle_rng.permutation(n) if batch_size < n else np.arange(n)
        for step, start in enumerate(range(0, n, batch_size)):
            idx = order[start:start + batch_size]
            weights = net.get_weights()
            if not math.isfinite(net.train_step(X[idx], y[idx])):
                return epoch, step, previous
            previous = weights
    raise AssertionError("the reference run did not diverge")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("lr,batch_size", [(0.25, 8), (0.3, 8), (0.4, 64)],
                         ids=["mid-epoch", "first-step-of-an-epoch", "full-batch"])
def test_divergence_raises_and_keeps_the_last_finite_weights(backend, lr, batch_size):
    Xd, yd = _diverging_data()

    def make():
        return bpgpu.Network.from_sizes([3, 8, 1], backend=backend, seed=3, dtype="float64",
                                        optimizer=SGD(lr=lr))

    epoch, step, kept = _manual_divergence(make, Xd, yd, batch_size, epochs=40)
    assert epoch >= 1  # diverges after a whole finite epoch, so history has something to keep
    net = make()
    with pytest.raises(bpgpu.TrainingDivergedError) as info:
        net.fit(Xd, yd, epochs=40, batch_size=batch_size, verbose=0)
    error = info.value
    assert (error.epoch, error.step) == (epoch, step)
    assert not math.isfinite(error.loss)
    assert f"at epoch {epoch}, step {step}" in str(error) and "lower learning rate" in str(error)
    for ours, expected in zip(net.get_weights(), kept, strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert all(np.isfinite(w).all() for w in net.get_weights())
    assert len(net.history) == epoch and all(math.isfinite(v) for v in net.history["loss"])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_stops_cleanly(backend):
    Xd, yd = _diverging_data()
    net = bpgpu.Network.from_sizes([3, 8, 1], backend=backend, seed=3, dtype="float64",
                                   optimizer=SGD(lr=0.3))
    stop = TerminateOnNaN()
    h = net.fit(Xd, yd, epochs=40, batch_size=8, verbose=0, callbacks=[stop])
    assert isinstance(stop.error, bpgpu.TrainingDivergedError)
    assert len(h) == stop.error.epoch and all(math.isfinite(v) for v in h["loss"])
    assert all(np.isfinite(w).all() for w in net.get_weights())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_weights_after_the_last_update_are_caught(backend):
    """The loss is finite (1e10) but the update overflows the weight to inf in float32: with one
    step per epoch no later loss can reveal it, the end-of-epoch weight check does."""
    net = bpgpu.Network([Dense(1, 1, bias=False)], loss="mse", optimizer=SGD(lr=1e30),
                        backend=backend, dtype="float32", seed=0)
    net.set_weights([np.array([[1.0]])])
    Xd, yd = np.full((4, 1), 1e5), np.zeros(4)
    with pytest.raises(bpgpu.TrainingDivergedError, match="made the weights non-finite") as info:
        net.fit(Xd, yd, epochs=3, batch_size=4, verbose=0)
    assert (info.value.epoch, info.value.step, info.value.weights) == (0, 0, True)
    np.testing.assert_array_equal(net.get_weights()[0], [[1.0]])  # the step's starting weights
    assert net.optimizer.step_count == 0 and len(net.history) == 0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_at_the_first_step_of_a_fit_keeps_the_starting_weights(backend):
    net = bpgpu.Network([Dense(1, 1)], loss="mse", optimizer=SGD(lr=0.1), backend=backend,
                        dtype="float32", seed=0)
    start = net.get_weights()
    with pytest.raises(bpgpu.TrainingDivergedError, match="at epoch 0, step 0") as info:
        net.fit(np.full((6, 1), 1e25), np.zeros(6), epochs=2, batch_size=3, verbose=0)
    assert info.value.loss == math.inf
    for ours, expected in zip(net.get_weights(), start, strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert net.optimizer.step_count == 0 and net.epoch == 0


def test_an_overflowing_epoch_sum_is_not_divergence(backend):
    """float32 batch losses near 1e37 are finite but their weighted sum overflows: the replay
    finds every step finite and training goes on with the loss summed on the host."""
    net = bpgpu.Network([Dense(1, 1, bias=False)], loss="mse", optimizer=SGD(lr=0.0),
                        backend=backend, dtype="float32", seed=0)
    net.set_weights([np.array([[1.0]])])
    Xd, yd = np.full((64, 1), 3e18), np.zeros(64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        h = net.fit(Xd, yd, epochs=1, batch_size=8, verbose=0)
    assert h["loss"] == [pytest.approx(float(np.float32(3e18)) ** 2, rel=1e-6)]


# -- History -----------------------------------------------------------------------------------------------
def test_history_plot_draws_every_curve_and_saves_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib draws the curves (bpgpu[examples])")
    net = _mlp("numpy", optimizer=SGD(lr=StepLR(0.05, 2, 0.5)))
    net.fit(X, Y_REG, epochs=4, validation_split=0.2, metrics=["mae"], verbose=0)
    fig = net.history.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mae", "learning rate"]
    loss_axis = fig.axes[0]
    assert [list(line.get_ydata()) for line in loss_axis.get_lines()] == \
        [net.history["loss"], net.history["val_loss"]]
    assert list(loss_axis.get_lines()[0].get_xdata()) == [1, 2, 3, 4]
    assert fig.axes[2].get_yscale() == "log"
    import matplotlib.pyplot as plt

    shown = net.history.plot()  # no path: a pyplot figure for interactive use
    assert len(shown.axes) == 3
    plt.close(shown)


def test_history_plot_without_matplotlib_names_the_extra(monkeypatch):
    for name in ("matplotlib", "matplotlib.pyplot", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, name, None)
    history = bpgpu.History({"loss": [1.0, 0.5]}, [0, 1])
    with pytest.raises(ImportError, match=r'matplotlib.*pip install "bpgpu\[examples\]"'):
        history.plot("curves.png")
    with pytest.raises(ImportError, match="bpgpu\\[examples\\]"):
        history.plot()


def test_history_round_trips_through_a_dict():
    history = bpgpu.History({"loss": [1.0, float("nan")], "val_loss": [2.0, 1.5]}, [3, 4])
    back = bpgpu.History.from_dict(history.to_dict())
    assert back.epoch == [3, 4] and back["val_loss"] == [2.0, 1.5] and math.isnan(back["loss"][1])
    with pytest.raises(ValueError, match="a history must be"):
        bpgpu.History.from_dict({"history": {"loss": [True]}, "epoch": [0]})
    with pytest.raises(ValueError, match="the history is empty"):
        bpgpu.History().plot()
