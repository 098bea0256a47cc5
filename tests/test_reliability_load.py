"""Loading files that may come from an attacker: every refusal is a ModelFileError naming the
file and the problem, raised before large allocations and without decompressing members the
format does not name; what loads is checked (finite, variances >= 0, complete state).

Each hostile file is built here by hand (zipfile + hand-written .npy headers) from a valid
checkpoint, so each test changes exactly one thing."""

import io
import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu import _model_file as model_file
from bpgpu.callbacks import EarlyStopping, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Dense, ReLU
from bpgpu.optimizers import SGD, Adam

RNG = np.random.default_rng(3)
X = RNG.normal(size=(24, 3))
Y = X[:, :1] - X[:, 1:2]


def _network(optimizer=None):
    return bpgpu.Network([Dense(3, 4), BatchNorm(4), ReLU(), Dense(4, 1)],
                         optimizer=optimizer or Adam(lr=0.01), backend="numpy", seed=1)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """The members of a valid checkpoint (trained, so the optimizer state exists), as
    ``{name: array}`` with ``meta`` decoded to a dict."""
    path = tmp_path_factory.mktemp("valid") / "valid.npz"
    net = _network()
    net.fit(X, Y, epochs=2, batch_size=8, verbose=0,
            callbacks=[EarlyStopping(monitor="loss", patience=5, restore_best_weights=True),
                       ReduceLROnPlateau(monitor="loss", patience=0)])
    net.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _raw_npy(header, data=b"", version=1):
    """An .npy member with the header text ``header`` (padded as numpy pads it)."""
    text = header.encode("latin1")
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(text)) + text + data


def _write(path, contents, compress=zipfile.ZIP_STORED):
    """A zip at ``path`` of ``{name: bytes or array or meta dict}`` (names without .npy)."""
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        for name, value in contents.items():
            if isinstance(value, dict):
                value = _npy(np.array(json.dumps(value)))
            elif not isinstance(value, bytes):
                value = _npy(value)
            info = zipfile.ZipInfo(f"{name}.npy")
            info.compress_type = compress
            z.writestr(info, value)
    return path


def _edited(members, tmp_path, edit=None, name="edited.npz", **kwargs):
    contents = {k: (json.loads(json.dumps(v)) if k == "meta" else v) for k, v in members.items()}
    if edit is not None:
        edit(contents)
    return _write(tmp_path / name, contents, **kwargs)


