"""The CuPy backend's review fixes, tested on the CPU with stand-in modules and the emulation:
``"cupy:N"`` puts arrays and kernels on device N, a failing ``import cupy`` or a missing private
TF32 switch becomes BackendUnavailableError, and dropout's counter-based random stream (Philox,
checked against NumPy's Philox) resumes bit for bit from a checkpoint. The same behaviour on
real GPUs is checked by ci/gpu_check.sh (test_cuda_devices.py needs two GPUs)."""

import importlib.abc
import sys
import types

import numpy as np
import pytest
from cuda_emu import cuda, make_module
from cuda_emu.backend import EmulatedCuPy, EmulatedCuPyBackend

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU


@pytest.fixture(scope="module")
def emulated():
    cuda.reset()
    emu = EmulatedCuPy()
    emu.build_all()  # one g++ call for every kernel (cached), not one per kernel first used
    return emu


@pytest.fixture
def fake_cupy(monkeypatch):
    """The emulated ``cupy`` as the importable ``cupy``, two devices, and a stand-in for
    array_api_compat.cupy (which would need the real CuPy)."""
    cuda.reset(devices=2)
    fake = make_module()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy",
                        types.ModuleType("array_api_compat.cupy"))
    yield fake
    cuda.reset()


# -- "cupy:N" --------------------------------------------------------------------------------------
def test_cupy_n_selects_and_enters_device_n(fake_cupy):
    backend = bpgpu.get_backend("cupy:1")
    assert backend.name == "cupy" and backend.device.id == 1
    cuda.log.clear()
    backend.asarray([1.0, 2.0])
    assert cuda.log == [("memcpy_htod", 1)]
    assert bpgpu.get_backend("cupy").device.id == 0


def test_cupy_n_beyond_the_devices_is_unavailable_with_the_count(fake_cupy):
    with pytest.raises(bpgpu.BackendUnavailableError, match="no CUDA device 2: this machine "
                       r"has 2 \(devices 0 to 1\)") as info:
        bpgpu.get_backend("cupy:2")
    assert info.value.backend == "cupy:2"


@pytest.mark.parametrize("name", ["cupy:", "cupy:x", "cupy:-1", "cupy:1.0", "cupy:١"])
def test_malformed_device_numbers_are_rejected(name):
    with pytest.raises(ValueError, match="device number"):
        bpgpu.get_backend(name)


def test_network_on_device_1_runs_every_operation_there(emulated):
    """Building, fit, train_step, predict and the weights API all run with the device current:
    every kernel launch, product and copy of the fast path is logged on device 1."""
    cuda.reset(devices=2)
    try:
        backend = EmulatedCuPyBackend(emulated, device_id=1)
        net = bpgpu.Network([Dense(4, 8), ReLU(), Dense(8, 3)], loss="cross_entropy",
                            optimizer="adam", backend=backend, seed=0)
        X = np.random.default_rng(0).standard_normal((20, 4))
        y = np.arange(20) % 3
        net.fit(X, y, epochs=2, batch_size=8, verbose=0)
        net.train_step(X, y)
        net.set_weights(net.get_weights())
        assert len(cuda.log) > 30
        assert {device for _, device in cuda.log} == {1}
        assert any(name.startswith("bpgpu_xent_ids") for name, _ in cuda.log)
        # The check can fail: the internal step called outside the Network's methods runs on
        # whatever device is current (0 here).
        cuda.log.clear()
        net._train_batch(*net._data(X, y))
        assert {device for _, device in cuda.log} == {0}
    finally:
        cuda.reset()


# -- import and TF32 failures --------------------------------------------------------------------------
class _BrokenCuPyFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "cupy":
            raise OSError("libcuda.so.1: cannot open shared object file")
        return None


def test_any_import_failure_becomes_backend_unavailable(monkeypatch):
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [_BrokenCuPyFinder(), *sys.meta_path])
    with pytest.raises(bpgpu.BackendUnavailableError,
                       match="import cupy failed: OSError: libcuda.so.1") as info:
        bpgpu.get_backend("cupy")
    assert info.value.install and "reinstall CuPy" in info.value.install
    assert "cupy" in bpgpu.backend.backend_status() and \
        "import cupy failed" in bpgpu.backend.backend_status()["cupy"]


