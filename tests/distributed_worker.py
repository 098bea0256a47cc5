"""Helper for tests/test_distributed.py: data-parallel runs under ``mpiexec -n 2``.

Usage: mpiexec -n 2 python distributed_worker.py SCENARIO OUT_DIR [CHECKPOINT]
       python distributed_worker.py single OUT_DIR

``train``: every case of :data:`CASES` trained with ``distributed=comm``, then fewer validation
rows than ranks, a divergence, early stopping, a stop from one rank and Dropout; each rank writes
its weights, histories and per-step all-reduce counts to OUT_DIR/train-rank{r}.json.
``errors``: bad calls that every rank must reject before the first step; each rank records what
it raised, then trains one good call to show the job is still usable.
``mixed``: :data:`MIXED`, float16 compute with a forced-overflow loss scale.
``three`` (on 3 ranks): an empty share in the last batch, with BatchNorm and Dropout.
``crash``: a callback raises on rank 1 alone mid-training; the whole job must end.
``single`` (run WITHOUT mpiexec): the cases on one rank, for comparison with a plain ``fit``.
``resume``: continue CHECKPOINT (written by one process) data-parallel, and write a checkpoint
from rank 0 for one process to continue.

The cases are built by :func:`build`, which the tests also use for the one-process oracle.
"""

import contextlib
import io
import json
import os
import sys

import numpy as np

import bpgpu
from bpgpu.callbacks import Callback, EarlyStopping, ModelCheckpoint
from bpgpu.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, ReLU, Tanh
from bpgpu.optimizers import SGD, Adam
from bpgpu.precision import LossScaler, MixedPrecision

RANKS = 2

#: name -> settings. ``batch`` is per rank; one process uses RANKS * batch. Sizes are chosen so
#: the last global batch is ragged (with an empty share on some rank in "reference_mse").
CASES = {
    # fast path, shuffled, L2, accuracy, validation split 3/4 between the ranks
    "fast_ce": {"n": 53, "batch": 5, "shuffle": True, "fast": None, "loss": "cross_entropy",
                "opt": "adam", "l2": 1e-3, "metrics": ["accuracy"], "n_val": 7, "epochs": 3},
    # reference path, in order, SGD with momentum and clip_norm; last batch has 1 row for 2 ranks
    "reference_mse": {"n": 41, "batch": 4, "shuffle": False, "fast": False, "loss": "mse",
                      "opt": "sgd", "l2": 0.0, "metrics": ["mae"], "n_val": None, "epochs": 3},
    # the fast path's row shards (forced), summed before the all-reduce
    "sharded": {"n": 64, "batch": 16, "shuffle": True, "fast": None, "loss": "cross_entropy",
                "opt": "adam", "l2": 0.0, "metrics": None, "n_val": 9, "epochs": 2, "shards": 2},
    # batch_size=None: the whole set is the global batch, cut in two
    "full_batch": {"n": 25, "batch": None, "shuffle": True, "fast": None, "loss": "mse",
                   "opt": "adam", "l2": 0.0, "metrics": ["rmse"], "n_val": 5, "epochs": 3},
    # BatchNorm after Dense (statistics over the global batch), shuffled, validation
    "batchnorm": {"n": 47, "batch": 5, "shuffle": True, "fast": None, "loss": "cross_entropy",
                  "opt": "adam", "l2": 1e-3, "metrics": ["accuracy"], "n_val": 6, "epochs": 3,
                  "norm": "dense"},
    # BatchNorm after Conv2D (per channel over rows and pixels), in order, SGD
    "conv_batchnorm": {"n": 22, "batch": 4, "shuffle": False, "fast": None, "loss": "mse",
                       "opt": "sgd", "l2": 0.0, "metrics": None, "n_val": None, "epochs": 2,
                       "norm": "conv"},
    # array_api_strict: reference path with host staging
    "strict": {"n": 30, "batch": 4, "shuffle": True, "fast": None, "loss": "mse", "opt": "adam",
               "l2": 1e-2, "metrics": None, "n_val": None, "epochs": 2,
               "backend": "array_api_strict"},
}

#: Training that blows up in its second epoch (SGD without clipping at a huge rate).
DIVERGING = {**CASES["reference_mse"], "fast": None, "lr": 1e6, "clip_norm": None, "epochs": 4}

