"""Data-parallel training (bpgpu.distributed): 2 ranks under mpiexec against one process.

The oracle is the closed-form equivalence the design promises: N ranks with batch b give the
weights and per-epoch values of one process with batch N b (float64, 1e-9). The MPI runs live in
tests/distributed_worker.py and are launched with a timeout, in their own process group, so a
hang fails the test instead of blocking the suite. The transport choice, the row shares and the
gradient hook are tested in this process, without MPI.
"""

import importlib.util
import itertools
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest

import bpgpu
from bpgpu.distributed import GradientSync, choose_transport, row_share

import distributed_worker as worker

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
TIMEOUT = 120
MPI_MISSING = importlib.util.find_spec("mpi4py") is None


def _mpiexec():
    local = pathlib.Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(
    MPI_MISSING or _mpiexec() is None,
    reason='mpi4py or mpiexec is missing: pip install "bpgpu[mpi]" (mpi4py and the MPICH wheel)')


def _run(scenario, out, *args, ranks=worker.RANKS):
    """``(returncode, stdout, stderr)`` of the worker on ``ranks`` ranks (None: plain python, no
    mpiexec); the test fails (never hangs) after TIMEOUT seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}
    env.pop("BPGPU_CPU_SHARDS", None)
    launcher = [] if ranks is None else [_mpiexec(), "-n", str(ranks)]
    cmd = [*launcher, sys.executable, str(HERE / "distributed_worker.py"), scenario, str(out),
           *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"mpiexec {scenario} did not finish within {TIMEOUT} s (a hang)")
    return proc.returncode, stdout, stderr


def _launch(scenario, out, *args, ranks=worker.RANKS):
    """Run the worker (see :func:`_run`); every rank's results."""
    code, stdout, stderr = _run(scenario, out, *args, ranks=ranks)
    assert code == 0, f"mpiexec {scenario} failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return [json.loads((pathlib.Path(out) / f"{scenario}-rank{r}.json").read_text())
            for r in range(ranks or 1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _launch("train", tmp_path_factory.mktemp("train"))


@pytest.fixture(scope="module")
def rejected(tmp_path_factory):
    results = _launch("errors", tmp_path_factory.mktemp("errors"))
    return {label: [r[label] for r in results] for label in results[0]}


def _one_process(case, callbacks=None, **changes):
    """The oracle: one process, batch RANKS * b, same seed as rank 0."""
    if case.get("shards"):
        os.environ["BPGPU_CPU_SHARDS"] = str(case["shards"])
    try:
        net = worker.build(case)
        kwargs = {**worker.fit_kwargs(case, worker.RANKS), **changes}
        history = net.fit(kwargs.pop("x"), kwargs.pop("y"), callbacks=callbacks, **kwargs)
    finally:
        os.environ.pop("BPGPU_CPU_SHARDS", None)
    return net, history


def _assert_same_run(result, net, history):
    for got, want in zip(result["weights"], net.get_weights(), strict=True):
        np.testing.assert_allclose(np.array(got), want, rtol=1e-9, atol=1e-12)
    assert set(result["history"]) == set(history.history)
    for key, values in history.history.items():
        np.testing.assert_allclose(result["history"][key], values, rtol=1e-9, atol=1e-12,
                                   err_msg=key)


# -- two ranks under mpiexec ----------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("name", list(worker.CASES))
def test_two_ranks_train_like_one_process_with_the_global_batch(trained, name):
    case = worker.CASES[name]
    net, history = _one_process(case)
    _assert_same_run(trained[0][name], net, history)
    assert trained[1][name]["weights"] == trained[0][name]["weights"]  # bit for bit
    assert trained[1][name]["history"] == trained[0][name]["history"]


@needs_mpi
def test_one_rank_without_mpiexec_is_a_plain_fit_bit_for_bit(tmp_path):
    (single,) = _launch("single", tmp_path, ranks=None)
    assert single["size"] == 1
    for name, case in worker.CASES.items():
        net, history = _one_process(case, batch_size=case["batch"])
        assert single[name]["weights"] == [w.tolist() for w in net.get_weights()], name
        assert single[name]["history"] == history.history, name


@needs_mpi
def test_only_rank_0_prints(trained):
    assert trained[0]["printed"].count("epoch ") == worker.CASES["fast_ce"]["epochs"]
    assert trained[1]["printed"] == ""


@needs_mpi
@pytest.mark.parametrize("name", list(worker.CASES))
def test_one_all_reduce_per_step(trained, name):
    case = worker.CASES[name]
    global_batch = case["n"] if case["batch"] is None else worker.RANKS * case["batch"]
    steps = math.ceil(case["n"] / global_batch) * case["epochs"]
    for rank in range(worker.RANKS):
        assert trained[rank][name]["calls"] == list(range(1, steps + 1))


@needs_mpi
def test_batch_logs_carry_the_global_batch_loss(trained):
    case = worker.CASES["reference_mse"]  # in order, so the batches are known
    result = trained[0]["reference_mse"]
    assert trained[1]["reference_mse"]["batch_losses"] == result["batch_losses"]
    global_batch = worker.RANKS * case["batch"]
    sizes = [min(global_batch, case["n"] - s) for s in range(0, case["n"], global_batch)]
    first_epoch = result["batch_losses"][:len(sizes)]
    assert np.dot(first_epoch, sizes) / case["n"] == pytest.approx(result["history"]["loss"][0],
                                                                   rel=1e-12)


@needs_mpi
def test_transport_for_numpy_and_strict_networks(trained):
    assert "in place" in trained[0]["fast_ce"]["transport"]
    assert "host staging" in trained[0]["strict"]["transport"]


@needs_mpi
def test_three_ranks_with_an_empty_share_batchnorm_and_dropout(tmp_path):
    ranks = _launch("three", tmp_path, ranks=3)
    case = worker.THREE_RANKS
    net = worker.build(case, dropout=0.2)
    kwargs = worker.fit_kwargs(case, 3)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), **kwargs)
    _assert_same_run(ranks[0], net, history)
    assert ranks[1] == ranks[0] and ranks[2] == ranks[0]


