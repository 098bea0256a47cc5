"""Callbacks inside fit, on every backend: hook order, stopping, EarlyStopping, ModelCheckpoint,
LearningRateScheduler, ReduceLROnPlateau (against torch), CSVLogger.

Where a callback reacts to a monitored value, an earlier callback writes a scripted value into
the epoch's logs (callbacks share the logs dict, in list order), so the expected reaction
follows from the rules alone, whatever the training does.
"""

import csv
import math
import os

import numpy as np
import pytest

import bpgpu
from bpgpu.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)
from bpgpu.optimizers import SGD, Adam
from bpgpu.schedules import ExponentialLR, StepLR

RNG = np.random.default_rng(3)
X = RNG.normal(size=(37, 3))
Y = X @ np.array([[0.5], [-1.0], [2.0]]) + 0.1


def _net(backend, optimizer=None):
    return bpgpu.Network.from_sizes([3, 6, 1], activation="tanh", optimizer=optimizer or SGD(lr=0.05),
                                    backend=backend, dtype="float64", seed=11)


class Script(Callback):
    """Writes ``values[epoch]`` under ``name`` into the logs, and records the weights."""

    def __init__(self, values, name="score"):
        self.values, self.name, self.weights = values, name, []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.name] = self.values[epoch]
        self.weights.append(self.network.get_weights())


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, logs["size"]))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs)))


def test_hooks_run_in_order_with_the_logs(backend):
    net = _net(backend)
    recorder = Recorder()
    h = net.fit(X, Y, epochs=2, batch_size=10, validation_split=0.2, callbacks=[recorder], verbose=0)
    expected = [("train_begin",)]
    for epoch in range(2):
        expected.append(("epoch_begin", epoch))
        expected += [("batch_end", b, size) for b, size in enumerate([10, 10, 9])]
        expected.append(("epoch_end", epoch, {k: v[epoch] for k, v in h.history.items()}))
    expected.append(("train_end", {k: v[-1] for k, v in h.history.items()}))
    assert recorder.calls == expected
    assert recorder.network is net


class StopAfter(Callback):
    def __init__(self, batches):
        self.batches, self.seen = batches, 0

    def on_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            self.network.stop_training = True


def test_stop_training_from_a_batch_ends_the_epoch_there(backend):
    net = _net(backend)
    h = net.fit(X, Y, epochs=5, batch_size=10, callbacks=[StopAfter(2)], verbose=0, shuffle=False)
    assert net.optimizer.step_count == 2 and net.epoch == 1 and len(h) == 1
    reference = _net(backend)
    losses = [reference.train_step(X[:10], Y[:10]), reference.train_step(X[10:20], Y[10:20])]
    assert h["loss"] == [pytest.approx(np.mean(losses), rel=1e-12)]  # over the 20 samples seen
    for a, b in zip(net.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    net.fit(X, Y, epochs=1, verbose=0)  # the flag is reset by the next fit
    assert net.epoch == 2


def test_callbacks_must_be_callback_objects(backend):
    with pytest.raises(TypeError, match="callbacks must be a list of bpgpu.callbacks.Callback"):
        _net(backend).fit(X, Y, callbacks=[print], verbose=0)
    with pytest.raises(TypeError, match="callbacks must be a list"):
        _net(backend).fit(X, Y, callbacks=EarlyStopping(), verbose=0)


# -- EarlyStopping ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("values,kwargs,stopped,best", [
    ([3.0, 2.0, 2.5, 1.9, 2.0, 2.1, 2.2, 1.0, 1.0], dict(patience=2), 5, 3),
    ([3.0, 2.0, 2.5, 1.9, 2.0, 2.1, 2.2, 1.0, 1.0], dict(patience=2, min_delta=0.15), 3, 1),
    ([3.0, 2.0, 2.5, 1.9, 2.0, 2.1, 2.2, 1.0, 1.0], dict(patience=0), 2, 1),
    ([0.5, 0.6, 0.6, 0.7, 0.65, 0.7, 0.69, 0.9, 0.9], dict(patience=3, monitor="val_accuracy"), 6, 3),
    ([3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], dict(patience=1), None, 8),
])
def test_early_stopping_rules(backend, values, kwargs, stopped, best):
    kwargs = dict(kwargs)  # parametrized dicts are shared between backends
    monitor = kwargs.pop("monitor", "score")
    script = Script(values, monitor)
    early = EarlyStopping(monitor=monitor, restore_best_weights=True, **kwargs)
    net = _net(backend)
    h = net.fit(X, Y, epochs=len(values), batch_size=16, callbacks=[script, early], verbose=0)
    assert early.stopped_epoch == stopped and early.best_epoch == best
    assert len(h) == (len(values) if stopped is None else stopped + 1)
    for ours, expected in zip(net.get_weights(), script.weights[best], strict=True):
        np.testing.assert_array_equal(ours, expected)


def test_early_stopping_without_restoring_keeps_the_last_weights(backend):
    script = Script([1.0, 2.0, 3.0])
    net = _net(backend)
    net.fit(X, Y, epochs=3, callbacks=[script, EarlyStopping("score", patience=5)], verbose=0)
    for ours, expected in zip(net.get_weights(), script.weights[-1], strict=True):
        np.testing.assert_array_equal(ours, expected)


def test_missing_monitor_warns(backend):
    with pytest.warns(RuntimeWarning, match="'val_loss' is not in the logs"):
        _net(backend).fit(X, Y, epochs=1, callbacks=[EarlyStopping()], verbose=0)


