"""The CuPy kernel set on the CPU: each kernel's real CUDA source, compiled with g++ by the
emulation in tests/cuda_emu, run through bpgpu's own call sites and compared with the reference
path. An emulation, not a GPU: it checks the kernels' arithmetic, argument order and types and
the thread/warp logic, not launch limits, the memory model, races or speed (docs/guide/gpu.md).

The fast-versus-reference tests of test_kernels.py run here again with the emulated backend;
the tests below add every update-kernel flag combination, every activation with and without a
bias, wide cross-entropy rows, and show that the comparison catches a broken kernel.
"""

import inspect

import numpy as np
import pytest

import bpgpu
import test_kernels
from bpgpu.kernels import train_step_for
from bpgpu.layers import Dense, LeakyReLU, ReLU, Sigmoid, Tanh
from bpgpu.losses import CrossEntropy
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop
from cuda_emu import EmulationError, cuda
from cuda_emu.backend import EmulatedCuPy, EmulatedCuPyBackend

OWN_BACKEND_FIXTURE = True  # conftest: ``backend`` below is the emulated CuPy backend


@pytest.fixture(scope="module")
def emulated():
    """bpgpu's CuPy modules on the fake ``cupy``, with every kernel variant compiled up front
    (one g++ call; cached by source hash across runs)."""
    cuda.reset()
    emu = EmulatedCuPy()
    assert emu.build_all() > 100
    return emu


@pytest.fixture
def backend(emulated):
    cuda.reset()
    return EmulatedCuPyBackend(emulated)


# The fast-versus-reference tests of test_kernels.py, collected again here with ``backend`` the
# emulated CuPy backend (the one test about backends WITHOUT a fast path does not apply).
for _name, _test in vars(test_kernels).items():
    if _name.startswith("test_") and "backend" in inspect.signature(_test).parameters \
            and _name != "test_backends_without_fast_path_use_the_reference":
        globals()[_name] = _test

TOL = test_kernels.TOL


def _compare(backend, make_layers, make_opt, dtype, X, y, steps=3, loss="cross_entropy"):
    nets = [bpgpu.Network(make_layers(), loss=loss, optimizer=make_opt(), backend=backend,
                          dtype=dtype, seed=3, fast=fast) for fast in (True, False)]
    losses = [[net.train_step(X, y) for _ in range(steps)] for net in nets]
    assert train_step_for(nets[0]) is not None and train_step_for(nets[1]) is None
    np.testing.assert_allclose(losses[0], losses[1], **TOL[dtype])
    for a, b in zip(nets[0].get_weights(), nets[1].get_weights()):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def _small_mlp():
    return [Dense(4, 6), Tanh(), Dense(6, 3)]


_XY = (np.random.default_rng(0).standard_normal((10, 4)), np.arange(10) % 3)


def _flags(n):
    return [tuple(bool(k >> i & 1) for i in range(n)) for k in range(2 ** n)]