@needs_mpi
def test_mixed_precision_skips_the_steps_one_process_skips(tmp_path):
    """float16 compute, float32 masters, a loss scale that overflows at first and keeps growing
    into overflow: every rank skips exactly the steps one process with the global batch skips
    (the scale sequence is the same), and the weights agree to float16's rounding."""
    ranks = _launch("mixed", tmp_path)
    net, history = _one_process(worker.MIXED)
    oracle = net.precision.scaler.state_dict()
    assert oracle["skipped_steps"] >= 5  # the forced overflow did happen, and more than once
    assert ranks[0]["scaler"] == oracle
    assert ranks[0]["history"]["loss_scale"] == history.history["loss_scale"]
    assert ranks[0]["history"]["skipped_steps"] == history.history["skipped_steps"]
    for got, want in zip(ranks[0]["weights"], net.get_weights(), strict=True):
        np.testing.assert_allclose(np.array(got), want, rtol=0, atol=5e-4)
    np.testing.assert_allclose(ranks[0]["history"]["loss"], history.history["loss"], rtol=1e-5)
    assert ranks[1] == ranks[0]


@needs_mpi
def test_memory_mapped_training_data(trained):
    for rank in trained:
        assert rank["memmap"]["weights"] == rank["fast_ce"]["weights"]
        assert rank["memmap"]["history"] == rank["fast_ce"]["history"]


@needs_mpi
def test_fewer_validation_rows_than_ranks_are_evaluated_on_every_rank(trained):
    net, history = _one_process(worker.TINY_VALIDATION)
    _assert_same_run(trained[0]["tiny_validation"], net, history)
    assert trained[1]["tiny_validation"] == trained[0]["tiny_validation"]


@needs_mpi
def test_divergence_is_found_at_the_same_step_on_every_rank(trained):
    net = worker.build(worker.DIVERGING)
    kwargs = worker.fit_kwargs(worker.DIVERGING, worker.RANKS)
    with np.errstate(all="ignore"), pytest.raises(bpgpu.TrainingDivergedError) as caught:
        net.fit(kwargs.pop("x"), kwargs.pop("y"), **kwargs)
    ranks = [r["diverging"] for r in trained]
    assert ranks[0]["raised"] == ranks[1]["raised"] == [caught.value.epoch, caught.value.step]
    assert ranks[1]["weights"] == ranks[0]["weights"]  # both rewound to the last finite step
    _assert_same_run(ranks[0], net, net.history)


@needs_mpi
def test_early_stopping_decides_the_same_on_every_rank(trained):
    stopper = bpgpu.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    net, history = _one_process(worker.CASES["fast_ce"], callbacks=[stopper], epochs=30)
    ranks = [r["early_stopping"] for r in trained]
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == stopper.stopped_epoch
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == net.epoch < 30
    _assert_same_run(ranks[0], net, history)


