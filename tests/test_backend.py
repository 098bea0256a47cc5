"""Backends: selection by name, errors for unusable ones, "auto", the environment default, and the
host <-> device transfers every other module relies on."""

import sys
import types

import numpy as np
import pytest

import bpgpu
from bpgpu.backend import BACKEND_NAMES, backend_status
from bpgpu.layers import Dense


def _fake_cupy(get_device_count):
    """A stand-in ``cupy`` module whose CUDA runtime answers with ``get_device_count``."""
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail, as on a machine without CuPy (whatever this machine has)."""
    monkeypatch.setitem(sys.modules, "cupy", None)


# -- names ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["numpy", "array_api_strict", "torch", "torch:cpu"])
def test_get_backend_by_name(name):
    if name.startswith("torch"):
        pytest.importorskip("torch", reason="PyTorch is not installed")
    backend = bpgpu.get_backend(name)
    assert backend.name == name.partition(":")[0]
    assert backend.reason == "requested explicitly"
    if name == "torch:cpu":
        assert backend.device.type == "cpu"


def test_get_backend_passes_instances_through():
    backend = bpgpu.get_backend("numpy")
    assert bpgpu.get_backend(backend) is backend


@pytest.mark.parametrize("name", ["nympy", "gpu", "", "NUMPY", 3])
def test_unknown_backend_name_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match="unknown backend") as info:
        bpgpu.get_backend(name)
    for valid in ("auto", "numpy", "cupy", "torch", "array_api_strict"):
        assert valid in str(info.value)


def test_explicit_cupy_without_cupy_names_backend_reason_and_install(no_cupy):
    with pytest.raises(bpgpu.BackendUnavailableError) as info:
        bpgpu.get_backend("cupy")
    err = info.value
    assert err.backend == "cupy"
    assert "not installed" in err.reason
    assert "bpgpu[cuda12]" in err.install and "pip install" in err.install
    message = str(err)
    assert "'cupy'" in message and "not installed" in message and "pip install" in message
    assert isinstance(err, RuntimeError)


def test_explicit_cupy_on_this_cpu_machine_raises():
    if "cupy" in bpgpu.available_backends():
        pytest.skip("a CUDA device answers here: CuPy is usable, nothing to refuse")
    with pytest.raises(bpgpu.BackendUnavailableError, match="cupy"):
        bpgpu.get_backend("cupy")


def test_cupy_driver_error_and_missing_device_are_reported(monkeypatch):
    def broken():
        raise RuntimeError("cudaErrorInsufficientDriver")

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(broken))
    with pytest.raises(bpgpu.BackendUnavailableError, match="driver error") as info:
        bpgpu.get_backend("cupy")
    assert "cudaErrorInsufficientDriver" in info.value.reason and info.value.install

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(lambda: 0))
    with pytest.raises(bpgpu.BackendUnavailableError, match="no CUDA device") as info:
        bpgpu.get_backend("cupy")
    assert info.value.backend == "cupy"


def test_auto_without_cupy_is_numpy_and_says_why(no_cupy):
    backend = bpgpu.get_backend("auto")
    assert backend.name == "numpy"
    assert backend.reason.startswith("auto")
    assert "CuPy" in backend.reason and "not installed" in backend.reason


def test_auto_without_a_cuda_device_is_numpy_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(lambda: 0))
    backend = bpgpu.get_backend("auto")
    assert backend.name == "numpy"
    assert "no CUDA device" in backend.reason


def test_auto_on_this_machine_never_raises():
    backend = bpgpu.get_backend("auto")
    expected = "cupy" if "cupy" in bpgpu.available_backends() else "numpy"
    assert backend.name == expected
    assert backend.reason.startswith("auto")


def test_environment_variable_sets_the_default(monkeypatch):
    monkeypatch.setenv("BPGPU_BACKEND", "array_api_strict")
    assert bpgpu.get_backend().name == "array_api_strict"
    net = bpgpu.Network([Dense(2, 1)], seed=0)
    assert net.backend.name == "array_api_strict"
    # An explicit argument wins over the variable.
    assert bpgpu.Network([Dense(2, 1)], backend="numpy", seed=0).backend.name == "numpy"
    monkeypatch.setenv("BPGPU_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="unknown backend 'no_such_backend'"):
        bpgpu.get_backend()


def test_environment_variable_unset_means_auto(monkeypatch, no_cupy):
    monkeypatch.delenv("BPGPU_BACKEND", raising=False)
    backend = bpgpu.get_backend()
    assert backend.name == "numpy" and backend.reason.startswith("auto")


def test_available_backends_matches_what_can_be_built():
    names = bpgpu.available_backends()
    assert "numpy" in names and "array_api_strict" in names
    status = backend_status()
    assert set(status) == {"numpy", "array_api_strict", "torch", "cupy"}
    for name, reason in status.items():
        assert (reason is None) == (name in names)
        if reason is not None:
            assert isinstance(reason, str) and reason
    try:
        import torch  # noqa: F401
        assert "torch" in names
    except ImportError:
        assert "torch" not in names
    assert set(names) <= set(BACKEND_NAMES)


def test_available_backends_without_cupy(no_cupy):
    assert "cupy" not in bpgpu.available_backends()
    assert "not installed" in backend_status()["cupy"]


def test_network_shows_backend_name_and_reason(no_cupy):
    net = bpgpu.Network([Dense(2, 1)], backend="auto", seed=0)
    assert net.backend.name == "numpy"
    assert "CuPy" in net.backend.reason
    assert "numpy" in repr(net)
    assert net.backend.reason in net.summary()
    explicit = bpgpu.Network([Dense(2, 1)], backend="array_api_strict", seed=0)
    assert explicit.backend.name == "array_api_strict"
    assert explicit.backend.reason == "requested explicitly"


# -- transfers (every backend) ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_host_round_trip_keeps_values_and_dtype(backend, dtype):
    host = np.random.default_rng(0).standard_normal((3, 4)).astype(dtype)
    dev = backend.asarray(host)
    assert backend.is_native(dev)
    assert backend.dtype_name(dev.dtype) == dtype
    back = backend.to_numpy(dev)
    assert isinstance(back, np.ndarray) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, host)


def test_asarray_casts_to_the_requested_dtype(backend):
    dev = backend.asarray([[1, 2], [3, 4]], dtype=backend.dtype("float64"))
    assert dev.dtype == backend.xp.float64
    np.testing.assert_array_equal(backend.to_numpy(dev), [[1.0, 2.0], [3.0, 4.0]])
    ints = backend.asarray(np.array([0, 2, 1]), dtype=backend.xp.int64)
    assert ints.dtype == backend.xp.int64
    np.testing.assert_array_equal(backend.to_numpy(ints), [0, 2, 1])


def test_asarray_copies_host_data(backend):
    host = np.arange(6.0).reshape(2, 3)
    dev = backend.asarray(host, dtype=backend.dtype("float64"))
    host[0, 0] = 100.0
    assert backend.to_numpy(dev)[0, 0] == 0.0
    same_dtype = backend.asarray(host)  # no cast requested: must still copy
    host[1, 1] = -7.0
    assert backend.to_numpy(same_dtype)[1, 1] == 4.0


def test_asarray_copies_native_arrays(backend):
    native = backend.asarray(np.zeros((2, 2)), dtype=backend.dtype("float64"))
    copy = backend.asarray(native)
    native[0, 0] = 5.0  # every backend here supports item assignment
    assert backend.to_numpy(copy)[0, 0] == 0.0
    assert backend.to_numpy(native)[0, 0] == 5.0


def test_to_numpy_returns_an_independent_copy(backend):
    dev = backend.asarray(np.ones(3), dtype=backend.dtype("float64"))
    host = backend.to_numpy(dev)
    host[0] = 9.0
    assert backend.to_numpy(dev)[0] == 1.0


def test_to_float_and_synchronize(backend):
    xp = backend.xp
    value = xp.sum(backend.asarray(np.array([1.5, 2.25]), dtype=backend.dtype("float64")))
    assert backend.to_float(value) == 3.75
    assert isinstance(backend.to_float(value), float)
    one = backend.asarray(np.array([[-0.5]]), dtype=backend.dtype("float32"))  # one element, 2-D
    assert backend.to_float(one) == -0.5 and isinstance(backend.to_float(one), float)
    backend.synchronize()


def test_dtype_names(backend):
    assert backend.dtype("float32") == backend.xp.float32
    assert backend.dtype_name(backend.dtype("float64")) == "float64"
    with pytest.raises(ValueError, match="dtype must be one of"):
        backend.dtype("float16")
    with pytest.raises(ValueError, match="not a floating dtype"):
        backend.dtype_name(backend.xp.int64)


def test_device_rng_draws_and_rewinds(backend):
    rng = backend.make_rng(123)
    state = backend.rng_state(rng)
    first = backend.to_numpy(rng.uniform((500,), backend.dtype("float64")))
    assert first.shape == (500,) and first.dtype == np.float64
    assert first.min() >= 0.0 and first.max() < 1.0 and 0.4 < first.mean() < 0.6
    backend.set_rng_state(rng, state)
    again = backend.to_numpy(rng.uniform((500,), backend.dtype("float64")))
    if backend.name == "cupy":  # documented: a restore reseeds, deterministic but not identical
        assert again.shape == first.shape
    else:
        np.testing.assert_array_equal(again, first)
    f32 = rng.uniform((2, 3), backend.dtype("float32"))
    assert f32.dtype == backend.xp.float32 and tuple(f32.shape) == (2, 3)
