"""Checkpoints hold the full training state: resuming equals never stopping.

* On NumPy, 10 epochs in one go equal 5 epochs, a save, a load in a fresh Python process and 5
  more epochs, bit for bit (weights, optimizer state, history), with shuffling, Adam and a
  schedule stepped per epoch or per batch.
* On every backend, resuming in-process equals never stopping; across backends the state loads
  and training continues as it would have on the original backend.
* Saving is atomic; truncated, foreign, future or inconsistent files are refused.
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop
from bpgpu.schedules import CosineAnnealingLR, ExponentialLR, LinearWarmup, StepLR

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")

RNG = np.random.default_rng(5)
X = RNG.normal(size=(61, 5))
Y = (np.sin(X[:, :1]) + X[:, 1:2] * X[:, 2:3] - 0.5 * X[:, 3:4]).astype(np.float64)
X_VAL = RNG.normal(size=(20, 5))
Y_VAL = np.sin(X_VAL[:, :1]) + X_VAL[:, 1:2] * X_VAL[:, 2:3] - 0.5 * X_VAL[:, 3:4]
FIT = dict(batch_size=7, metrics=["mae", "r2"])


def _net(schedule, backend="numpy", dtype="float32", optimizer=Adam, layers=None):
    if layers is None:
        return bpgpu.Network.from_sizes([5, 12, 8, 1], activation="tanh", optimizer=optimizer(lr=schedule),
                                        backend=backend, dtype=dtype, seed=21)
    return bpgpu.Network(layers, optimizer=optimizer(lr=schedule), backend=backend, dtype=dtype, seed=21)


def _fit(net, epochs, **kwargs):
    return net.fit(X, Y, epochs=epochs, validation_data=(X_VAL, Y_VAL), verbose=0, **FIT, **kwargs)


def _assert_same_state(a, b):
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.history.history == b.history.history and a.history.epoch == b.history.epoch
    assert a.epoch == b.epoch
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert (sa["step_count"], sa["schedule_step"]) == (sb["step_count"], sb["schedule_step"])
    assert sa["state"].keys() == sb["state"].keys()
    for name in sa["state"]:
        for va, vb in zip(sa["state"][name], sb["state"][name], strict=True):
            np.testing.assert_array_equal(a.backend.to_numpy(va), b.backend.to_numpy(vb))
    assert a.shuffle_rng.bit_generator.state == b.shuffle_rng.bit_generator.state


def _assert_resumes_exactly(make, tmp_path, backend=None):
    """Training 4 epochs equals training 2, saving, loading (on ``backend``) and training 2 more."""
    full = make()
    _fit(full, 4)
    half = make()
    _fit(half, 2)
    half.save(tmp_path / "c.npz")
    resumed = bpgpu.load(tmp_path / "c.npz", backend=backend)
    if backend is not None:
        assert resumed.backend.name == backend.name
    _fit(resumed, 2)
    _assert_same_state(resumed, full)


RESUMES = {
    "cosine-per-epoch-float32": (lambda: CosineAnnealingLR(0.01, T_max=10), "float32", {"epochs": 5}),
    "warmup-per-batch-float64": (lambda: LinearWarmup(6, ExponentialLR(0.01, 0.995, per="batch")),
                                 "float64", {"epochs": 5}),
    "keras-initial-epoch": (lambda: StepLR(0.01, 3, 0.5), "float32", {"epochs": 10, "initial_epoch": 5}),
}


@pytest.mark.parametrize("name", list(RESUMES))
def test_resume_in_a_fresh_process_is_bit_exact(tmp_path, name):
    schedule, dtype, resume_kwargs = RESUMES[name]
    full = _net(schedule(), dtype=dtype)
    _fit(full, 10)
    half = _net(schedule(), dtype=dtype)
    _fit(half, 5)
    half.save(tmp_path / "half.npz")
    np.savez(tmp_path / "data.npz", X=X, y=Y, X_val=X_VAL, y_val=Y_VAL)
    result = subprocess.run(
        [sys.executable, WORKER, str(tmp_path / "half.npz"), str(tmp_path / "data.npz"),
         str(tmp_path / "resumed.npz"), json.dumps({**FIT, **resume_kwargs})],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed = bpgpu.load(tmp_path / "resumed.npz", backend="numpy")
    _assert_same_state(resumed, full)
    assert len(resumed.history) == 10 and "val_r2" in resumed.history.history
    assert resumed.history["lr"] == full.history["lr"] and len(set(full.history["lr"])) > 1


@pytest.mark.parametrize("optimizer", [SGD, RMSprop, Adam, AdamW])
def test_every_optimizer_resumes_exactly(tmp_path, optimizer):
    kwargs = {"momentum": 0.9} if optimizer is SGD else {}

    def make():
        return bpgpu.Network.from_sizes([5, 8, 1], optimizer=optimizer(lr=ExponentialLR(0.01, 0.9), **kwargs),
                                        backend="numpy", seed=2)

    _assert_resumes_exactly(make, tmp_path)


def test_dropout_resumes_exactly_on_numpy(tmp_path):
    """The device generator's state is saved too, so dropout masks continue the same stream."""
    def make():
        return _net(0.01, layers=[Dense(5, 16), ReLU(), Dropout(0.3), Dense(16, 1)])

    _assert_resumes_exactly(make, tmp_path)


def test_resume_on_the_same_backend_equals_never_stopping(backend, tmp_path):
    def make():
        return _net(CosineAnnealingLR(0.02, T_max=6, per="batch"), backend=backend, dtype="float64")

    _assert_resumes_exactly(make, tmp_path, backend)


