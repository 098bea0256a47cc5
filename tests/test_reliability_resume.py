"""Exact resume with callbacks: a checkpoint holds the callbacks' own memory (EarlyStopping's
best value, patience count and best weights, ReduceLROnPlateau's counters, ModelCheckpoint's
best), so 5 epochs + save + load + 5 epochs equal 10 epochs straight, bit for bit."""

import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu.callbacks import Callback, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Dense, Dropout, Tanh
from bpgpu.optimizers import Adam

RNG = np.random.default_rng(8)
X = RNG.normal(size=(50, 4))
Y = np.sin(X[:, :1]) - X[:, 1:2] * X[:, 3:4]
X_VAL = RNG.normal(size=(15, 4))
Y_VAL = np.sin(X_VAL[:, :1]) - X_VAL[:, 1:2] * X_VAL[:, 3:4]


def _net():
    layers = [Dense(4, 16), BatchNorm(16), Tanh(), Dropout(0.1), Dense(16, 1)]
    return bpgpu.Network(layers, optimizer=Adam(lr=0.05), backend="numpy", seed=3)


def _callbacks(folder, restore_best_weights=False, every_epoch=False):
    """Settings chosen so that each callback acts within 10 epochs: the learning rate is cut,
    the best checkpoint moves, the patience count runs. With ``every_epoch``, a last
    ModelCheckpoint writes ``ckpt-<epoch>.npz`` after every epoch (the others' states are then
    up to date in it)."""
    callbacks = [ModelCheckpoint(str(folder / "best.npz"), monitor="val_loss", save_best_only=True),
                 ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=0, cooldown=1,
                                   threshold=0.05),
                 EarlyStopping(monitor="val_loss", patience=6, min_delta=0.02,
                               restore_best_weights=restore_best_weights)]
    if every_epoch:
        callbacks.append(ModelCheckpoint(str(folder / "ckpt-{epoch}.npz")))
    return callbacks


def _fit(net, epochs, callbacks):
    return net.fit(X, Y, epochs=epochs, batch_size=8, validation_data=(X_VAL, Y_VAL),
                   callbacks=callbacks, verbose=0)


def _summary(net, callbacks):
    return {"weights": net.get_weights(), "history": net.history.to_dict(), "epoch": net.epoch,
            "lr": net.optimizer.lr, "step": net.optimizer.step_count,
            "states": [c.state_dict() for c in callbacks]}


def _folders(tmp_path):
    made = tmp_path / "straight", tmp_path / "split"
    for folder in made:
        folder.mkdir()
    return made


def _assert_same_best_checkpoints(straight_dir, split_dir):
    for a, b in zip(bpgpu.load(straight_dir / "best.npz").get_weights(),
                    bpgpu.load(split_dir / "best.npz").get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_five_plus_five_equals_ten_with_callbacks(tmp_path):
    straight_dir, split_dir = _folders(tmp_path)
    straight, straight_callbacks = _net(), _callbacks(straight_dir)
    _fit(straight, 10, straight_callbacks)

    first = _net()
    _fit(first, 5, _callbacks(split_dir))
    first.save(split_dir / "resume.npz")
    resumed, resumed_callbacks = bpgpu.load(split_dir / "resume.npz"), _callbacks(split_dir)
    _fit(resumed, 5, resumed_callbacks)

    np.testing.assert_equal(_summary(resumed, resumed_callbacks),
                            _summary(straight, straight_callbacks))
    # the callbacks did act: the rate was cut, the patience count ran, the best file moved
    assert straight.optimizer.lr < 0.05 and straight_callbacks[2].wait > 0
    assert straight_callbacks[0].best == min(straight.history["val_loss"])
    _assert_same_best_checkpoints(straight_dir, split_dir)


def test_resuming_from_a_checkpoint_written_during_fit_equals_never_stopping(tmp_path):
    """The crash case: restart from the file ModelCheckpoint wrote after epoch 5, with
    EarlyStopping holding the best weights (saved in the checkpoint too)."""
    straight_dir, split_dir = _folders(tmp_path)
    straight = _net()
    straight_callbacks = _callbacks(straight_dir, restore_best_weights=True, every_epoch=True)
    _fit(straight, 10, straight_callbacks)
    crashed_at = bpgpu.load(straight_dir / "ckpt-5.npz")
    best_until_5 = _callbacks(split_dir, restore_best_weights=True, every_epoch=True)
    _fit(crashed_at, 5, best_until_5)
    np.testing.assert_equal(_summary(crashed_at, best_until_5),
                            _summary(straight, straight_callbacks))
    # restore_best_weights put back an epoch's weights that the checkpoint carried
    assert straight_callbacks[2].best_epoch < 9


def test_without_the_saved_state_the_resume_would_differ(tmp_path):
    """The oracle above can fail: fresh callbacks after the load (the state dropped) give
    another run than the straight one."""
    straight, callbacks = _net(), _callbacks(tmp_path)
    _fit(straight, 10, callbacks)
    first = _net()
    _fit(first, 5, _callbacks(tmp_path))
    first.save(tmp_path / "resume.npz")
    resumed = bpgpu.load(tmp_path / "resume.npz")
    resumed._restored_callbacks = None
    _fit(resumed, 5, _callbacks(tmp_path))
    assert resumed.optimizer.lr != straight.optimizer.lr or any(
        not np.array_equal(a, b) for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True))


def test_different_callbacks_after_a_load_warn_and_start_fresh(tmp_path):
    net = _net()
    _fit(net, 2, [EarlyStopping(patience=3)])
    net.save(tmp_path / "c.npz")
    loaded = bpgpu.load(tmp_path / "c.npz")
    plateau = ReduceLROnPlateau(patience=3)
    with pytest.warns(RuntimeWarning, match=r"0: EarlyStopping"):
        _fit(loaded, 1, [plateau])
    assert plateau.num_bad_epochs in (0, 1) and loaded.epoch == 3
    quiet = bpgpu.load(tmp_path / "c.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no callbacks at all: the saved states are not wanted
        _fit(quiet, 1, None)


def test_a_loaded_network_saved_again_keeps_the_callback_state(tmp_path):
    net = _net()
    callbacks = [EarlyStopping(patience=9, restore_best_weights=True)]
    _fit(net, 3, callbacks)
    net.save(tmp_path / "a.npz")
    bpgpu.load(tmp_path / "a.npz").save(tmp_path / "b.npz")
    again = [EarlyStopping(patience=9, restore_best_weights=True)]
    _fit(bpgpu.load(tmp_path / "b.npz"), 1, again)
    kept = [EarlyStopping(patience=9, restore_best_weights=True)]
    _fit(bpgpu.load(tmp_path / "a.npz"), 1, kept)
    assert again[0].state_dict() == kept[0].state_dict()
    assert again[0].state_dict()["best_epoch"] is not None


class Counter(Callback):
    """A user callback with memory: counts the epochs it has seen."""

    def __init__(self):
        self.seen = 0

    def on_epoch_end(self, epoch, logs=None):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state, weights=None):
        self.seen = state["seen"]


def test_a_user_callback_with_state_resumes(tmp_path):
    net, counter = _net(), Counter()
    _fit(net, 3, [counter])
    net.save(tmp_path / "c.npz")
    resumed = Counter()
    _fit(bpgpu.load(tmp_path / "c.npz"), 2, [resumed])
    assert resumed.seen == 5
