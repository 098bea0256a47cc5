"""Row shards (NumPy): a step split over threads computes what the reference path computes.

``BPGPU_CPU_SHARDS=k`` forces k shards whatever the size, so small networks take the sharded
path here; the comparisons are against ``fast=False`` (the standard-only reference code) in
float64, to 1e-12 relative, as in test_kernels.py.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import _cpu_threads as cpu_threads
from bpgpu.kernels import train_step_for
from bpgpu.layers import BatchNorm, Dense, Dropout, ReLU, Tanh
from bpgpu.losses import MSE, CrossEntropy
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop

TOL = dict(rtol=1e-12, atol=1e-14)

OPTIMIZERS = {
    "adam": lambda: Adam(1e-2),
    "adam_l2_clipnorm": lambda: Adam(1e-2, weight_decay=0.1, clip_norm=0.5),
    "adamw_clipvalue": lambda: AdamW(1e-2, clip_value=0.02),
    "sgd_nesterov_wd": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop_centered": lambda: RMSprop(1e-2, momentum=0.5, centered=True),
}


class _AdamWithoutFastRule(Adam):
    """A subclass: no flat rule is registered for it, so the reference update runs."""


def _layers(l2=0.0):
    return [Dense(6, 32, l2=l2), ReLU(), Dense(32, 16), Tanh(), Dense(16, 4)]


def _nets(make_optimizer, loss=None, l2=0.0, layers=_layers):
    return [bpgpu.Network(layers(l2) if layers is _layers else layers(), loss=loss or CrossEntropy(),
                          optimizer=make_optimizer(), backend="numpy", dtype="float64", seed=3,
                          fast=fast) for fast in (True, False)]


def _data(n, target="ids", seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    if target == "ids":
        return X, rng.integers(0, 4, n)
    if target == "rows":
        return X, rng.dirichlet(np.ones(4), n)
    return X, rng.standard_normal((n, 4))


def _train_both(nets, X, y, steps=5, batch=None):
    losses = [[], []]
    for s in range(steps):
        lo = 0 if batch is None else (s * batch) % X.shape[0]
        xb, yb = (X, y) if batch is None else (X[lo:lo + batch], y[lo:lo + batch])
        for k, net in enumerate(nets):
            losses[k].append(net.train_step(xb, yb))
    return losses


def _assert_same(nets, losses):
    np.testing.assert_allclose(losses[0], losses[1], **TOL)
    for a, b in zip(nets[0].get_weights(), nets[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


@pytest.fixture
def shards(monkeypatch):
    def force(k):
        monkeypatch.setenv("BPGPU_CPU_SHARDS", str(k))
    return force


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_sharded_steps_match_reference(shards, optimizer):
    shards(3)
    nets = _nets(OPTIMIZERS[optimizer], l2=0.05)
    X, y = _data(61)  # 61 rows: blocks of 20, 20 and 21
    losses = _train_both(nets, X, y)
    step = train_step_for(nets[0])
    assert len(step._shards) == 3  # the path under test was taken
    _assert_same(nets, losses)


@pytest.mark.parametrize("target,loss", [("ids", CrossEntropy), ("rows", CrossEntropy),
                                         ("values", MSE)])
def test_every_fast_loss_shards(shards, target, loss):
    shards(2)
    nets = _nets(lambda: Adam(1e-2), loss=loss())
    X, y = _data(30, target, seed=1)
    _assert_same(nets, _train_both(nets, X, y))


def test_optimizer_without_flat_rule_sums_shards_first(shards):
    shards(2)
    nets = _nets(lambda: _AdamWithoutFastRule(1e-2))
    X, y = _data(40, seed=2)
    losses = _train_both(nets, X, y)
    assert train_step_for(nets[0])._rule[1] is None
    _assert_same(nets, losses)


def test_published_gradients_are_the_whole_batch(shards):
    """After a sharded step each layer's grads hold the sum over every shard (L2 counted once)."""
    shards(4)
    nets = _nets(lambda: SGD(0.0), l2=0.1)  # lr 0: the weights stay where the gradient was taken
    X, y = _data(50, seed=3)
    _train_both(nets, X, y, steps=1)
    for a, b in zip(nets[0].gradients(), nets[1].gradients(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_changing_batch_sizes_and_shard_counts(shards):
    """Blocks of the last, smaller batch and a change of k mid-training keep the numbers right."""
    nets = _nets(lambda: Adam(1e-2))
    X, y = _data(70, seed=4)
    shards(3)
    _train_both(nets, X, y, steps=3, batch=32)  # batches of 32, 32 and 6 rows
    shards(2)
    _train_both(nets, X, y, steps=2, batch=32)
    shards(1)
    losses = _train_both(nets, X, y, steps=2, batch=32)
    _assert_same(nets, losses)


def test_more_shards_than_rows_uses_one_row_each(shards):
    shards(8)
    nets = _nets(lambda: Adam(1e-2))
    X, y = _data(5, seed=5)
    losses = _train_both(nets, X, y, steps=2)
    assert len(train_step_for(nets[0])._shards) == 5
    _assert_same(nets, losses)


def test_fit_with_shards_matches_reference(shards):
    shards(2)
    nets = _nets(lambda: Adam(1e-2, clip_norm=1.0))
    X, y = _data(100, seed=6)
    histories = [net.fit(X, y, epochs=3, batch_size=32, shuffle=True, verbose=0) for net in nets]
    np.testing.assert_allclose(histories[0].history["loss"], histories[1].history["loss"], **TOL)
    for a, b in zip(nets[0].get_weights(), nets[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


def test_sharded_training_is_deterministic(shards):
    shards(2)
    X, y = _data(64, seed=7)
    weights = []
    for _ in range(2):
        net = bpgpu.Network(_layers(), loss="cross_entropy", optimizer=Adam(1e-2),
                            backend="numpy", dtype="float32", seed=1)
        for _ in range(4):
            net.train_step(X, y)
        weights.append(net.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layers", [
    lambda: [Dense(6, 16, bias=False), BatchNorm(16), ReLU(), Dense(16, 4)],
    lambda: [Dense(6, 16), ReLU(), Dropout(0.0), Dense(16, 4)],
], ids=["batchnorm", "dropout"])
def test_networks_with_reference_layers_are_not_sharded(shards, layers):
    """Batch statistics and dropout masks are per batch: such networks run in one piece."""
    shards(2)
    nets = _nets(lambda: Adam(1e-2), layers=layers)
    X, y = _data(40, seed=8)
    losses = _train_both(nets, X, y, steps=3)
    step = train_step_for(nets[0])
    assert not step.shardable and len(step._shards) == 1
    _assert_same(nets, losses)


def _blas_threads():
    """Thread counts of the BLAS libraries bpgpu pins: those loaded when it first looked (NumPy's
    among them); one loaded later, e.g. by a test importing torch, is not its to pin."""
    from threadpoolctl import threadpool_info

    known = cpu_threads._blas_controller()
    paths = {lib.filepath for lib in known.lib_controllers} if known else None
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and (paths is None or lib["filepath"] in paths)]


def test_blas_threads_are_restored_after_a_sharded_step(shards):
    before = _blas_threads()
    shards(2)
    net = bpgpu.Network(_layers(), loss="cross_entropy", backend="numpy", seed=0)
    X, y = _data(20)
    net.train_step(X, y)
    assert _blas_threads() == before


# -- how many shards --------------------------------------------------------------------------------
def test_shard_count_defaults(monkeypatch):
    monkeypatch.delenv("BPGPU_CPU_SHARDS", raising=False)
    rows = 4 * cpu_threads.MIN_ROWS
    assert cpu_threads.shard_count(rows, 10) == 1                      # too little work
    assert cpu_threads.shard_count(cpu_threads.MIN_ROWS, 1 << 30) == 1   # too few rows
    blas = cpu_threads._blas_controller()
    big = cpu_threads.shard_count(rows, cpu_threads.MIN_WORK)
    if not blas:
        assert big == 1
        return
    threads = max(lib.num_threads for lib in blas.lib_controllers)
    assert big == (threads if threads <= 4 else 1)
    with blas.limit(limits=1):
        assert cpu_threads.shard_count(rows, cpu_threads.MIN_WORK) == 1
    with blas.limit(limits=3):  # 3 shards need 3 x MIN_ROWS rows, else BLAS keeps its threads
        assert cpu_threads.shard_count(3 * cpu_threads.MIN_ROWS, cpu_threads.MIN_WORK) == 3
        assert cpu_threads.shard_count(3 * cpu_threads.MIN_ROWS - 1, cpu_threads.MIN_WORK) == 1


def test_shard_count_override(monkeypatch):
    monkeypatch.setenv("BPGPU_CPU_SHARDS", "3")
    assert cpu_threads.shard_count(100, 10) == 3
    assert cpu_threads.shard_count(2, 10) == 2
    monkeypatch.setenv("BPGPU_CPU_SHARDS", "1")
    assert cpu_threads.shard_count(10_000, 1 << 30) == 1


@pytest.mark.parametrize("text", ["0", "-2", "two", "1.5"])
def test_bad_shard_override_is_rejected_before_the_step(monkeypatch, text):
    monkeypatch.setenv("BPGPU_CPU_SHARDS", text)
    net = bpgpu.Network(_layers(), loss="cross_entropy", backend="numpy", seed=0)
    X, y = _data(20)
    before = net.get_weights()
    with pytest.raises(ValueError, match="BPGPU_CPU_SHARDS must be a positive integer"):
        net.train_step(X, y)
    for a, b in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# -- the thread pool ------------------------------------------------------------------------------
def test_run_parallel_returns_results_in_order_and_runs_jobs_at_once():
    import threading

    barrier = threading.Barrier(3, timeout=10)  # deadlocks (and times out) unless all three run at once

    def job(i):
        return lambda: (barrier.wait(), i)[1]
    assert cpu_threads.run_parallel([job(0), job(1), job(2)]) == [0, 1, 2]


def test_run_parallel_raises_after_every_job_finished():
    done = []

    def fail():
        raise RuntimeError("shard failed")

    def slow():
        import time
        time.sleep(0.05)
        done.append(True)
    with pytest.raises(RuntimeError, match="shard failed"):
        cpu_threads.run_parallel([fail, slow])
    assert done == [True]


def test_run_parallel_carries_numpy_errstate_into_workers():
    def overflow():
        return np.float32(3e38) * np.float32(10.0)
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            cpu_threads.run_parallel([lambda: None, overflow])


def test_concurrent_pins_restore_the_original_thread_counts():
    """Two trainings in two threads overlap their pinned sections; the last one out restores."""
    import threading

    before = _blas_threads()
    inside, leave = threading.Barrier(2, timeout=10), threading.Event()
    seen = []

    def hold():
        with cpu_threads.one_blas_thread():
            inside.wait()
            seen.append(_blas_threads())
            leave.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    with cpu_threads.one_blas_thread():
        inside.wait()
    still_pinned = _blas_threads()
    leave.set()
    worker.join()
    if cpu_threads._blas_controller():
        assert seen == [[1] * len(before)] and still_pinned == [1] * len(before)
    assert _blas_threads() == before


def test_networks_training_at_once_in_two_threads(shards):
    """Sharded steps of two networks in two threads share the pool and the BLAS pin; each ends
    where it would have ended alone."""
    import threading

    shards(3)
    X, y = _data(90, seed=9)

    def make():
        return bpgpu.Network(_layers(), loss="cross_entropy", optimizer=Adam(1e-2),
                             backend="numpy", dtype="float64", seed=4)

    alone = make()
    for _ in range(6):
        alone.train_step(X, y)
    pair = [make(), make()]
    errors = []

    def train(net):
        try:
            for _ in range(6):
                net.train_step(X, y)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
    threads = [threading.Thread(target=train, args=(net,)) for net in pair]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for net in pair:
        for a, b in zip(net.get_weights(), alone.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("optimizer", ["adam_l2_clipnorm", "adamw_clipvalue", "sgd_nesterov_wd",
                                       "rmsprop_centered"])
def test_sharded_blocked_update_matches_reference(shards, monkeypatch, optimizer,
                                                  numpy_update_passes):
    """The range jobs of a sharded update run the blocked update (NumPy) in blocks of their own
    size (PARALLEL_BLOCK_BYTES), here shrunk to 40 float64 elements, so each range job updates
    its range block by block (a ragged block last), with the scratch blocks of its own range."""
    from bpgpu.kernels import _numpy_update as numpy_update

    monkeypatch.setattr(numpy_update, "BLOCK_BYTES", 48 * 8)
    monkeypatch.setattr(numpy_update, "PARALLEL_BLOCK_BYTES", 40 * 8)
    monkeypatch.setattr(numpy_update, "MIN_BLOCKS", 2)
    shards(2)

    def wider():  # 4868 parameters: two ranges (4096 and 772), so two range jobs at once
        return [Dense(6, 64, l2=0.05), ReLU(), Dense(64, 64, l2=0.05), Tanh(), Dense(64, 4)]

    nets = _nets(OPTIMIZERS[optimizer], layers=wider)
    X, y = _data(40, seed=5)
    losses = _train_both(nets, X, y, steps=4)
    plan = train_step_for(nets[0])
    assert len(plan._shards) == 2 and len(plan._ranges(2)) == 2
    assert {buf.shape[0] for name, buf in plan._work.items() if name.startswith("block t [range")} \
        == {40}
    _assert_same(nets, losses)
