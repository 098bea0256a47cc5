"""CUDA graphs of the fast step (bpgpu.kernels._cuda_graphs): capture once, replay with each
step's numbers. On the CPU the emulation records what a capturing stream launches and replays
it, so the capture/replay logic is checked here: the same numbers as the uncaptured step, the
per-step scalars (learning-rate schedule, Adam's bias corrections, SGD's first step) updated at
every replay, the partial last batch uncaptured, refusals with reasons. The real-GPU versions
at the end run in ci/gpu_check.sh."""

import contextlib

import numpy as np
import pytest
import test_kernels
from cuda_emu import cuda
from cuda_emu.backend import EmulatedCuPy, EmulatedCuPyBackend

import bpgpu
from bpgpu.layers import Dense, Dropout, ReLU, Tanh
from bpgpu.optimizers import SGD, Adam
from bpgpu.schedules import CosineAnnealingLR

OWN_BACKEND_FIXTURE = True  # conftest: ``backend`` below is the emulated CuPy backend


@pytest.fixture(scope="module")
def emulated():
    cuda.reset()
    emu = EmulatedCuPy()
    emu.build_all()
    return emu


@pytest.fixture
def backend(emulated):
    cuda.reset()
    return EmulatedCuPyBackend(emulated)


X = np.random.default_rng(0).standard_normal((50, 5))
Y = np.arange(50) % 3

OPTIMIZERS = {
    "adam_cosine_per_batch": lambda: Adam(CosineAnnealingLR(1e-2, T_max=7, per="batch")),
    "sgd_momentum_clipnorm": lambda: SGD(0.05, momentum=0.9, dampening=0.1, clip_norm=0.5),
    "adamw_clipvalue": lambda: bpgpu.optimizers.AdamW(1e-2, weight_decay=0.1, clip_value=0.05),
}


def _net(backend, graphs, optimizer="adam_cosine_per_batch", dtype="float32", layers=None):
    layers = layers or [Dense(5, 16), ReLU(), Dense(16, 8), Tanh(), Dense(8, 3)]
    return bpgpu.Network(layers, loss="cross_entropy", optimizer=OPTIMIZERS[optimizer](),
                         backend=backend, dtype=dtype, seed=1, cuda_graphs=graphs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_graph_replays_give_the_uncaptured_numbers(backend, optimizer, dtype):
    plain, graphed = _net(backend, False, optimizer, dtype), _net(backend, True, optimizer, dtype)
    h_plain = plain.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    h_graphed = graphed.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    graphs = graphed.engine.graphs
    # 4 batches an epoch (16, 16, 16, 2): the first two 16s warm up and capture, the rest replay
    assert graphs.replays == 3 * 3 - 2
    assert "captured for batch 16" in graphs.status and "captured" in graphed.engine.reason
    np.testing.assert_array_equal(h_plain["loss"], h_graphed["loss"])
    for a, b in zip(plain.get_weights(), graphed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert plain.optimizer.step_count == graphed.optimizer.step_count == 12


def test_a_replay_launches_the_graph_and_only_copies_outside_it(backend):
    net = _net(backend, True)
    xb, yb = net._data(X[:16], Y[:16])
    for _ in range(2):
        net._train_batch(xb, yb)  # warm-up, capture (+ its launch)
    cuda.log.clear()
    net._train_batch(xb, yb)
    outside = [name for name, _ in cuda.log if not name.startswith("graph:")]
    inside = [name for name, _ in cuda.log if name.startswith("graph:")]
    assert outside == ["copyto", "copyto", "memcpy_htod"]
    assert "graph:bpgpu_xent_ids_float32" in inside and "graph:matmul" in inside
    assert any(name.startswith("graph:bpgpu_adam_") for name in inside)


def test_the_check_catches_scalars_baked_into_the_graph(backend, emulated, monkeypatch):
    """Without the device scalar buffer, a replay would reuse the captured step's learning rate
    and bias corrections: the comparison above would fail."""
    monkeypatch.setattr(emulated.fused.CuPyKernels, "scalars_from",  # every launch passes
                        staticmethod(lambda *a, **k: contextlib.nullcontext()))  # values
    plain, graphed = _net(backend, False), _net(backend, True)
    plain.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    graphed.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    assert graphed.engine.graphs.replays > 0
    assert any(not np.allclose(a, b) for a, b in zip(plain.get_weights(), graphed.get_weights(), strict=True))


def test_a_new_optimizer_drops_the_graph(backend):
    plain, graphed = _net(backend, False), _net(backend, True)
    for net in (plain, graphed):
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0)
        net.optimizer = SGD(0.1, momentum=0.5).bind(net.backend)
        net.fit(X, Y, epochs=2, batch_size=16, verbose=0)
    assert graphed.engine.graphs.captured.optimizer is graphed.optimizer
    for a, b in zip(plain.get_weights(), graphed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_set_weights_between_replays_is_honoured(backend):
    plain, graphed = _net(backend, False), _net(backend, True)
    new = [w * 0.5 for w in plain.get_weights()]
    for net in (plain, graphed):
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0)
        net.set_weights(new)
        net.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(plain.get_weights(), graphed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_is_not_captured_and_says_why(backend):
    layers = [Dense(5, 16), ReLU(), Dropout(0.3), Dense(16, 3)]
    net = _net(backend, True, layers=layers)
    net.fit(X, Y, epochs=1, batch_size=16, verbose=0)
    graphs = net.engine.graphs
    assert graphs.captured is None and graphs.replays == 0
    assert "Dropout draws new random numbers" in graphs.status


def test_cuda_graphs_option_is_checked():
    with pytest.raises(ValueError, match="cuda_graphs=True needs the CuPy backend.*numpy"):
        bpgpu.Network([Dense(2, 1)], backend="numpy", cuda_graphs=True)
    with pytest.raises(TypeError, match="cuda_graphs must be True or False"):
        bpgpu.Network([Dense(2, 1)], backend="numpy", cuda_graphs="yes")
    assert bpgpu.Network([Dense(2, 1)], backend="numpy").cuda_graphs is False


# -- on a GPU (ci/gpu_check.sh) ---------------------------------------------------------------------
cupy_backend = test_kernels.cupy_backend  # the fixture: skipped with the reason without a GPU


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_gpu_graph_replays_give_the_uncaptured_numbers(cupy_backend, optimizer):
    plain, graphed = _net(cupy_backend, False, optimizer), _net(cupy_backend, True, optimizer)
    h_plain = plain.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    h_graphed = graphed.fit(X, Y, epochs=3, batch_size=16, verbose=0)
    assert graphed.engine.graphs.replays == 7
    np.testing.assert_allclose(h_plain["loss"], h_graphed["loss"], rtol=1e-6)
    for a, b in zip(plain.get_weights(), graphed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