@pytest.mark.parametrize("linalg", [None, types.SimpleNamespace()],
                         ids=["module-missing", "attribute-missing"])
def test_tf32_switch_without_the_private_module_is_a_clear_error(fake_cupy, monkeypatch, linalg):
    core = types.ModuleType("cupy._core")
    if linalg is not None:
        core._routines_linalg = linalg
        monkeypatch.setitem(sys.modules, "cupy._core._routines_linalg", linalg)
    monkeypatch.setitem(sys.modules, "cupy._core", core)
    backend = bpgpu.get_backend("cupy")
    with pytest.raises(bpgpu.BackendUnavailableError, match="no TF32 switch.*CUPY_TF32=1"):
        backend.set_tf32(True)


# -- dropout's random stream ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_philox_numbers_are_numpys_philox_stream(emulated, dtype):
    """Element i of draw d is word i % 4 of Philox4x64-10 at counter (i // 4, d, 0, 0): NumPy's
    Philox with counter (0, d, 0, 0) yields the words of counters (1, d), (2, d), ... (it
    increments before generating), i.e. elements 4, 5, ..."""
    rng = emulated.random.PhiloxRNG(np.random.SeedSequence(11))
    rng.draws = 5
    u = rng.uniform((3, 20), dtype).reshape(-1)
    assert u.dtype == np.dtype(dtype) and rng.draws == 6
    words = np.random.Philox(key=np.array(rng.key, np.uint64),
                             counter=np.array([0, 5, 0, 0], np.uint64)).random_raw(56)
    expected = (words >> 11) * 2.0 ** -53 if dtype == "float64" else \
        (words >> 40).astype(np.float32) * np.float32(2.0 ** -24)
    np.testing.assert_array_equal(u[4:], expected)
    assert 0.0 <= u.min() and u.max() < 1.0


def test_philox_state_restores_exactly_and_rejects_bad_states(emulated):
    rng = emulated.random.PhiloxRNG(3)
    rng.uniform((7,), "float32")
    state = rng.get_state()
    first = rng.uniform((9,), "float64")
    rng.set_state(state)
    np.testing.assert_array_equal(rng.uniform((9,), "float64"), first)
    assert emulated.random.PhiloxRNG(3).key == rng.key != emulated.random.PhiloxRNG(4).key
    for bad in [{"kind": "cupy", "seed": 1, "draws": 2}, {**state, "key": [1]},
                {**state, "key": [-1, 2]}, {**state, "draws": -1}, {**state, "draws": True}, 7]:
        before = rng.get_state()
        with pytest.raises(ValueError, match="cupy-philox"):
            rng.set_state(bad)
        assert rng.get_state() == before


def test_dropout_training_resumes_bit_exact_from_a_checkpoint(emulated, tmp_path):
    """Train 2 epochs straight, or 1 epoch, save, load into a fresh process-like network and
    train 1 more: the same dropout masks, so the same weights to the last bit."""
    cuda.reset()
    backend = EmulatedCuPyBackend(emulated)
    X = np.random.default_rng(1).standard_normal((24, 5))
    y = np.arange(24) % 3

    def make():
        return bpgpu.Network([Dense(5, 16), ReLU(), Dropout(0.4), Dense(16, 3)],
                             loss="cross_entropy", optimizer="adam", backend=backend, seed=7)
    straight = make()
    straight.fit(X, y, epochs=2, batch_size=8, verbose=0)
    first = make()
    first.fit(X, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "ckpt.bpgpu"
    first.save(path)
    resumed = bpgpu.load(path, backend=backend)
    assert resumed.device_rng.get_state() == first.device_rng.get_state()
    resumed.fit(X, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    rewound = bpgpu.load(path, backend=backend)  # the same, but the stream started over:
    rewound.device_rng.set_state({**rewound.device_rng.get_state(), "draws": 0})  # the check
    rewound.fit(X, y, epochs=1, batch_size=8, verbose=0)                           # can fail
    assert any(not np.array_equal(a, b) for a, b in zip(straight.get_weights(),
                                                         rewound.get_weights(), strict=True))
