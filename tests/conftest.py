"""Shared fixtures: every backend-dependent test runs once per backend.

* ``backend``: a :class:`bpgpu.Backend`, parametrized over numpy, array_api_strict, torch and
  cupy. Unusable backends are skipped with the reason (not installed, no CUDA device, ...).
* ``--backend NAME`` (repeatable) or ``BPGPU_TEST_BACKENDS=a,b`` restricts the run to those.
* ``--require-backend NAME`` or ``BPGPU_REQUIRE_BACKENDS=cupy`` turns "unusable" into a failure:
  the GPU CI (``ci/gpu_tests.sh``) uses it so that a missing GPU cannot pass as skips.
* ``torch``: the PyTorch module, used as the independent oracle; skipped when not installed.
* A test module that sets ``OWN_BACKEND_FIXTURE = True`` defines ``backend`` itself (the
  emulated CuPy kernel set of tests/cuda_emu) and is not parametrized over the real backends.
"""

import os

import pytest

import bpgpu
from bpgpu.backend import backend_status

ALL_BACKENDS = ("numpy", "array_api_strict", "torch", "cupy")


def pytest_addoption(parser):
    parser.addoption("--backend", action="append", default=None, choices=ALL_BACKENDS,
                     help="run backend-parametrized tests only on this backend (repeatable)")
    parser.addoption("--require-backend", action="append", default=None, choices=ALL_BACKENDS,
                     help="fail instead of skipping when this backend is unusable (repeatable)")


def _listed(config, option, env):
    names = config.getoption(option) or [n for n in os.environ.get(env, "").split(",") if n]
    unknown = set(names) - set(ALL_BACKENDS)
    if unknown:
        raise pytest.UsageError(f"{env}: unknown backend(s) {sorted(unknown)}; choose from {ALL_BACKENDS}")
    return names


def selected_backends(config):
    return _listed(config, "--backend", "BPGPU_TEST_BACKENDS") or list(ALL_BACKENDS)


def pytest_generate_tests(metafunc):
    # A module that defines its own ``backend`` fixture (OWN_BACKEND_FIXTURE = True, e.g. the
    # emulated CuPy kernels) is not parametrized over the real backends.
    if "backend" in metafunc.fixturenames and not getattr(metafunc.module, "OWN_BACKEND_FIXTURE",
                                                          False):
        metafunc.parametrize("backend", selected_backends(metafunc.config), indirect=True)


_STATUS = {}


@pytest.fixture
def backend(request):
    name = request.param
    if not _STATUS:
        _STATUS.update(backend_status())
    reason = _STATUS[name]
    if reason is not None:
        if name in _listed(request.config, "--require-backend", "BPGPU_REQUIRE_BACKENDS"):
            pytest.fail(f"backend {name!r} is required for this run but unusable: {reason}")
        pytest.skip(f"backend {name!r} unusable here: {reason}")
    return bpgpu.get_backend(name)


@pytest.fixture(scope="session", autouse=True)
def strict_api_version():
    """Pin array-api-strict to the 2024.12 standard (the version bpgpu targets), then restore."""
    try:
        import array_api_strict
    except ImportError:
        yield
        return
    saved = array_api_strict.get_array_api_strict_flags()
    array_api_strict.set_array_api_strict_flags(api_version="2024.12")
    yield
    array_api_strict.set_array_api_strict_flags(**saved)


@pytest.fixture(scope="session")
def torch():
    """PyTorch as the oracle; the test is skipped (with this reason) when it is absent."""
    return pytest.importorskip("torch", reason="PyTorch is not installed; it is the oracle for this "
                               "comparison (pip install torch)")


@pytest.fixture(scope="session", autouse=True)
def torch_single_thread():
    """Run torch on one CPU thread during the tests, then restore. The test tensors are tiny, and
    on a busy 2-core machine torch's spinning worker threads made torch-backend training tests
    10 to 40 times slower (measured: 300 Adam epochs of the 1-64-32-1 MLP, 8.3 s vs 0.2 s)."""
    try:
        import torch
    except ImportError:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def numpy_update_passes(monkeypatch):
    """The NumPy fast path's optimizer update as NumPy passes (``BPGPU_C_KERNELS=0``), for the
    tests of those passes; everywhere else the compiled C rules serve it where a compiler is."""
    monkeypatch.setenv("BPGPU_C_KERNELS", "0")
