"""save/load: round trips on and across backends, and refusal of everything that is not a bpgpu
model file, without ever unpickling."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Layer, Tanh
from bpgpu.losses import BinaryCrossEntropy
from bpgpu.optimizers import SGD, Adam

RNG = np.random.default_rng(0)
X = RNG.standard_normal((10, 3))
Y = RNG.integers(0, 2, (10, 1)).astype(float)


class Shift(Layer):
    """y = x + offset; ``offset`` is a buffer (saved, not learned). Shapes: (N, F) -> (N, F)."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def init_params(self, rng):
        self.add_buffer("offset", rng.standard_normal(self.features))

    def forward(self, x, training=False):
        return x + self.buffers["offset"]

    def backward(self, dy):
        return dy

    def get_config(self):
        return {"features": self.features}


def _net(backend, dtype="float64", optimizer=None):
    layers = [Dense(3, 4), Shift(4), Tanh(), Dense(4, 1)]
    return bpgpu.Network(layers, loss=BinaryCrossEntropy(from_logits=True),
                         optimizer=optimizer or Adam(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
                         backend=backend, dtype=dtype, seed=4)


def _trained(backend, dtype="float64"):
    net = _net(backend, dtype)
    net.fit(X, Y, epochs=2, batch_size=4, verbose=0)
    net.layers[1].buffers["offset"] = net.backend.asarray(RNG.standard_normal(4), dtype=net.dtype)
    return net


def _assert_same_network(a, b, exact=True):
    assert [type(layer) for layer in a.layers] == [type(layer) for layer in b.layers]
    assert [layer.get_config() for layer in a.layers] == [layer.get_config() for layer in b.layers]
    assert type(a.loss) is type(b.loss) and a.loss.get_config() == b.loss.get_config()
    assert type(a.optimizer) is type(b.optimizer)
    assert a.optimizer.get_config() == b.optimizer.get_config()
    assert a.dtype_name == b.dtype_name and a.seed == b.seed and a.epoch == b.epoch
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(a.backend.to_numpy(a.layers[1].buffers["offset"]),
                                  b.backend.to_numpy(b.layers[1].buffers["offset"]))
    pa, pb = a.predict(X), b.predict(X)
    if exact:
        np.testing.assert_array_equal(pa, pb)
    else:  # different libraries may round matrix products differently
        np.testing.assert_allclose(pa, pb, rtol=1e-5 if a.dtype_name == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_on_each_backend(backend, tmp_path, dtype):
    net = _trained(backend, dtype)
    path = tmp_path / "model.npz"
    net.save(path)
    loaded = bpgpu.load(path, backend=backend)
    assert loaded.backend.name == backend.name
    _assert_same_network(net, loaded)
    assert loaded.epoch == 2
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary file left behind


def test_saved_on_numpy_loads_on_each_backend(backend, tmp_path):
    net = _trained("numpy")
    net.save(tmp_path / "m.npz")
    _assert_same_network(net, bpgpu.load(tmp_path / "m.npz", backend=backend), exact=False)


def test_saved_on_each_backend_loads_on_numpy(backend, tmp_path):
    net = _trained(backend)
    net.save(str(tmp_path / "m.npz"))
    loaded = bpgpu.load(str(tmp_path / "m.npz"), backend="numpy")
    assert loaded.backend.name == "numpy"
    _assert_same_network(net, loaded, exact=False)


def test_loaded_network_keeps_training(tmp_path):
    net = _net("numpy", optimizer=SGD(lr=0.1, momentum=0.5, nesterov=True))
    net.save(tmp_path / "m.npz")
    loaded = bpgpu.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.optimizer.nesterov is True and loaded.optimizer.momentum == 0.5
    assert net.train_step(X, Y) == loaded.train_step(X, Y)
    for a, b in zip(net.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_save_overwrites(tmp_path):
    path = tmp_path / "m.npz"
    _net("numpy").save(path)
    net = _trained("numpy")
    net.save(path)
    _assert_same_network(net, bpgpu.load(path, backend="numpy"))


# -- refusals -------------------------------------------------------------------------------------------
class _Trap:
    """Unpickling this creates the directory ``marker``: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_the_trap_is_armed(tmp_path):
    marker = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


def _valid_arrays(tmp_path):
    _net("numpy").save(tmp_path / "valid.npz")
    with np.load(tmp_path / "valid.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _refused(path, *patterns):
    with pytest.raises(bpgpu.ModelFileError) as info:
        bpgpu.load(path, backend="numpy")
    for pattern in patterns:
        assert pattern in str(info.value), str(info.value)
    assert str(path) in str(info.value)
    return info.value


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    marker = tmp_path / "ran"
    arrays = _valid_arrays(tmp_path)
    arrays["param:0"] = np.array([_Trap(marker)], dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, allow_pickle=True, **arrays)
    _refused(path, "pickled Python objects")
    assert not marker.exists()


def test_pickled_meta_is_refused(tmp_path):
    marker = tmp_path / "ran"
    arrays = _valid_arrays(tmp_path)
    arrays["meta"] = np.array(_Trap(marker), dtype=object)
    path = tmp_path / "evil_meta.npz"
    np.savez(path, allow_pickle=True, **arrays)
    _refused(path, "pickle")
    assert not marker.exists()


def test_plain_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": _Trap(marker)}))
    _refused(path, "is a Python pickle", "never loads pickles")
    assert not marker.exists()


def test_garbage_is_refused(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(np.random.default_rng(0).bytes(2000))
    _refused(path, "not a readable bpgpu model file")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _refused(empty, "not a readable bpgpu model file")
    text = tmp_path / "text.npz"
    text.write_text("W = [[1, 2], [3, 4]]")
    _refused(text, "not an .npz archive")


def test_truncated_file_is_refused(tmp_path):
    _net("numpy").save(tmp_path / "m.npz")
    data = (tmp_path / "m.npz").read_bytes()
    for keep in (len(data) // 2, len(data) - 30, 100):
        cut = tmp_path / f"cut{keep}.npz"
        cut.write_bytes(data[:keep])
        _refused(cut, "not a readable bpgpu model file")


def test_corrupted_member_is_refused(tmp_path):
    """A zip whose member's bytes were damaged (bad CRC) must not load half a network."""
    _net("numpy").save(tmp_path / "m.npz")
    data = bytearray((tmp_path / "m.npz").read_bytes())
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        info = z.getinfo("param:0.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data[start:start + 8] = b"\xff" * 8
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    _refused(tmp_path / "bad.npz")


def test_npz_without_meta_is_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, W=np.ones((2, 2)))
    _refused(path, "no 'meta' entry")


def test_single_npy_is_refused(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, np.ones(3))
    _refused(path, "single array")


def _with_meta(tmp_path, edit, name="edited.npz"):
    arrays = _valid_arrays(tmp_path)
    meta = json.loads(str(arrays["meta"]))
    edited = edit(meta)
    arrays["meta"] = np.array(edited if isinstance(edited, str) else json.dumps(meta))
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_unknown_layer_class_in_meta_is_refused(tmp_path):
    def edit(meta):
        meta["layers"][1] = {"class": "os.system", "config": {"command": "touch pwned"}}

    _refused(_with_meta(tmp_path, edit), "unknown layer class 'os.system'")
    assert not os.path.exists("pwned")


@pytest.mark.parametrize("edit, message", [
    (lambda m: "{not json", "not valid JSON"),
    (lambda m: m.update(format="something-else"), "format tag missing"),
    (lambda m: m.update(version=99), "format version 99"),
    (lambda m: m.pop("layers"), "cannot rebuild the network"),
    (lambda m: m.update(loss={"class": "Hinge"}), "cannot rebuild the network"),
    (lambda m: m.update(optimizer={"class": "Lion", "config": {}}), "cannot rebuild the network"),
    (lambda m: m.update(dtype="float16"), "cannot rebuild the network"),
    (lambda m: m["layers"][0]["config"].update(in_features=-3), "cannot rebuild the network"),
])
def test_bad_meta_is_refused(tmp_path, edit, message):
    _refused(_with_meta(tmp_path, edit), message)


def test_arrays_that_do_not_fit_are_refused(tmp_path):
    arrays = _valid_arrays(tmp_path)
    del arrays["param:3"]
    np.savez(tmp_path / "missing.npz", **arrays)
    _refused(tmp_path / "missing.npz", "stored arrays do not fit")
    arrays = _valid_arrays(tmp_path)
    arrays["param:0"] = np.ones((4, 3))
    np.savez(tmp_path / "shape.npz", **arrays)
    _refused(tmp_path / "shape.npz", "stored arrays do not fit", "expected (3, 4)")
    arrays = _valid_arrays(tmp_path)
    arrays["buffer:1:offset"] = np.ones(7)
    np.savez(tmp_path / "buffer.npz", **arrays)
    _refused(tmp_path / "buffer.npz", "stored arrays do not fit")
    arrays = _valid_arrays(tmp_path)
    arrays["param:1"] = np.full(4, np.nan)
    np.savez(tmp_path / "nan.npz", **arrays)
    _refused(tmp_path / "nan.npz", "NaN")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such model file"):
        bpgpu.load("/nonexistent/model.npz")


def test_fresh_seed_survives_the_round_trip(tmp_path):
    net = bpgpu.Network([Dense(3, 2)], backend="numpy")  # seed=None: a fresh 128-bit seed
    net.save(tmp_path / "m.npz")
    loaded = bpgpu.load(tmp_path / "m.npz", backend="numpy")
    assert loaded.seed == net.seed
    twin = bpgpu.Network([Dense(3, 2)], backend="numpy", seed=loaded.seed)
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
