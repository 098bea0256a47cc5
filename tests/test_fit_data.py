"""fit reads NumPy data in place when it already has the network's dtype and layout, gathers
shuffled batches into buffers it reuses, and never writes the caller's arrays.

Oracles: identity and equality checks on the caller's arrays, the same training on a copy made
by the caller (which must give the same weights), and tracemalloc's peak against the data's size.
"""

import tracemalloc

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU
from bpgpu.optimizers import Adam


def _net(dtype="float32", fast=None, dropout=False):
    layers = [Dense(20, 16), ReLU()] + ([Dropout(0.2)] if dropout else []) + [Dense(16, 3)]
    return bpgpu.Network(layers, loss="cross_entropy", optimizer=Adam(1e-2), backend="numpy",
                         dtype=dtype, seed=0, fast=fast)


def _data(n=300, dtype=np.float32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 20)).astype(dtype), rng.integers(0, 3, n)


@pytest.mark.parametrize("fast", [None, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_reads_matching_data_in_place_and_leaves_it_unchanged(fast, shuffle):
    X, y = _data()
    kept_X, kept_y = X.copy(), y.copy()
    net, twin = _net(fast=fast, dropout=True), _net(fast=fast, dropout=True)
    seen = []
    original = net.backend.asarray
    net.backend.asarray = lambda data, dtype=None: seen.append(data) or original(data, dtype)
    net.fit(X, y, epochs=2, batch_size=64, shuffle=shuffle, verbose=0, validation_data=(X, y))
    assert not any(data is X for data in seen)  # never copied
    np.testing.assert_array_equal(X, kept_X)
    np.testing.assert_array_equal(y, kept_y)
    twin.fit(X.copy(), y, epochs=2, batch_size=64, shuffle=shuffle, verbose=0,
             validation_data=(X.copy(), y))
    for a, b in zip(net.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [lambda X: X.astype(np.float64), lambda X: np.asfortranarray(X),
                                  lambda X: X[:, ::-1]],
                         ids=["other_dtype", "fortran_order", "strided"])
def test_other_data_is_copied(make):
    X, _ = _data()
    other = make(X)
    backend = bpgpu.get_backend("numpy")
    moved = backend.borrow(other, backend.dtype("float32"))
    assert moved is not other and moved.dtype == np.float32
    np.testing.assert_array_equal(moved, other.astype(np.float32))


def test_fit_peak_memory_stays_below_the_data_size():
    """A copy of X alone would take X.nbytes; fit's peak of new allocations stays well under it
    (batch buffers, the permutation, the finite check's block mask)."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20000, 20)).astype(np.float32)
    y = rng.integers(0, 3, 20000)
    net = _net()
    net.fit(X[:256], y[:256], epochs=1, batch_size=128, verbose=0)  # buffers and state made
    tracemalloc.start()
    try:
        net.fit(X, y, epochs=1, batch_size=128, verbose=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * X.nbytes, f"fit allocated {peak} bytes at peak for {X.nbytes} of data"


@pytest.mark.parametrize("where", [0, 7, -1], ids=["first_row", "middle", "last_row"])
def test_finite_check_in_blocks_finds_every_bad_value(monkeypatch, where):
    """The finite check reads a large array block of rows by block of rows (bounded scratch
    memory) and still finds a NaN wherever it is, counting every bad value in the message."""
    from bpgpu import _validation as validation

    monkeypatch.setattr(validation, "FINITE_BLOCK", 40)  # blocks of 2 rows of 20
    X, y = _data(15)
    assert validation._host_finite(X)
    X[where, 3] = np.nan
    X[where, 5] = np.inf
    assert not validation._host_finite(X)
    net = _net()
    with pytest.raises(ValueError, match=r"X contains 2 NaN or infinite value\(s\)"):
        net.fit(X, y, verbose=0)
    assert net.optimizer.step_count == 0