def test_early_stopping_on_real_validation_loss(backend):
    """Fit the training set while validating on flipped targets: val_loss rises as the loss
    falls, so training must stop after `patience` epochs without improvement."""
    early = EarlyStopping(patience=2)
    net = _net(backend, optimizer=Adam(lr=0.05))
    h = net.fit(X, Y, epochs=30, validation_data=(X, -Y), callbacks=[early], verbose=0)
    best = int(np.argmin(h["val_loss"]))
    assert early.best_epoch == best and len(h) == best + 3 < 30


# -- ModelCheckpoint -----------------------------------------------------------------------------------------
def test_model_checkpoint_saves_the_best_epochs(backend, tmp_path):
    values = [3.0, 2.0, 2.5, 1.5, 1.6]
    script = Script(values)
    pattern = str(tmp_path / "ck-{epoch:02d}-{score:.1f}.npz")
    net = _net(backend)
    net.fit(X, Y, epochs=5, callbacks=[script, ModelCheckpoint(pattern, "score", save_best_only=True)],
            verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["ck-01-3.0.npz", "ck-02-2.0.npz", "ck-04-1.5.npz"]
    loaded = bpgpu.load(tmp_path / "ck-04-1.5.npz", backend=backend)
    for ours, expected in zip(loaded.get_weights(), script.weights[3], strict=True):
        np.testing.assert_array_equal(ours, expected)
    assert loaded.epoch == 4 and loaded.history.epoch == [0, 1, 2, 3]


def test_model_checkpoint_every_epoch_and_missing_monitor(backend, tmp_path):
    net = _net(backend)
    net.fit(X, Y, epochs=3, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz")], verbose=0)
    assert sorted(os.listdir(tmp_path)) == ["e1.npz", "e2.npz", "e3.npz"]
    with pytest.warns(RuntimeWarning, match="monitored value 'val_loss'"):
        net.fit(X, Y, epochs=1, verbose=0,
                callbacks=[ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)])
    assert not (tmp_path / "best.npz").exists()


# -- learning-rate callbacks ------------------------------------------------------------------------------------
def test_learning_rate_scheduler_equals_the_same_schedule_as_lr(backend):
    schedule = StepLR(0.1, step_size=2, gamma=0.3)
    a = _net(backend, optimizer=SGD(lr=schedule, momentum=0.5))
    b = _net(backend, optimizer=SGD(lr=1.0, momentum=0.5))
    ha = a.fit(X, Y, epochs=5, batch_size=8, verbose=0)
    hb = b.fit(X, Y, epochs=5, batch_size=8, callbacks=[LearningRateScheduler(schedule)], verbose=0)
    assert ha.history == hb.history and ha["lr"] == [schedule(t) for t in range(5)]
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_learning_rate_scheduler_functions(backend):
    net = _net(backend, optimizer=SGD(lr=0.1))
    h = net.fit(X, Y, epochs=3, callbacks=[LearningRateScheduler(lambda epoch, lr: lr * 0.5)],
                verbose=0)
    assert h["lr"] == [0.05, 0.025, 0.0125]
    h = net.fit(X, Y, epochs=2, callbacks=[LearningRateScheduler(lambda epoch: 0.01 * epoch)],
                verbose=0)
    assert h["lr"] == [0.03, 0.04]  # the network's epoch counter continues: 3, 4
    with pytest.raises(ValueError, match="returned -1.0 for epoch 5; expected a finite number >= 0"):
        net.fit(X, Y, callbacks=[LearningRateScheduler(lambda epoch: -1.0)], verbose=0)
    scheduled = _net(backend, optimizer=SGD(lr=ExponentialLR(0.1, 0.9)))
    with pytest.raises(ValueError, match="already a schedule"):
        scheduled.fit(X, Y, callbacks=[LearningRateScheduler(lambda e: 0.1)], verbose=0)
    with pytest.raises(ValueError, match="use a number as lr"):
        scheduled.fit(X, Y, callbacks=[ReduceLROnPlateau()], verbose=0)


def test_reduce_lr_on_plateau_inside_fit_equals_torch(backend, torch):
    values = [1.0, 0.9, 0.95, 0.97, 0.96, 0.8, 0.85, 0.86, 0.87, 0.88]
    net = _net(backend, optimizer=SGD(lr=0.1))
    h = net.fit(X, Y, epochs=len(values), verbose=0,
                callbacks=[Script(values), ReduceLROnPlateau(factor=0.5, patience=1, monitor="score")])
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    expected = []
    for value in values:
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step(value)
    assert h["lr"] == pytest.approx(expected, rel=1e-15)
    assert min(expected) < 0.1


# -- CSVLogger --------------------------------------------------------------------------------------------------
def _read_csv(path, separator=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=separator))


def test_csv_logger_writes_the_history_exactly(backend, tmp_path):
    path = tmp_path / "log.csv"
    net = _net(backend)
    h = net.fit(X, Y, epochs=3, validation_split=0.2, metrics=["mae"],
                callbacks=[CSVLogger(path, separator=";")], verbose=0)
    rows = _read_csv(path, ";")
    assert rows[0] == ["epoch", "loss", "mae", "val_loss", "val_mae"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    for j, name in enumerate(rows[0][1:], start=1):
        assert [float(r[j]) for r in rows[1:]] == h[name]  # repr round-trips floats exactly
    h2 = net.fit(X, Y, epochs=2, validation_split=0.2, metrics=["mae"],
                 callbacks=[CSVLogger(path, separator=";", append=True)], verbose=0)
    rows = _read_csv(path, ";")
    assert len(rows) == 6 and [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3, 4]
    assert float(rows[-1][1]) == h2["loss"][-1]
    net.fit(X, Y, epochs=1, callbacks=[CSVLogger(path)], verbose=0)  # no append: a fresh file
    rows = _read_csv(path)
    assert rows[0] == ["epoch", "loss"] and len(rows) == 2 and math.isfinite(float(rows[1][1]))