#: Fewer validation rows than ranks: every rank evaluates all of them.
TINY_VALIDATION = {**CASES["fast_ce"], "n_val": 1, "epochs": 2}


def data(case, seed=7):
    """``(X, y, validation or None)`` of a case, float64."""
    rng = np.random.default_rng(seed)
    n, n_val = case["n"], case["n_val"] or 0
    X = rng.normal(size=(n + n_val, 6))
    if case.get("norm") == "conv":  # 1 x 2 x 3 "images" of the same numbers
        X = X.reshape(-1, 1, 2, 3)
        y = np.stack([np.sin(X[:, 0, 0, 0]), X[:, 0, 1, 1] * X[:, 0, 1, 2]], axis=1)
        return X[:n], y[:n], (X[n:], y[n:]) if n_val else None
    if case["loss"] == "cross_entropy":
        y = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
    else:
        y = np.stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]], axis=1)
    val = (X[n:], y[n:]) if n_val else None
    return X[:n], y[:n], val


def build(case, seed=3, dropout=None, batchnorm=False):
    """A float64 network for ``case``."""
    out = 3 if case["loss"] == "cross_entropy" else 2
    if case.get("norm") == "conv":
        layers = [Conv2D(1, 3, 2, padding=1), BatchNorm(3), Tanh(), Flatten(), Dense(36, out)]
    else:
        layers = [Dense(6, 8, l2=case["l2"]), Tanh() if case["loss"] == "mse" else ReLU()]
    if batchnorm or case.get("norm") == "dense":
        layers.append(BatchNorm(8))
    if dropout:
        layers.append(Dropout(dropout))
    if case.get("norm") != "conv":
        layers.append(Dense(8, out, l2=case["l2"]))
    opt = Adam(lr=case.get("lr", 0.01)) if case["opt"] == "adam" \
        else SGD(lr=case.get("lr", 0.05), momentum=0.9, clip_norm=case.get("clip_norm", 0.5))
    precision = None if "scaler" not in case else \
        MixedPrecision("float16", LossScaler(**case["scaler"]))
    return bpgpu.Network(layers, loss=case["loss"], optimizer=opt, seed=seed,
                         dtype="float32" if precision else "float64", precision=precision,
                         backend=case.get("backend", "numpy"), fast=case["fast"])


def fit_kwargs(case, ranks):
    X, y, val = data(case)
    batch = None if case["batch"] is None else case["batch"] * ranks
    return {"x": X, "y": y, "epochs": case["epochs"], "batch_size": batch,
            "shuffle": case["shuffle"], "metrics": case["metrics"], "validation_data": val,
            "verbose": 0}


class StepCounter(Callback):
    """Records the all-reduce count after every batch (the fit's gradient hook counts them)
    and the global loss the batch logs carry."""

    def __init__(self):
        self.calls, self.losses = [], []

    def on_batch_end(self, batch, logs=None):
        sync = self.network.gradient_hooks[0]  # the fit's GradientSync comes first
        self.calls.append(sync.calls)
        self.losses.append(float(logs["loss"]))


class StopOnRank(Callback):
    """Asks to stop at the end of epoch ``epoch``, on rank ``rank`` only."""

    def __init__(self, rank, epoch, comm):
        self.rank, self.epoch, self.comm = rank, epoch, comm

    def on_epoch_end(self, epoch, logs=None):
        if self.comm.rank == self.rank and epoch == self.epoch:
            self.network.stop_training = True


class CountingCheckpoint(ModelCheckpoint):
    def __init__(self, path):
        super().__init__(path)
        self.saved = 0

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        self.saved += 1


def _result(net, history):
    return {"weights": [w.tolist() for w in net.get_weights()], "history": history.history,
            "epoch": net.epoch}