@pytest.mark.parametrize("direction", ["from-numpy", "to-numpy"])
def test_training_continues_across_backends(backend, tmp_path, direction):
    """The state saved on one backend continues on another as it would have on the first
    (float64, so the two runs agree to rounding), and the loss keeps going down."""
    source, target = ("numpy", backend) if direction == "from-numpy" else (backend, "numpy")
    reference = _net(StepLR(0.02, 2, 0.7), backend=source, dtype="float64")
    _fit(reference, 6)
    half = _net(StepLR(0.02, 2, 0.7), backend=source, dtype="float64")
    _fit(half, 3)
    half.save(tmp_path / "c.npz")
    moved = bpgpu.load(tmp_path / "c.npz", backend=target)
    assert moved.epoch == 3 and moved.optimizer.schedule_step == 3
    h = _fit(moved, 3)
    assert h.epoch == [3, 4, 5]
    losses = moved.history["loss"]
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    np.testing.assert_allclose(losses, reference.history["loss"], rtol=1e-9)
    for a, b in zip(moved.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_loaded_state_is_what_was_saved(backend, tmp_path):
    net = _net(LinearWarmup(3, 0.01, per="batch"), backend=backend, dtype="float64",
               layers=[Dense(5, 8), ReLU(), Dropout(0.2), Dense(8, 1)])
    _fit(net, 2)
    net.save(tmp_path / "c.npz")
    loaded = bpgpu.load(tmp_path / "c.npz", backend=backend)
    _assert_same_state(loaded, net)
    assert loaded.optimizer.lr == net.optimizer.lr and loaded.optimizer.schedule_step == 2 * 9
    assert loaded.backend.rng_state(loaded.device_rng) == net.backend.rng_state(net.device_rng)


# -- file handling -----------------------------------------------------------------------------------------------
def _saved(tmp_path, name="c.npz"):
    net = _net(CosineAnnealingLR(0.01, 5))
    _fit(net, 2)
    path = tmp_path / name
    net.save(path)
    return net, path


def _rewrite(path, edit_meta=None, edit_arrays=None):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def test_saving_is_atomic(tmp_path, monkeypatch):
    net, path = _saved(tmp_path)
    before = path.read_bytes()
    _fit(net, 1)

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        net.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]
    assert bpgpu.load(path).epoch == 2

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        net.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["c.npz"]
    net.save(path)
    assert bpgpu.load(path).epoch == 3 and os.listdir(tmp_path) == ["c.npz"]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, fraction):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(bpgpu.ModelFileError, match="not a readable bpgpu model file|truncated"):
        bpgpu.load(path)


def test_foreign_and_future_files_are_refused(tmp_path):
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    with pytest.raises(bpgpu.ModelFileError, match="not a bpgpu model"):
        bpgpu.load(foreign)
    _, path = _saved(tmp_path)
    _rewrite(path, edit_meta=lambda m: m.update(version=99))
    with pytest.raises(bpgpu.ModelFileError, match="format version 99; this bpgpu reads versions up to 2"):
        bpgpu.load(path)


@pytest.mark.parametrize("edit_meta,edit_arrays", [
    (None, lambda a: a.update({"optimizer:exp_avg:0": np.zeros((2, 2))})),
    (None, lambda a: a.pop("optimizer:exp_avg_sq:3")),
    (lambda m: m["training"]["optimizer"].update(step_count=-1), None),
    (lambda m: m["training"]["optimizer"].update(schedule_step="3"), None),
    (lambda m: m["training"].update(shuffle_rng={"bit_generator": "MT19937", "state": {}}), None),
    (lambda m: m["training"].update(history={"history": {"loss": ["x"]}, "epoch": [0]}), None),
    (lambda m: m["training"].pop("history"), None),
], ids=["state-shape", "state-missing", "negative-steps", "steps-type", "rng-kind", "history-values",
        "history-missing"])
def test_inconsistent_training_state_is_refused(tmp_path, edit_meta, edit_arrays):
    _, path = _saved(tmp_path)
    _rewrite(path, edit_meta, edit_arrays)
    with pytest.raises(bpgpu.ModelFileError, match="training state does not fit"):
        bpgpu.load(path)


def test_version_1_files_load_with_a_fresh_training_state(tmp_path):
    net, path = _saved(tmp_path)

    def to_version_1(meta):
        meta["version"] = 1
        del meta["training"]

    _rewrite(path, to_version_1,
             lambda a: [a.pop(k) for k in list(a) if k.startswith("optimizer:")])
    old = bpgpu.load(path)
    for a, b in zip(old.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert old.epoch == 2 and len(old.history) == 0 and old.optimizer.step_count == 0
    _fit(old, 1)  # and trains on
    assert old.epoch == 3


def test_device_state_of_another_kind_is_left_seeded(tmp_path):
    """A device-generator state from another kind of generator (e.g. CuPy's) is not applied:
    the loaded network keeps its generator seeded from the saved seed."""
    net, path = _saved(tmp_path)
    _rewrite(path, lambda m: m["training"].update(device_rng={"kind": "cupy", "seed": 1, "draws": 7}))
    loaded = bpgpu.load(path)
    fresh = bpgpu.Network.from_sizes([5, 12, 8, 1], backend="numpy", seed=21)
    assert loaded.backend.rng_state(loaded.device_rng) == fresh.backend.rng_state(fresh.device_rng)
    assert loaded.optimizer.step_count == net.optimizer.step_count


def test_saved_file_has_the_permissions_of_any_new_file(tmp_path):
    """The temporary file is not made private (as tempfile.mkstemp would): after the rename the
    checkpoint is as readable as a file opened the ordinary way."""
    _, path = _saved(tmp_path)
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