def _refused(path, *fragments, **load_kwargs):
    with pytest.raises(bpgpu.ModelFileError) as info:
        bpgpu.load(path, backend="numpy", **load_kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_the_valid_file_loads(members, tmp_path):
    """The baseline every hostile variant departs from loads, compressed or not."""
    for compress in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        net = bpgpu.load(_edited(members, tmp_path, compress=compress), backend="numpy")
        np.testing.assert_array_equal(net.get_weights()[0], members["param:0"])
        assert net.epoch == 2 and net.optimizer.step_count == 6


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# -- sizes: checked before anything is allocated ---------------------------------------------
def test_a_huge_described_layer_is_refused_before_allocating(members, tmp_path):
    """Metadata of a few bytes describing a Dense of 10^6 x 10^6 (4 TB)."""
    def huge(c):
        c["meta"]["layers"][0]["config"].update(in_features=10**6, out_features=10**6)

    path = _edited(members, tmp_path, huge)
    size = path.stat().st_size
    peak = _peak_bytes(lambda: _refused(path, f"need more than {1032 * size} bytes",
                                        f"more than a file of {size} bytes can hold"))
    assert peak < 2 * 2**20


def test_a_huge_size_in_a_layer_config_is_refused_before_building(members, tmp_path):
    """BatchNorm(5 * 10^8) would allocate 4 GB of vectors on the host while being built, below
    the 4 GiB limit but far beyond what a file of a few KB can hold."""
    def huge(c):
        c["meta"]["layers"][1]["config"]["num_features"] = 5 * 10**8

    path = _edited(members, tmp_path, huge)
    peak = _peak_bytes(lambda: _refused(path, "declares the size 500000000",
                                        f"a file of {path.stat().st_size} bytes"))
    assert peak < 2 * 2**20
    _refused(path, "declares the size 500000000", "above the load limit", max_bytes=10**6)


def test_a_member_declaring_10_to_the_12_elements_is_refused(members, tmp_path):
    def huge(c):
        c["param:0"] = _raw_npy("{'descr': '<f4', 'fortran_order': False, "
                                "'shape': (1000000, 1000000), }\n", b"\0" * 64)

    _refused(_edited(members, tmp_path, huge), "param:0.npy declares 4000000000000 bytes")


def test_the_byte_limit_is_the_callers(members, tmp_path):
    path = _edited(members, tmp_path)
    _refused(path, "more than 100 bytes", max_bytes=100)
    assert bpgpu.load(path, backend="numpy", max_bytes=10**6).epoch == 2
    for bad in (0, -5, 1.5, "1e9", True):
        with pytest.raises(ValueError, match="max_bytes must be an integer >= 1"):
            bpgpu.load(path, backend="numpy", max_bytes=bad)


def test_an_unnamed_member_is_refused_unread(members, tmp_path):
    """A 2 MB deflated member that would inflate to 2 GB is never decompressed."""
    def bomb(c):
        c["junk"] = np.zeros(10**6)  # the same trick at a size the test can afford

    path = _edited(members, tmp_path, bomb, compress=zipfile.ZIP_DEFLATED)
    peak = _peak_bytes(lambda: _refused(path, "member 'junk' is not part of the bpgpu format",
                                        "refused unread"))
    assert peak < 2 * 2**20
    extra = _edited(members, tmp_path, lambda c: c.update({"param:99": np.ones(2)}), "extra.npz")
    _refused(extra, "'param:99' is not described by the network's description")


# -- the zip container ------------------------------------------------------------------------
def _set_flags(path, member, flags):
    """Or ``flags`` into the general-purpose bits of ``member`` in the local header and the
    central directory (zipfile's writer resets them, so they are patched in the bytes)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        local = z.getinfo(member).header_offset
    central = data.index(b"PK\x01\x02")
    while data[central + 46:central + 46 + len(member)] != member.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    for offset in (local + 6, central + 8):
        value = struct.unpack_from("<H", data, offset)[0] | flags
        struct.pack_into("<H", data, offset, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flags, fragment", [(0x1, "zip flags 0x0001"), (0x20, "zip flags 0x0020"),
                                             (0x40, "zip flags 0x0040")],
                         ids=["encrypted", "patched", "strong-encryption"])
def test_zip_flags_are_refused(members, tmp_path, flags, fragment):
    path = _edited(members, tmp_path)
    _set_flags(path, "param:1.npy", flags)
    _refused(path, fragment)


def test_other_compression_methods_are_refused(members, tmp_path):
    path = _edited(members, tmp_path, compress=zipfile.ZIP_BZIP2)
    _refused(path, "compression method 12")


def test_a_corrupt_deflate_stream_is_refused(members, tmp_path):
    path = _edited(members, tmp_path, compress=zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param:0.npy")
    start = info.header_offset + 30 + len(info.filename)
    data[start:start + 6] = b"\xff\xfe\xfd\xfc\xfb\xfa"  # an invalid deflate block header
    path.write_bytes(bytes(data))
    _refused(path, "param:0.npy")


def test_a_duplicate_member_is_refused(members, tmp_path):
    path = _edited(members, tmp_path)
    with zipfile.ZipFile(path, "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr("param:0.npy", _npy(np.zeros((3, 4))))
    _refused(path, "'param:0.npy' appears twice")


# -- .npy headers: parsed by pattern, never evaluated -----------------------------------------
@pytest.mark.parametrize("member, fragment", [
    (_raw_npy("__import__('os').system('touch pwned')\n"), "malformed .npy header"),
    (_raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4\n"), "malformed .npy header"),
    (_raw_npy("{'descr': '<f8', 'fortran_order': 0, 'shape': (3, 4), }\n"), "malformed .npy header"),
    (_raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (-3, 4), }\n"),
     "malformed .npy header"),
    (_raw_npy("{'descr': '<q9', 'fortran_order': False, 'shape': (3, 4), }\n"), "unknown dtype"),
    (_raw_npy("{'descr': '|O', 'fortran_order': False, 'shape': (3, 4), }\n"), "pickled Python objects"),
    (_raw_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (3, 4), }\n"), "neither a float"),
    (_raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }\n", version=9),
     "format version 9"),
    (b"\x93NUMPY\x01\x00\xff\xff" + b" " * 100, "at most 4096 accepted"),
    (b"\x93NUMPY\x01\x00\x40\x00{'descr'", "truncated .npy header"),
    (b"\x93NUMP", "bad magic bytes"),
    (b"\x93NUMPY\x03\x00\x08\x00\x00\x00\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8", "not text"),
    (_raw_npy("{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }\n", b"\0" * 95),
     "declares 96 bytes"),
], ids=["code", "unclosed", "fortran-int", "negative", "bad-dtype", "object", "int", "version",
        "long-header", "short-header", "magic", "utf8", "short-data"])
def test_malformed_npy_members_are_refused(members, tmp_path, member, fragment):
    _refused(_edited(members, tmp_path, lambda c: c.update({"param:0": member})), fragment)


def test_big_endian_and_fortran_members_load_correctly(members, tmp_path):
    weights = members["param:0"]

    def swap(c):
        c["param:0"] = np.asfortranarray(weights.astype(">f4"))

    net = bpgpu.load(_edited(members, tmp_path, swap), backend="numpy")
    np.testing.assert_array_equal(net.get_weights()[0], weights)


# -- the JSON description --------------------------------------------------------------------
def test_deep_json_is_refused(members, tmp_path):
    def deep(depth):
        def edit(c):
            c["meta"] = _npy(np.array('{"format": "bpgpu-network", "version": 2, "x": '
                                      + "[" * depth + "]" * depth + "}"))
        return edit

    _refused(_edited(members, tmp_path, deep(100_000)), "nests deeper than 100 levels")
    _refused(_edited(members, tmp_path, deep(150)), "nests deeper than 100 levels")


def test_a_description_that_is_not_text_is_refused(members, tmp_path):
    _refused(_edited(members, tmp_path, lambda c: c.update(meta=np.ones(3))), "'meta' entry is not text")


def test_an_oversized_description_is_refused(members, tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "MAX_META_BYTES", 1000)
    _refused(_edited(members, tmp_path), "at most 1000 accepted")


@pytest.mark.parametrize("epoch", [-1, 2.5, "3", True, None, 1e300, float("inf"), 2**60])
def test_bad_epoch_counters_are_refused(members, tmp_path, epoch):
    _refused(_edited(members, tmp_path, lambda c: c["meta"].update(epoch=epoch)),
             "bad epoch counter", "whole number")


@pytest.mark.parametrize("version", [True, 0, -1, "2", 2.0, None])
def test_bad_versions_are_refused(members, tmp_path, version):
    _refused(_edited(members, tmp_path, lambda c: c["meta"].update(version=version)),
             f"format version {version!r}")


@pytest.mark.parametrize("spec, fragment", [
    ({"class": "_BlockWrapper", "config": {"block": {"class": "ReLU", "config": {}}}},
     "not a concrete layer class"),
    ({"class": "Layer", "config": {}}, "unknown layer class"),
    ({"class": "Sequential", "config": {"layers": [{"class": "Dense", "config": {
        "in_features": 4, "out_features": 4, "shape": 3}}]}}, "cannot rebuild the network"),
    ({"class": "Dense", "config": {"in_features": 4.5, "out_features": 4}}, "cannot rebuild"),
], ids=["private", "base", "bad-kwarg", "fractional"])
def test_only_concrete_registered_layers_are_rebuilt(members, tmp_path, spec, fragment):
    _refused(_edited(members, tmp_path, lambda c: c["meta"]["layers"].insert(2, spec)), fragment)


def test_a_layer_list_inconsistent_with_the_stored_parameters_is_refused(members, tmp_path):
    def extra_dense(c):
        c["meta"]["layers"].insert(3, {"class": "Dense", "config": {"in_features": 4,
                                                                    "out_features": 4}})

    _refused(_edited(members, tmp_path, extra_dense), "stored arrays do not fit", "expected (4, 4)")

    def dropped_batchnorm(c):
        del c["meta"]["layers"][1]

    _refused(_edited(members, tmp_path, dropped_batchnorm), "is not described")


# -- what is restored ------------------------------------------------------------------------
@pytest.mark.parametrize("member, value, fragment", [
    ("buffer:1:running_var", np.array([1.0, -0.5, 1.0, 1.0], np.float32), "it is a variance"),
    ("buffer:1:running_mean", np.array([0.0, np.nan, 0.0, 0.0], np.float32), "NaN or infinite"),
    ("param:2", np.array([1.0, np.inf, 1.0, 1.0], np.float32), "NaN or infinite"),
    ("optimizer:exp_avg_sq:0", -np.ones((3, 4), np.float32), "it is a variance"),
    ("optimizer:exp_avg:1", np.full(4, np.nan, np.float32), "NaN or infinite"),
    ("callback:0:weights:0", np.full((3, 4), np.inf, np.float32), "NaN or infinite"),
])
def test_restored_values_are_checked(members, tmp_path, member, value, fragment):
    _refused(_edited(members, tmp_path, lambda c: c.update({member: value})), fragment)


def test_float32_overflow_in_a_float64_file_is_refused(members, tmp_path):
    big = np.full((3, 4), 1e39)  # finite as stored, infinite in the network's float32
    _refused(_edited(members, tmp_path, lambda c: c.update({"param:0": big})), "overflow")


def test_incomplete_optimizer_state_is_refused(members, tmp_path):
    def only_first_moment(c):
        c["meta"]["training"]["optimizer"]["state"] = ["exp_avg"]
        for key in [k for k in c if k.startswith("optimizer:exp_avg_sq")]:
            del c[key]

    _refused(_edited(members, tmp_path, only_first_moment), "Adam keeps ['exp_avg', 'exp_avg_sq']")

    def foreign_name(c):
        c["meta"]["training"]["optimizer"]["state"].append("momentum_buffer")
        c.update({f"optimizer:momentum_buffer:{i}": members[f"optimizer:exp_avg:{i}"]
                  for i in range(6)})

    _refused(_edited(members, tmp_path, foreign_name), "optimizer state holds")
    repeated = _edited(members, tmp_path, lambda c: c["meta"]["training"]["optimizer"]["state"]
                       .append("exp_avg"))
    _refused(repeated, "list of distinct strings")


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t["shuffle_rng"]["state"].update(state="x"), "shuffling generator's state is invalid"),
    (lambda t: t["device_rng"]["state"]["state"].update(state=-1), "device generator's state"),
    (lambda t: t["optimizer"].update(step_count=1.5), "step_count must be a whole number"),
    (lambda t: t["optimizer"].update(schedule_step=2**70), "schedule_step must be a whole number"),
], ids=["shuffle-state", "device-state", "fractional-steps", "huge-steps"])
def test_bad_training_counters_and_generators_are_refused(members, tmp_path, edit, fragment):
    _refused(_edited(members, tmp_path, lambda c: edit(c["meta"]["training"])), fragment)


@pytest.mark.parametrize("callbacks, fragment", [
    ([{"class": "EarlyStopping", "state": {"wait": -1, "best": 1.0, "best_epoch": 0,
                                           "stopped_epoch": None}, "weights": False}],
     "wait must be an integer >= 0"),
    ([{"class": "ReduceLROnPlateau", "state": {"best": "low"}, "weights": False}],
     "expected a dict with the keys"),
    ([{"class": "os.system", "state": {}, "weights": False}], "unknown callback class"),
    ({"class": "EarlyStopping"}, "callback state must be a list"),
], ids=["negative-wait", "wrong-keys", "unknown-class", "not-a-list"])
def test_bad_callback_states_are_refused(members, tmp_path, callbacks, fragment):
    def edit(c):
        c["meta"]["callbacks"] = callbacks
        for key in [k for k in c if k.startswith("callback:")]:
            del c[key]

    _refused(_edited(members, tmp_path, edit), fragment)


def test_sgd_without_momentum_has_no_state_to_check(tmp_path):
    """An optimizer that keeps no arrays loads with an empty state after many steps."""
    net = _network(SGD(lr=0.01))
    net.fit(X, Y, epochs=1, batch_size=8, verbose=0)
    net.save(tmp_path / "sgd.npz")
    loaded = bpgpu.load(tmp_path / "sgd.npz", backend="numpy")
    assert loaded.optimizer.step_count == 3 and loaded.optimizer.state == {}


def test_crc_is_checked(members, tmp_path):
    """A flipped data byte behind an intact header is caught by the zip CRC."""
    path = _edited(members, tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("param:0.npy")
    offset = info.header_offset + 30 + len(info.filename) + info.file_size - 3
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    _refused(path, "Bad CRC-32")


def test_a_bad_backend_argument_is_not_blamed_on_the_file(members, tmp_path):
    with pytest.raises(ValueError) as info:
        bpgpu.load(_edited(members, tmp_path), backend="no-such-backend")
    assert not isinstance(info.value, bpgpu.ModelFileError)


def _every_layer_kind():
    """Networks that together use every built-in layer class."""
    from bpgpu.layers import (
        GELU,
        AvgPool2D,
        Checkpoint,
        Conv2D,
        Dropout,
        Flatten,
        Identity,
        LayerNorm,
        LeakyReLU,
        MaxPool2D,
        Reshape,
        Residual,
        Sequential,
        Sigmoid,
        SiLU,
        Softmax,
        Tanh,
    )

    images = [Conv2D(1, 3, 3, padding=1), BatchNorm(3), GELU(), MaxPool2D(2), Conv2D(3, 4, 2),
              AvgPool2D(2, stride=1), Flatten(), Dense(4, 6), LayerNorm(6),
              Residual(Sequential([Dense(6, 6), SiLU()])), Checkpoint(Sequential([Dense(6, 6),
                                                                                  LeakyReLU(0.2)])),
              Dropout(0.1), Reshape((2, 3)), Flatten(), Identity(), Tanh(), Dense(6, 3), Softmax(),
              Sigmoid()]
    return [(images, (1, 6, 6)), ([Dense(3, 4), ReLU(), Dense(4, 1)], None)]


def test_the_shape_probe_equals_a_real_build():
    """The probe (shapes without allocation) is a fast twin of building the layers: same
    parameter and buffer shapes, for every built-in layer class."""
    for layers, input_shape in _every_layer_kind():
        net = bpgpu.Network(layers, backend="numpy", seed=0, input_shape=input_shape)
        specs = json.loads(json.dumps([bpgpu.layers.serialize_layer(layer) for layer in net.layers]))
        probe = model_file.Architecture(specs, 4, model_file.Budget(10**9, "(test)"))
        assert probe.params == [w.shape for w in net.get_weights()]
        assert list(probe.buffers.values()) == [tuple(v.shape) for layer in net.structure.all_layers
                                                for v in layer.buffers.values()]
        assert probe.nonnegative == {f"buffer:{j}:running_var" for j, layer
                                     in enumerate(net.structure.all_layers)
                                     if isinstance(layer, BatchNorm)}


def test_every_built_in_layer_round_trips(tmp_path):
    x = np.random.default_rng(0).normal(size=(2, 1, 6, 6))
    layers, input_shape = _every_layer_kind()[0]
    net = bpgpu.Network(layers, backend="numpy", seed=0, input_shape=input_shape)
    net.save(tmp_path / "all.npz")
    np.testing.assert_array_equal(bpgpu.load(tmp_path / "all.npz", backend="numpy").predict(x),
                                  net.predict(x))


def test_a_huge_shape_in_a_layer_config_is_refused_before_building(tmp_path):
    """LayerNorm([50000, 50000]) would build np.ones of 20 GB: each number is small, their
    product is not."""
    from bpgpu.layers import LayerNorm

    bpgpu.Network([Dense(3, 4), LayerNorm(4)], backend="numpy", seed=0).save(tmp_path / "n.npz")
    with np.load(tmp_path / "n.npz") as data:
        contents = {key: data[key] for key in data.files}
    contents["meta"] = json.loads(str(contents["meta"]))
    contents["meta"]["layers"][1]["config"]["normalized_shape"] = [50_000, 50_000]
    path = _write(tmp_path / "huge-shape.npz", contents)
    peak = _peak_bytes(lambda: _refused(path, "declares the size [50000, 50000]"))
    assert peak < 2 * 2**20