def train(comm, out):
    results = {}
    for name, case in CASES.items():
        if case.get("shards"):
            os.environ["BPGPU_CPU_SHARDS"] = str(case["shards"])
        net = build(case, seed=3 + comm.rank)  # rank 0's weights must win
        kwargs = fit_kwargs(case, 1)
        counter = StepCounter()
        history = net.fit(kwargs.pop("x"), kwargs.pop("y"), callbacks=[counter],
                          distributed=comm, **kwargs)
        os.environ.pop("BPGPU_CPU_SHARDS", None)
        results[name] = {**_result(net, history), "calls": counter.calls,
                         "batch_losses": counter.losses,
                         "transport": comm.transport_for(net.backend).reason}
    # memory-mapped training data (rank 0 writes it, every rank maps it)
    case = CASES["fast_ce"]
    kwargs = fit_kwargs(case, 1)
    path = os.path.join(out, "X.npy")
    if comm.rank == 0:
        np.save(path, kwargs["x"])
    comm.mpi.Barrier()
    kwargs["x"] = np.load(path, mmap_mode="r")
    net = build(case)
    results["memmap"] = _result(net, net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm,
                                             **kwargs))
    net = build(TINY_VALIDATION)
    kwargs = fit_kwargs(TINY_VALIDATION, 1)
    results["tiny_validation"] = _result(net, net.fit(kwargs.pop("x"), kwargs.pop("y"),
                                                      distributed=comm, **kwargs))
    net = build(DIVERGING)
    kwargs = fit_kwargs(DIVERGING, 1)
    try:
        with np.errstate(all="ignore"):  # the overflow is the point
            net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
        raised = None
    except bpgpu.TrainingDivergedError as exc:
        raised = [exc.epoch, exc.step]
    results["diverging"] = {**_result(net, net.history), "raised": raised}
    # early stopping decides the same everywhere; a stop asked for on rank 1 alone stops all
    case = CASES["fast_ce"]
    net = build(case)
    kwargs = fit_kwargs(case, 1)
    kwargs["epochs"] = 30
    stopper = EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), callbacks=[stopper], distributed=comm,
                      **kwargs)
    results["early_stopping"] = {**_result(net, history), "stopped": stopper.stopped_epoch}
    net = build(case)
    kwargs = fit_kwargs(case, 1)
    kwargs["epochs"] = 10
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), callbacks=[StopOnRank(1, 1, comm)],
                      distributed=comm, **kwargs)
    results["stop_on_rank_1"] = _result(net, history)
    # only rank 0 prints
    net = build(case)
    kwargs = fit_kwargs(case, 1)
    kwargs["verbose"] = 2
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
    results["printed"] = printed.getvalue()
    # dropout: the masks of one process with the global batch
    net = build(case, dropout=0.3)
    kwargs = fit_kwargs(case, 1)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
    results["dropout"] = {**_result(net, history),
                          "mask": net.backend.to_numpy(
                              net.layers[2].forward(np.ones((4, 8)), training=True)).tolist()}
    _write(out, "train", comm.rank, results)


def errors(comm, out):
    case = CASES["fast_ce"]
    X, y, _ = data(case)

    def attempt(label, net=None, **changes):
        net = net or build(case)
        before = net.get_weights()
        kwargs = {"x": X, "y": y, "epochs": 2, "batch_size": 5, "verbose": 0, **changes}
        try:
            net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
            outcome = {"raised": None}
        except Exception as exc:  # noqa: BLE001 - the test inspects what was raised
            outcome = {"raised": type(exc).__name__, "message": str(exc)}
        outcome["unchanged"] = all(np.array_equal(a, b) for a, b in zip(before, net.get_weights(), strict=True))
        outcome["epoch"] = net.epoch
        results[label] = outcome

    results = {}
    other = comm.rank == 1
    attempt("rows differ", x=X[:50] if other else X, y=y[:50] if other else y)
    attempt("dtype differs", x=X.astype(np.float32) if other else X)
    attempt("values differ", x=X + 1.0 if other else X)
    attempt("architecture differs", net=bpgpu.Network(
        [Dense(6, 9 if other else 8), ReLU(), Dense(9 if other else 8, 3)],
        loss="cross_entropy", dtype="float64", seed=3))
    attempt("batch size differs", batch_size=6 if other else 5)
    attempt("one rank rejects its arguments", epochs=0 if other else 2)
    attempt("r2 metric", net=build(CASES["reference_mse"]), y=np.stack([y, y], axis=1) * 1.0,
            metrics=["r2"])
    attempt("fewer samples than ranks", x=X[:1], y=y[:1])
    attempt("good call afterwards")
    _write(out, "errors", comm.rank, results)


