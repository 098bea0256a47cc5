"""MKL's products in the row shards of NumPy fast steps (bpgpu.kernels._mkl_blas).

Oracle: ``np.dot`` (the reference twin of every product the NumPy kernels make), to float
rounding: MKL and OpenBLAS sum in different orders. The steps are compared with the same step
run on ``np.dot`` (``BPGPU_BLAS=numpy``). Tests that need MKL skip, saying so, where the ``mkl``
wheel is not installed (CI installs it).
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import _cpu_threads as cpu_threads
from bpgpu.kernels import _mkl_blas as mkl_blas
from bpgpu.kernels import _numpy_fast as numpy_fast
from bpgpu.optimizers import SGD


@pytest.fixture
def mkl(monkeypatch):
    """MKL chosen and loaded; skips (with the reason) where it is not installed."""
    monkeypatch.setenv(mkl_blas.ENV, "auto")
    why = mkl_blas.support()
    if not why.startswith("MKL"):
        pytest.skip(f"needs Intel MKL (pip install mkl): {why}")
    return why


def _layouts(rng, m, k, n, dtype):
    """(a, b) of shapes (m, k), (k, n) in each of the four C/F layouts."""
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    for left in (a, np.asfortranarray(a)):
        for right in (b, np.asfortranarray(b)):
            yield left, right


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-5), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 1, 7), (64, 33, 17), (129, 257, 3)])
def test_gemm_matches_np_dot(mkl, dtype, tol, shape):
    rng = np.random.default_rng(sum(shape))
    for a, b in _layouts(rng, *shape, dtype):
        out = np.full((shape[0], shape[2]), np.nan, dtype)
        assert mkl_blas.gemm(a, b, out)
        expected = np.dot(a, b)
        scale = np.abs(a).dot(np.abs(b))  # bound on the rounding of each sum
        assert np.all(np.abs(out - expected) <= tol * scale + tol), (a.flags, b.flags)


def test_gemm_declines_what_blas_cannot_read(mkl):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 6)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    out = np.zeros((8, 4), np.float32)
    declined = [
        (a[:, ::2], b[:3]),                       # a strided view
        (a, b.astype(np.float64)),                # mixed types
        (a.astype(np.float16), b.astype(np.float16)),
        (a[0], b),                                # 1-D
        (a[:, :0], b[:0]),                        # empty
        (a, b[:5]),                               # shapes that do not chain
    ]
    for left, right in declined:
        target = out if left.dtype == np.float32 else out.astype(left.dtype)
        assert not mkl_blas.gemm(left, right, target[:left.shape[0]] if left.ndim == 2 else out)
        assert not np.any(out)  # untouched
    assert not mkl_blas.gemm(a, b, np.zeros((4, 8), np.float32).T)  # out not C-contiguous
    assert not mkl_blas.gemm(a, b, np.zeros((8, 5), np.float32))    # out of the wrong shape
    square = rng.standard_normal((6, 6)).astype(np.float32)
    before = square.copy()
    assert not mkl_blas.gemm(square, square.T, square)               # out overlaps the inputs
    assert np.array_equal(square, before)


def test_product_uses_np_dot_outside_row_shards(mkl, monkeypatch):
    """Outside a pinned step every product is np.dot itself (bit for bit); inside, MKL."""
    calls = []
    monkeypatch.setattr(mkl_blas, "_run", lambda *args: calls.append(args) or False)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 20)).astype(np.float32)
    out = np.empty((40, 20), np.float32)
    numpy_fast._product(a, b, out)
    assert not calls and np.array_equal(out, np.dot(a, b))
    with cpu_threads.one_blas_thread():
        numpy_fast._product(a, b, out)
    assert len(calls) == 1 and np.array_equal(out, np.dot(a, b))  # declined: np.dot ran


def test_env_choice(monkeypatch):
    monkeypatch.setenv(mkl_blas.ENV, "numpy")
    assert mkl_blas.support() == "np.dot (BPGPU_BLAS=numpy)"
    out = np.zeros((2, 2), np.float32)
    assert not mkl_blas.gemm(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), out)
    monkeypatch.setenv(mkl_blas.ENV, "openblas")
    with pytest.raises(ValueError, match="BPGPU_BLAS must be one of auto, numpy, mkl"):
        mkl_blas.support()


def _sharded_net(seed=0):
    net = bpgpu.Network.from_sizes([24, 64, 64, 5], loss="cross_entropy",
                                   optimizer=SGD(0.1, momentum=0.9), backend="numpy", seed=seed)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((256, 24)).astype(np.float32)
    y = rng.integers(0, 5, 256)
    return net, X, y


def test_mkl_missing(monkeypatch):
    """Without MKL: auto falls back to np.dot and says why; BPGPU_BLAS=mkl is an error that
    stops the step before it changes anything."""
    monkeypatch.setattr(mkl_blas, "_candidates", lambda: [])
    monkeypatch.setattr(mkl_blas, "_loaded", None)
    monkeypatch.setenv("BPGPU_CPU_SHARDS", "2")
    monkeypatch.setenv(mkl_blas.ENV, "auto")
    assert mkl_blas.support() == "np.dot (MKL not installed (pip install mkl))"
    monkeypatch.setenv(mkl_blas.ENV, "mkl")
    with pytest.raises(ValueError, match="BPGPU_BLAS=mkl, but MKL not installed"):
        mkl_blas.support()
    net, X, y = _sharded_net()
    before = net.get_weights()
    with pytest.raises(ValueError, match="BPGPU_BLAS=mkl"):
        net.train_step(X, y)
    assert "row-shard products: not run: BPGPU_BLAS=mkl, but MKL not installed" \
        in net.engine.reason  # the reason reports it rather than raising
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights(), strict=True))
    assert net.optimizer.step_count == 0


def test_sharded_steps_with_mkl_match_np_dot(mkl, monkeypatch):
    """Three row-sharded SGD steps through MKL against the same steps through np.dot: the
    losses and weights agree to float32 rounding, and the engine's reason names MKL."""
    monkeypatch.setenv("BPGPU_CPU_SHARDS", "2")
    results = {}
    for choice in ("auto", "numpy"):
        monkeypatch.setenv(mkl_blas.ENV, choice)
        net, X, y = _sharded_net()
        losses = [float(net.train_step(X, y)) for _ in range(3)]
        results[choice] = (losses, net.get_weights(), net.engine.reason)
    (mkl_losses, mkl_weights, reason), (dot_losses, dot_weights, dot_reason) = \
        results["auto"], results["numpy"]
    assert "row-shard products: MKL" in reason, reason
    assert "row-shard products: np.dot (BPGPU_BLAS=numpy)" in dot_reason, dot_reason
    np.testing.assert_allclose(mkl_losses, dot_losses, rtol=1e-5)
    for a, b in zip(mkl_weights, dot_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_loaded_mkl_is_seen_in_the_process(mkl):
    """Once loaded, MKL shows in the process's mappings: a second loader (or an MKL-built NumPy
    loaded before bpgpu) makes bpgpu leave MKL's threading layer alone."""
    assert mkl_blas._mkl_in_process()