@needs_mpi
def test_a_stop_asked_on_one_rank_stops_every_rank(trained):
    assert [r["stop_on_rank_1"]["epoch"] for r in trained] == [2, 2]
    assert trained[0]["stop_on_rank_1"]["weights"] == trained[1]["stop_on_rank_1"]["weights"]


@needs_mpi
def test_dropout_masks_are_those_of_one_process_with_the_global_batch(trained):
    case = worker.CASES["fast_ce"]
    net = worker.build(case, dropout=0.3)
    kwargs = worker.fit_kwargs(case, worker.RANKS)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), **kwargs)
    ranks = [r["dropout"] for r in trained]
    _assert_same_run(ranks[0], net, history)
    assert ranks[1]["weights"] == ranks[0]["weights"]
    # the device generators end where one process's does: the next mask is the same everywhere
    mask = net.backend.to_numpy(net.layers[2].forward(np.ones((4, 8)), training=True)).tolist()
    assert ranks[0]["mask"] == ranks[1]["mask"] == mask


REJECTIONS = {  # label -> (rank 0's error, rank 1's error, words in rank 0's message)
    "rows differ": ("DistributedError", "DistributedError", "X: rank 1 has shape (50, 6)"),
    "dtype differs": ("DistributedError", "DistributedError", "dtype float32"),
    "values differ": ("DistributedError", "DistributedError", "data (sampled rows)"),
    "architecture differs": ("DistributedError", "DistributedError", "parameter shapes"),
    "batch size differs": ("DistributedError", "DistributedError", '"batch_size": 6'),
    "one rank rejects its arguments": ("DistributedError", "ValueError",
                                       "rank 1: ValueError: epochs must be"),
    "r2 metric": ("ValueError", "ValueError", "metric 'r2'"),
    "fewer samples than ranks": ("ValueError", "ValueError", "at least one sample per rank"),
}


@needs_mpi
@pytest.mark.parametrize("label", list(REJECTIONS))
def test_bad_input_is_rejected_on_every_rank_before_the_first_step(rejected, label):
    first, second, words = REJECTIONS[label]
    ranks = rejected[label]
    assert [r["raised"] for r in ranks] == [first, second]
    assert words in ranks[0]["message"]
    assert all(r["unchanged"] and r["epoch"] == 0 for r in ranks)


@needs_mpi
def test_the_job_trains_normally_after_rejected_calls(rejected):
    assert [r["raised"] for r in rejected["good call afterwards"]] == [None, None]
    assert [r["epoch"] for r in rejected["good call afterwards"]] == [2, 2]


@needs_mpi
def test_checkpoints_move_between_one_process_and_distributed(tmp_path):
    case = worker.CASES["fast_ce"]
    straight, straight_history = _one_process(case, epochs=3)
    first, _ = _one_process(case, epochs=1)
    first.save(tmp_path / "one-process.npz")
    ranks = _launch("resume", tmp_path, tmp_path / "one-process.npz")
    # one process -> distributed: epochs 2 and 3 on two ranks continue epoch 1 exactly
    assert ranks[0]["epoch"] == ranks[1]["epoch"] == 3
    assert ranks[1]["weights"] == ranks[0]["weights"]
    _assert_same_run(ranks[0], straight, straight_history)
    assert [r["saved"] for r in ranks] == [2, 0]  # rank 1 never ran its checkpoint callback
    # distributed -> one process: rank 0's file after epoch 2 continues in one process
    assert sorted(p.name for p in tmp_path.glob("resume-*.npz")) == ["resume-2.npz",
                                                                     "resume-3.npz"]
    resumed = bpgpu.load(tmp_path / "resume-2.npz", backend="numpy")
    kwargs = worker.fit_kwargs(case, worker.RANKS)
    resumed.fit(kwargs.pop("x"), kwargs.pop("y"), **{**kwargs, "epochs": 1})
    assert resumed.epoch == 3
    for got, want in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(resumed.history.history["loss"], straight_history.history["loss"],
                               rtol=1e-9)


@needs_mpi
def test_an_error_on_one_rank_mid_training_ends_the_job_instead_of_hanging(tmp_path):
    code, stdout, stderr = _run("crash", tmp_path)
    output = f"exit status {code}\nstdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-3000:]}"
    assert code != 0, output
    assert "rank 1 of 2 failed during training (RuntimeError: a callback failed on rank 1)" \
        in stderr, output
    assert not list(tmp_path.glob("crash-*.json")), output