def resume(comm, out, checkpoint):
    """Continue a one-process checkpoint data-parallel for 2 epochs; rank 0 saves the network
    after each epoch (resume-2.npz, resume-3.npz). The history written is the network's whole
    history (rank 0's, broadcast, then extended)."""
    case = CASES["fast_ce"]
    net = bpgpu.load(checkpoint, backend="numpy") if comm.rank == 0 else build(case, seed=99)
    kwargs = fit_kwargs(case, 1)
    saver = CountingCheckpoint(os.path.join(out, "resume-{epoch}.npz"))
    net.fit(kwargs.pop("x"), kwargs.pop("y"), epochs=2, distributed=comm, callbacks=[saver],
            **{k: v for k, v in kwargs.items() if k != "epochs"})
    _write(out, "resume", comm.rank, {**_result(net, net.history), "saved": saver.saved})


class FailOnRank(Callback):
    """Raises at the end of epoch 1 on rank ``rank`` only."""

    def __init__(self, rank, comm):
        self.rank, self.comm = rank, comm

    def on_epoch_end(self, epoch, logs=None):
        if self.comm.rank == self.rank and epoch == 1:
            raise RuntimeError(f"a callback failed on rank {self.rank}")


def crash(comm, out):
    """A callback fails on rank 1 alone in the middle of training: the job must end."""
    case = CASES["fast_ce"]
    net = build(case)
    kwargs = fit_kwargs(case, 1)
    kwargs["epochs"] = 50
    net.fit(kwargs.pop("x"), kwargs.pop("y"), callbacks=[FailOnRank(1, comm)], distributed=comm,
            **kwargs)
    _write(out, "crash", comm.rank, {"finished": True})  # never reached


#: Mixed float16 precision (float32 masters) with a loss scale far too large at first: the first
#: steps overflow float16 and are skipped while the scale backs off; it then grows every 3 steps,
#: so it keeps meeting overflow. Both ranks and one process must skip exactly the same steps.
MIXED = {"n": 53, "batch": 5, "shuffle": True, "fast": None, "loss": "cross_entropy",
         "opt": "adam", "l2": 1e-3, "metrics": ["accuracy"], "n_val": 7, "epochs": 4,
         "scaler": {"init_scale": 2.0 ** 28, "growth_interval": 2000}}


def mixed(comm, out):
    net = build(MIXED, seed=3 + comm.rank)
    kwargs = fit_kwargs(MIXED, 1)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
    _write(out, "mixed", comm.rank, {**_result(net, history),
                                     "scaler": net.precision.scaler.state_dict()})


#: Run on 3 ranks: global batches of 12 rows, the last of 2 rows, so rank 0's share of it is
#: empty (it steps on one row weighted zero) while the others' BatchNorm statistics and Dropout
#: masks still come out as one process's.
THREE_RANKS = {**CASES["fast_ce"], "n": 26, "batch": 4, "n_val": 4, "norm": "dense"}


def three(comm, out):
    net = build(THREE_RANKS, dropout=0.2)
    kwargs = fit_kwargs(THREE_RANKS, 1)
    history = net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
    _write(out, "three", comm.rank, _result(net, history))


def single(out):
    """Without mpiexec: one rank, every case; must match a plain fit bit for bit."""
    comm = bpgpu.distributed.init()
    results = {}
    for name, case in CASES.items():
        if case.get("shards"):
            os.environ["BPGPU_CPU_SHARDS"] = str(case["shards"])
        net = build(case)
        kwargs = fit_kwargs(case, 1)
        history = net.fit(kwargs.pop("x"), kwargs.pop("y"), distributed=comm, **kwargs)
        os.environ.pop("BPGPU_CPU_SHARDS", None)
        results[name] = _result(net, history)
    _write(out, "single", comm.rank, {"size": comm.size, **results})


def _write(out, scenario, rank, results):
    with open(os.path.join(out, f"{scenario}-rank{rank}.json"), "w") as f:
        json.dump(results, f)


def main(scenario, out, *rest):
    if scenario == "single":
        single(out)
        return
    comm = bpgpu.distributed.init()
    expected = 3 if scenario == "three" else RANKS
    if comm.size != expected:
        raise SystemExit(f"run under mpiexec -n {expected}; this job has {comm.size} ranks")
    {"train": train, "errors": errors, "resume": resume, "crash": crash,
     "three": three, "mixed": mixed}[scenario](comm, out, *rest)


if __name__ == "__main__":
    main(*sys.argv[1:])