_SGD_FLAGS = [f for f in _flags(5) if f[3] or not f[4]]  # SGD refuses nesterov without momentum


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", _SGD_FLAGS, ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_sgd_kernel_variant_matches_reference(backend, flags, dtype):
    clip_value, clip_norm, decay, momentum, nesterov = flags

    def make():
        return SGD(0.05, momentum=0.9 if momentum else 0.0, dampening=0.0 if nesterov else 0.2,
                   weight_decay=0.01 if decay else 0.0, nesterov=nesterov,
                   clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", _flags(5), ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_rmsprop_kernel_variant_matches_reference(backend, flags, dtype):
    clip_value, clip_norm, decay, momentum, centered = flags

    def make():
        return RMSprop(1e-2, momentum=0.5 if momentum else 0.0, centered=centered,
                       weight_decay=0.1 if decay else 0.0,
                       clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decay", [None, "l2", "decoupled"])
@pytest.mark.parametrize("flags", _flags(2), ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_adam_kernel_variant_matches_reference(backend, flags, decay, dtype):
    clip_value, clip_norm = flags
    kind = AdamW if decay == "decoupled" else Adam

    def make():
        return kind(1e-2, weight_decay=0.1 if decay else 0.0,
                    clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", [None, ReLU, Tanh, Sigmoid, lambda: LeakyReLU(0.2)],
                         ids=["linear", "relu", "tanh", "sigmoid", "leaky"])
def test_every_activation_without_bias_matches_reference(backend, act, dtype):
    def make():
        layers = [Dense(4, 7, bias=False)] + ([act()] if act else []) + [Dense(7, 3, bias=False)]
        return layers
    _compare(backend, make, lambda: Adam(1e-2), dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [False, True], ids=["class_ids", "probability_rows"])
def test_cross_entropy_warp_kernel_on_wide_rows(backend, emulated, rows, dtype):
    """More classes than a warp has lanes (each lane loops), a row count that leaves the last
    block's warps idle, and values that make the row maximum matter."""
    rng = np.random.default_rng(4)
    n, c = 7, 77
    z = (rng.standard_normal((n, c)) * 30).astype(dtype)
    t = rng.dirichlet(np.ones(c), n).astype(dtype) if rows else rng.integers(0, c, n)
    op = emulated.fused._SoftmaxCrossEntropy()
    value = op.forward(z, t)
    ref = CrossEntropy().bind(bpgpu.get_backend("numpy"))
    expected = ref.forward(z, t)
    np.testing.assert_allclose(value, expected, **TOL[dtype])
    np.testing.assert_allclose(op.grad, ref.backward(), **TOL[dtype])


# -- the comparison bites: a wrong kernel is caught ---------------------------------------------------
def test_a_broken_kernel_fails_the_comparison(backend, emulated, monkeypatch):
    """The tanh gradient kernel built with 1 + y^2 instead of 1 - y^2 makes the fast path
    disagree with the reference: the emulated comparisons test the kernels' code."""
    fused = emulated.fused
    monkeypatch.setitem(fused._BACKWARD, "tanh", "dz = dy * (({t})1 + y * y);")
    fused._activation_grad.cache_clear()
    try:
        with pytest.raises(AssertionError):
            _compare(backend, _small_mlp, lambda: Adam(1e-2), "float64", *_XY)
    finally:
        monkeypatch.undo()
        fused._activation_grad.cache_clear()


def test_emulation_refuses_a_mismatched_argument(emulated):
    kernel = emulated.fused._add_scaled("float32")
    with pytest.raises(TypeError, match="dtype float64"):
        kernel(np.zeros(3), 1.0, np.zeros(3, np.float32))
    raw = emulated.fused._xent_kernel(True, "float32")
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="int64, the kernel declares int32"):
        raw((1,), (64,), (z, np.zeros(2, np.int64), z.copy(), np.zeros(2, np.float32), 2,
                          np.int32(3)))


def test_emulation_refuses_shuffles_it_does_not_model(emulated):
    """A shuffle after some lanes of the warp returned is undefined on a GPU: refused."""
    from cuda_emu.kernels import RawKernel

    source = r"""
    extern "C" __global__ void emu_test_half_warp(float* x, const int n) {
        if (threadIdx.x >= n) return;
        x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
    }
    """
    kernel = RawKernel(source, "emu_test_half_warp")
    x = np.arange(32, dtype=np.float32)
    kernel((1,), (32,), (x, np.int32(32)))
    np.testing.assert_array_equal(x, np.arange(32, dtype=np.float32).reshape(16, 2)[:, ::-1]
                                  .reshape(-1))
    with pytest.raises(EmulationError, match="exited"):
        kernel((1,), (32,), (x, np.int32(20)))


def test_emulation_refuses_an_array_read_in_post_map(emulated):
    """CuPy binds a reduction's array inputs only inside its element loop; post-map code that
    reads one does not compile (the NVRTC check found this in a CUDA-graph variant)."""
    kernel = emulated.fused._norm_scale_kernel(False, "float64")
    with pytest.raises(EmulationError, match="post_map_expr reads max_norm"):
        kernel(np.ones(4), 0.0, np.array(1.0))
    assert float(kernel(np.ones(4), 0.0, 1.0)) == pytest.approx(1.0 / (2.0 + 1e-6))