# -- in this process, without MPI ----------------------------------------------------------------------
def test_init_without_mpi4py_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes "from mpi4py import MPI" fail
    with pytest.raises(bpgpu.DistributedUnavailableError, match=r"bpgpu\[mpi\]"):
        bpgpu.distributed.init()
    with pytest.raises(ValueError, match="gpu_transport"):
        bpgpu.distributed.init(gpu_transport="gloo")


def test_fit_refuses_anything_but_a_communicator():
    net = worker.build(worker.CASES["fast_ce"])
    before = net.get_weights()
    X, y, _ = worker.data(worker.CASES["fast_ce"])
    with pytest.raises(TypeError, match="Communicator from bpgpu.distributed.init"):
        net.fit(X, y, distributed=0, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, net.get_weights(), strict=True))
    assert net.epoch == 0


def _probe(usable, why):
    return lambda: (usable, why)


@pytest.mark.parametrize("backend_name, requested, probe, kind, words", [
    ("numpy", "auto", None, "mpi", "in place"),
    ("numpy", "mpi", None, "mpi", "in place"),
    ("torch", "auto", None, "mpi", "host staging"),
    ("array_api_strict", "auto", None, "mpi", "host staging"),
    ("cupy", "auto", _probe(True, "NCCL 22703"), "nccl", "unique id broadcast over MPI"),
    ("cupy", "nccl", _probe(True, "NCCL 22703"), "nccl", "NCCL 22703"),
    ("cupy", "auto", _probe(False, "no libnccl"), "mpi", "NCCL unavailable (no libnccl)"),
    ("cupy", "mpi", _probe(True, "NCCL 22703"), "mpi", "gpu_transport='mpi' asked for it"),
])
def test_transport_choice(backend_name, requested, probe, kind, words):
    got, reason = choose_transport(backend_name, requested, probe)
    assert got == kind
    assert words in reason


def test_transport_choice_refusals():
    with pytest.raises(bpgpu.DistributedUnavailableError, match="CuPy networks only"):
        choose_transport("numpy", "nccl")
    with pytest.raises(bpgpu.DistributedUnavailableError, match="NCCL cannot serve: no libnccl"):
        choose_transport("cupy", "nccl", _probe(False, "no libnccl"))
    with pytest.raises(ValueError, match="gpu_transport must be one of"):
        choose_transport("cupy", "gloo")


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None,
                    reason="checks the fallback reason where CuPy is absent; CuPy is installed")
def test_nccl_falls_back_with_the_reason_where_cupy_is_missing():
    kind, reason = choose_transport("cupy", "auto")
    assert kind == "mpi"
    assert "cupy.cuda.nccl does not import" in reason


@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("start, stop", [(0, 10), (20, 21), (5, 8), (0, 33)])
def test_row_shares_cover_the_batch_once(size, start, stop):
    shares = [row_share(start, stop, rank, size) for rank in range(size)]
    assert shares[0][0] == start and shares[-1][1] == stop
    assert all(a[1] == b[0] for a, b in itertools.pairwise(shares))
    lengths = [b - a for a, b in shares]
    assert max(lengths) - min(lengths) <= 1


class _PlusOtherRank:
    """A stand-in transport: the 'other rank' contributes ``other`` (a closed-form sum); it
    answers with a new array, as host staging does, or in place, as MPI on NumPy does."""

    def __init__(self, other, in_place):
        self.other, self.in_place, self.seen = other, in_place, []

    def allreduce(self, buf):
        self.seen.append(buf.copy())
        if self.in_place:
            buf += self.other
            return buf
        return buf + self.other


@pytest.mark.parametrize("in_place", [True, False])
def test_gradient_sync_scales_then_sums_the_flat_buffer_in_place(in_place):
    flat = np.array([0.0, 1.0, -2.0, 4.0])
    other = np.linspace(0.0, 1.0, 4)
    transport = _PlusOtherRank(other, in_place)
    sync = GradientSync(transport)
    sync.weight = 0.25
    buffer = flat.copy()
    assert sync(buffer, 3) is None
    assert len(transport.seen) == sync.calls == 1  # one all-reduce for every parameter
    np.testing.assert_array_equal(transport.seen[0], 0.25 * flat)
    np.testing.assert_array_equal(buffer, 0.25 * flat + other)  # the engine's buffer itself


