"""Seeded fuzzing of checkpoint files: random byte flips, truncations, insertions and
overwrites of a valid checkpoint (stored and deflated). Each damaged file must either be
refused with a ModelFileError naming it, or load into exactly the saved network (a flip in a
part nothing reads, such as a timestamp). Fixed seeds and a fixed number of cases keep the run
reproducible and its time bounded."""

import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu.callbacks import EarlyStopping, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Dense, Dropout, Tanh
from bpgpu.optimizers import Adam

from reliability_helpers import assert_same_state, network_state

CASES = 600


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 4))
    net = bpgpu.Network([Dense(4, 6), BatchNorm(6), Tanh(), Dropout(0.1), Dense(6, 2)],
                        optimizer=Adam(lr=0.01), backend="numpy", seed=5)
    net.fit(X, X[:, :2] ** 2, epochs=2, batch_size=8, verbose=0,
            callbacks=[EarlyStopping(monitor="loss", restore_best_weights=True),
                       ReduceLROnPlateau(monitor="loss")])
    stored = folder / "stored.npz"
    net.save(stored)
    deflated = folder / "deflated.npz"
    with zipfile.ZipFile(stored) as source, \
            zipfile.ZipFile(deflated, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    return {"stored": stored.read_bytes(), "deflated": deflated.read_bytes(),
            "state": network_state(bpgpu.load(stored, backend="numpy"))}


def _damage(data, rng):
    """One random kind of damage to ``data`` (bytes)."""
    data = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:  # flip a few bits
        for position in rng.integers(0, len(data), rng.integers(1, 9)):
            data[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncate
        del data[int(rng.integers(0, len(data))):]
    elif kind == 2:  # insert random bytes
        position = int(rng.integers(0, len(data)))
        data[position:position] = rng.bytes(int(rng.integers(1, 64)))
    elif kind == 3:  # delete a range
        start = int(rng.integers(0, len(data)))
        del data[start:start + int(rng.integers(1, 64))]
    else:  # overwrite a range with random bytes or with 0xff (large sizes, counts)
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, 16))
        data[start:start + length] = rng.bytes(length) if rng.integers(0, 2) else b"\xff" * length
    return bytes(data)


@pytest.mark.parametrize("variant", ["stored", "deflated"])
def test_damaged_checkpoints_are_refused_or_load_exactly(saved, tmp_path, variant):
    rng = np.random.default_rng(1234 if variant == "stored" else 5678)
    outcomes = {"refused": 0, "loaded": 0}
    path = tmp_path / "damaged.npz"
    for _ in range(CASES):
        path.write_bytes(_damage(saved[variant], rng))
        try:
            net = bpgpu.load(path, backend="numpy")
        except bpgpu.ModelFileError as error:
            assert str(path) in str(error)
            outcomes["refused"] += 1
            continue
        assert_same_state(network_state(net), saved["state"])
        outcomes["loaded"] += 1
    assert outcomes["refused"] > CASES // 2  # the damage does reach what the loader reads
