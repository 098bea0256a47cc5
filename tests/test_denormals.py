"""Subnormals flushed to zero in the NumPy fast step (bpgpu.kernels._denormals).

The oracle is the reference path (``fast=False``), which never flushes: the flushed step must
agree with it to float32 rounding everywhere except in entries below the smallest normal float32,
which the flushed step leaves at exactly zero. The same step with ``BPGPU_FLUSH_DENORMALS=0``
shows that the case really makes subnormals (otherwise the zero checks would prove nothing).
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import _cpu_threads as cpu_threads
from bpgpu.kernels import _denormals
from bpgpu.layers import Dense
from bpgpu.optimizers import SGD

SUPPORTED, WHY = _denormals.support()
needs_mode = pytest.mark.skipif(not SUPPORTED, reason=f"flush-to-zero control: {WHY}")

TINY = np.finfo(np.float32).tiny  # smallest normal float32, 1.2e-38
SUBNORMAL = np.float32(1e-39)


def _flushes_here():
    """Whether this thread flushes now: a subnormal times one comes out as zero."""
    return float(np.multiply(SUBNORMAL, np.float32(1.0))) == 0.0


def _subnormals(a):
    a = np.asarray(a)
    return int(np.count_nonzero((a != 0) & (np.abs(a) < TINY)))


@needs_mode
def test_flushing_sets_the_mode_and_gives_it_back():
    assert not _flushes_here()
    with _denormals.flushing():
        assert _flushes_here()
        with _denormals.flushing():  # nested
            assert _flushes_here()
        assert _flushes_here()
    assert not _flushes_here()
    with pytest.raises(KeyError), _denormals.flushing():
        raise KeyError("inside")
    assert not _flushes_here()


def test_the_switch(monkeypatch):
    monkeypatch.setenv(_denormals.ENV, "0")
    with _denormals.flushing():
        assert not _flushes_here()
    monkeypatch.setenv(_denormals.ENV, "yes")
    with pytest.raises(ValueError, match="BPGPU_FLUSH_DENORMALS must be 0 .* got 'yes'"), \
            _denormals.flushing():
        pass
    assert not _flushes_here()


def test_support_says_why_not():
    ok, why = _denormals.support()
    assert ok == (why == "")
    if not ok:
        with _denormals.flushing():  # changes nothing, raises nothing
            assert not _flushes_here()


@needs_mode
def test_pool_jobs_run_in_the_callers_mode():
    # more jobs than the pool has threads: new threads start while this thread flushes, and a
    # thread starts with its creator's mode, so a pool thread must be set, not trusted, later
    jobs = [_flushes_here] * (cpu_threads._pool_size + 3)
    with _denormals.flushing():
        assert cpu_threads.run_parallel(jobs) == [True] * len(jobs)
    assert cpu_threads.run_parallel(jobs) == [False] * len(jobs)


def _net(fast):
    """Dense(2, 3) + softmax cross-entropy whose third logit sits 100 below the others, so its
    probability exp(-100) = 3.7e-44 and its gradients are subnormal in float32."""
    net = bpgpu.Network([Dense(2, 3)], loss="cross_entropy", optimizer=SGD(0.1),
                        backend="numpy", dtype="float32", seed=0, fast=fast)
    net.set_weights([np.array([[50.0, 50.0, -50.0], [1.0, -1.0, 0.0]], np.float32),
                     np.zeros(3, np.float32)])
    return net


X = np.array([[1.0, 0.5], [1.0, 0.25], [1.0, 0.75], [1.0, 1.0]], np.float32)
Y = np.array([0, 1, 0, 1])


def _step(fast):
    net = _net(fast)
    assert net.engine.fast is fast
    loss = net.train_step(X, Y)
    layer = net.layers[0]
    grads = [np.asarray(layer.grads["W"]).copy(), np.asarray(layer.grads["b"]).copy()]
    return float(loss), grads, [np.asarray(w) for w in net.get_weights()]


@needs_mode
@pytest.mark.parametrize("shards", ["1", "2"])
def test_fast_step_flushes_what_the_reference_keeps(monkeypatch, shards):
    monkeypatch.setenv("BPGPU_CPU_SHARDS", shards)
    ref_loss, ref_grads, ref_weights = _step(False)
    assert _subnormals(ref_grads[0][:, 2]) == 2 and _subnormals(ref_grads[1][2]) == 1

    monkeypatch.setenv(_denormals.ENV, "0")
    _, plain_grads, _ = _step(True)
    assert _subnormals(plain_grads[0][:, 2]) == 2  # without flushing the fast step has them too

    monkeypatch.delenv(_denormals.ENV)
    loss, grads, weights = _step(True)
    assert [_subnormals(g) for g in grads] == [0, 0]
    assert np.all(grads[0][:, 2] == 0) and grads[1][2] == 0
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for got, want in zip(grads + weights, ref_grads + ref_weights, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=TINY)
    assert not _flushes_here()  # the caller's mode is back after the step
    assert cpu_threads.run_parallel([_flushes_here] * 2) == [False, False]


@needs_mode
def test_fit_keeps_the_callers_mode_after_an_error(monkeypatch):
    net = _net(True)

    def failing_hook(flat, rows):
        assert _flushes_here()  # hooks run inside the step's mode
        raise RuntimeError("hook failed")

    net.gradient_hooks.append(failing_hook)
    with pytest.raises(RuntimeError, match="hook failed"):
        net.train_step(X, Y)
    assert not _flushes_here()
