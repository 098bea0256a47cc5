"""Seeded fuzzing of checkpoint files: random byte flips, truncations, insertions and
overwrites of a valid checkpoint (stored and deflated). Each damaged file must either be
refused with a ModelFileError naming it, or load into exactly the saved network (a flip in a
part nothing reads, such as a timestamp). Fixed seeds and a fixed number of cases keep the run
reproducible and its time bounded."""

import zipfile

import numpy as np
import pytest
from reliability_helpers import assert_same_state, network_state

import bpgpu
from bpgpu.callbacks import EarlyStopping, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Dense, Dropout, Tanh
from bpgpu.optimizers import Adam

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


HOSTILE_JSON = [None, True, -1, 0, 2.5, 1e300, 2**70, "x", "", [], {}, [[[]]], {"class": "Dense"},
                {"class": "_BlockWrapper", "config": {}}, [1, 2, 3], {"state": None}]


def _paths(value, prefix=()):
    """Every path (tuple of keys and indices) into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, prefix + (index,))


def test_type_confused_descriptions_are_refused_or_load(saved, tmp_path):
    """The JSON description with one value anywhere replaced by a value of another type or
    range: only ModelFileError may escape (a replacement the format tolerates, such as another
    history value, loads)."""
    import io
    import json

    with zipfile.ZipFile(io.BytesIO(saved["stored"])) as z:
        members = {info.filename: z.read(info) for info in z.infolist()}
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    paths = [p for p in _paths(meta) if p]
    rng = np.random.default_rng(99)
    path = tmp_path / "confused.npz"
    refused = 0
    for _ in range(CASES // 2):
        edited = json.loads(json.dumps(meta))
        *parents, last = paths[int(rng.integers(0, len(paths)))]
        target = edited
        for key in parents:
            target = target[key]
        target[last] = HOSTILE_JSON[int(rng.integers(0, len(HOSTILE_JSON)))]
        buffer = io.BytesIO()
        np.save(buffer, np.array(json.dumps(edited)))
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, buffer.getvalue() if name == "meta.npy" else data)
        try:
            bpgpu.load(path, backend="numpy")
        except bpgpu.ModelFileError as error:
            assert str(path) in str(error)
            refused += 1
    assert refused > CASES // 4