def test_gradient_sync_empty_share_contributes_exact_zeros():
    buffer = np.array([np.nan, 3.0, -np.inf])  # the dummy row's gradient, whatever it is
    transport = _PlusOtherRank(np.array([1.0, 2.0, 3.0]), in_place=False)
    sync = GradientSync(transport)
    sync.weight = 0.0
    sync(buffer, 1)
    np.testing.assert_array_equal(transport.seen[0], np.zeros(3))
    np.testing.assert_array_equal(buffer, [1.0, 2.0, 3.0])


# -- the NCCL path against a stand-in for cupy.cuda.nccl (no GPU here: wiring only) --------------------
class _FakeNccl(types.ModuleType):
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0

    def __init__(self, available=True, version=22703):
        super().__init__("cupy.cuda.nccl")
        self.available, self._version, self.made, self.calls = available, version, [], []
        fake = self

        class NcclCommunicator:
            def __init__(self, size, uid, rank):
                fake.made.append((size, uid, rank))

            def allReduce(self, *args):
                fake.calls.append(args)

        self.NcclCommunicator = NcclCommunicator

    @staticmethod
    def get_unique_id():
        return tuple(range(-64, 64))  # NCCL_UNIQUE_ID_BYTES = 128 signed chars

    def get_version(self):
        if isinstance(self._version, Exception):
            raise self._version
        return self._version


def _install_fake_cupy(monkeypatch, nccl):
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl
    cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=4242)
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    for name, module in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", nccl)):
        monkeypatch.setitem(sys.modules, name, module)


class _FakeComm:
    """Rank ``rank`` of 2; broadcasts deliver what rank 0 sent (kept in ``sent``)."""

    sent = None

    def __init__(self, rank):
        self.rank, self.size = rank, 2

    def broadcast_bytes(self, data):
        if self.rank == 0:
            _FakeComm.sent = data
        return _FakeComm.sent


class _FakeDeviceArray:
    def __init__(self, n, dtype):
        self.size, self.dtype = n, np.dtype(dtype)
        self.data = types.SimpleNamespace(ptr=1000 + n)


@pytest.mark.parametrize("dtype, code", [("float32", 7), ("float64", 8)])
def test_nccl_path_bootstraps_over_mpi_and_sums_in_place(monkeypatch, dtype, code):
    from bpgpu.distributed import _NCCLTransport

    nccl = _FakeNccl()
    _install_fake_cupy(monkeypatch, nccl)
    ranks = [_NCCLTransport(_FakeComm(rank), None, "test") for rank in (0, 1)]
    assert nccl.made == [(2, nccl.get_unique_id(), 0), (2, nccl.get_unique_id(), 1)]
    buf = _FakeDeviceArray(10, dtype)
    assert ranks[1].allreduce(buf) is buf
    assert nccl.calls == [(buf.data.ptr, buf.data.ptr, 10, code, nccl.NCCL_SUM, 4242)]


@pytest.mark.parametrize("nccl, usable, words", [
    (_FakeNccl(), True, "NCCL 22703"),
    (_FakeNccl(available=False), False, "built without NCCL"),
    (_FakeNccl(version=RuntimeError("libnccl.so.2 not found")), False, "libnccl.so.2 not found"),
])
def test_nccl_probe_reasons(monkeypatch, nccl, usable, words):
    from bpgpu.distributed import _probe_nccl

    _install_fake_cupy(monkeypatch, nccl)
    got, reason = _probe_nccl()
    assert got is usable and words in reason
    kind, why = choose_transport("cupy", "auto")
    assert kind == ("nccl" if usable else "mpi") and words in why


def test_row_window_hands_each_rank_its_rows_of_the_global_draw():
    backend = bpgpu.get_backend("numpy")
    reference = backend.make_rng(np.random.SeedSequence(5))
    whole = reference.uniform((10, 3), np.float64)
    pieces = []
    for offset, rows in ((0, 3), (3, 3), (6, 4)):  # three ranks' shares of 10 rows
        rng = backend.make_rng(np.random.SeedSequence(5))
        window = bpgpu.distributed.RowWindow(rng)
        window.select(offset, rows, 10)
        pieces.append(rng.uniform((rows, 3), np.float64))
        assert rng.get_state() == reference.get_state()  # the same draws as one process
        other = rng.uniform((7, 3), np.float64)  # not this rank's rows: passes through
        assert other.shape == (7, 3)
        window.remove()
        assert "uniform" not in vars(rng)
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
