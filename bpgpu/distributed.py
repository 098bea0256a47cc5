"""Data-parallel training: one ``fit`` on several processes, over MPI or NCCL.

    comm = bpgpu.distributed.init()      # under ``mpiexec -n N``; size 1 without it
    net.fit(X, y, batch_size=32, distributed=comm)

Every rank passes the whole training set and the same network; ``batch_size`` is per rank, so a
global batch holds G = N * batch_size rows. What ``fit(distributed=comm)`` adds:

1. Before any step the ranks agree, in one all-gather: each rank's verdict on its own arguments
   and a fingerprint of its data (shapes, dtypes, a checksum of sampled rows), network and
   settings. If a rank rejected its call, or a fingerprint differs from rank 0's, every rank
   raises (its own error on the rank that rejected, :class:`~bpgpu.DistributedError` elsewhere)
   and nothing has changed.
2. Rank 0's training state is broadcast: weights, buffers, optimizer state, the shuffling
   and device generators, epoch counter and history. Every rank then makes the same draws: a
   draw for a batch (a Dropout mask) is made for the whole global batch and each rank keeps its
   share's rows (:class:`RowWindow`), so masks are those of one process with the global batch.
3. Every rank draws the same epoch order (rank 0's shuffling generator, now everyone's); each
   global batch of g rows (the last may be ragged) is cut into N contiguous shares, rank r taking
   rows [g r // N, g (r + 1) // N).
4. After the backward pass each rank multiplies its flat gradient (the mean over its n_r rows,
   L2 penalty included) by n_r / g, and one all-reduce sums the buffers (a gradient hook of the
   engine, :class:`GradientSync`, run before any other hook). As
   sum_r (n_r / g) (mean_r + penalty) = mean over the global batch + penalty, N ranks with batch
   b follow one process with batch N b, to rounding. A rank whose share of a ragged batch is empty
   steps on one row with weight 0, so every rank issues the same collectives.
5. At the end of an epoch the loss and metric sums are summed across ranks; validation rows are
   shared out and summed the same way. Every value the callbacks see is rank 0's result,
   broadcast, so decisions (early stopping, learning-rate changes) agree; a stop asked for on any
   rank stops every rank. Only rank 0 prints, and callbacks with ``rank_zero_only`` (checkpoints,
   CSV logs) run on rank 0 alone.
6. An exception raised on one rank during training (a callback's error, say) aborts the whole
   job (``MPI_Abort``) with its message: the other ranks already wait in a collective, so
   raising it on that rank alone would leave them waiting forever.

Mixed precision: each rank scales dL/dout by S n_r / g rather than S
(``MixedPrecision.batch_fraction``), so its 16-bit gradient rows are those of one process with the
global batch and the loss scaler, which sees the summed gradient, skips the same steps on every rank
and, apart from 16-bit partial sums near float16's limit, the steps one process skips.

BatchNorm normalises with statistics over the global batch (:class:`SyncedStatistics`: 3 small
all-reduces per BatchNorm layer and step), so it too trains as in one process. Refused with a
clear error: metrics that keep host state between batches (``r2``'s shift) and fewer samples
than ranks.

Transports (:func:`choose_transport`): MPI reduces NumPy buffers in place; a CuPy network uses
NCCL (its unique id broadcast over MPI) when NCCL is available, else MPI with host staging (copy
to the host, reduce, copy back), as torch and array_api_strict networks do. The NCCL path is
written but has not run: no GPU was available when it was built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from ._model_file import restore_training_state, training_state
from .errors import DistributedError, DistributedUnavailableError, TrainingDivergedError
from .layers import BatchNorm, serialize_layer
from .losses import serialize_loss
from .metrics import Metric
from .optimizers import serialize_optimizer

__all__ = [
    "RowWindow",
    "SyncedStatistics",
    "GPU_TRANSPORTS",
    "Communicator",
    "GradientSync",
    "choose_transport",
    "init",
    "row_share",
]

#: Accepted values of ``init(gpu_transport=...)``.
GPU_TRANSPORTS = ("auto", "nccl", "mpi")

_INSTALL = 'pip install "bpgpu[mpi]" (mpi4py and the MPICH wheel), then run under mpiexec -n N'

#: Seconds between printing a rank's error and aborting the job (mpiexec forwards output
#: asynchronously and may drop what is still in flight when the job is killed).
ABORT_GRACE_S = 0.5

#: Rows of the training data hashed into the fingerprint (evenly spaced, first and last included).
SAMPLED_ROWS = 64


def init(gpu_transport: str = "auto", select_gpu: bool = True) -> Communicator:
    """The :class:`Communicator` of this process in mpi4py's world communicator.

    Args:
        gpu_transport: how CuPy networks sum gradients: ``"auto"`` (NCCL when available, else MPI
            with host staging), ``"nccl"`` (an error where NCCL cannot serve) or ``"mpi"``.
        select_gpu: when CuPy sees GPUs, make GPU ``local_rank % count`` the current device, so
            the ranks of one node use one GPU each (build the network after ``init``).

    Raises :class:`~bpgpu.DistributedUnavailableError` when mpi4py is not installed.
    """
    if gpu_transport not in GPU_TRANSPORTS:
        raise ValueError(f"gpu_transport must be one of {GPU_TRANSPORTS}, got {gpu_transport!r}")
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise DistributedUnavailableError(
            f"data-parallel training needs mpi4py ({exc}); {_INSTALL}") from None
    comm = Communicator(MPI.COMM_WORLD, gpu_transport)
    if select_gpu:
        comm.gpu = _select_gpu(comm.local_rank)
    return comm


def _select_gpu(local_rank):
    """Make GPU ``local_rank % count`` current when CuPy sees GPUs; its id, or None."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - CuPy missing, or no driver: no GPU to pick
        return None
    if count == 0:
        return None
    device = local_rank % count
    cupy.cuda.Device(device).use()
    return device


class Communicator:
    """One process's place in a data-parallel job (from :func:`init`).

    Attributes: ``rank`` (0 .. size - 1), ``size``, ``local_rank`` (rank among the processes of
    this node; it picks the GPU), ``gpu`` (the CUDA device made current, or None), ``mpi`` (the
    mpi4py communicator) and ``gpu_transport``.
    """

    def __init__(self, mpi: Any, gpu_transport: str = "auto") -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.mpi = mpi
        self.rank, self.size = mpi.Get_rank(), mpi.Get_size()
        node = mpi.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()
        self.gpu_transport = gpu_transport
        self.gpu = None
        self._transports: dict[str, Any] = {}

    def __repr__(self):
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    def transport_for(self, backend: Any) -> Any:
        """The object that sums gradient buffers of ``backend``'s arrays across ranks (created on
        first use, collectively); its ``kind`` is ``"mpi"`` or ``"nccl"`` and ``reason`` says why."""
        transport = self._transports.get(backend.name)
        if transport is None:
            kind, reason = choose_transport(backend.name, self.gpu_transport)
            make = _NCCLTransport if kind == "nccl" else _MPITransport
            transport = self._transports[backend.name] = make(self, backend, reason)
        return transport

    # -- small host collectives (control values) --------------------------------------------------
    def sum(self, values: Any) -> np.ndarray:
        """``values`` (float64, host) summed over the ranks; the very same bits on every rank
        (rank 0's result is broadcast)."""
        buf = np.array(values, dtype=np.float64)
        self.mpi.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        self.mpi.Bcast(buf, root=0)
        return buf

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        buf = np.array([1 if flag else 0], dtype=np.int64)
        self.mpi.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        return bool(buf[0])

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` (bytes) on every rank (the others pass None)."""
        payload = (data or b"") if self.rank == 0 else b""
        length = np.array([len(payload)], dtype=np.int64)
        self.mpi.Bcast(length, root=0)
        buf = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == 0 \
            else np.empty(int(length[0]), dtype=np.uint8)
        self.mpi.Bcast(buf, root=0)
        return buf.tobytes()

    def broadcast_array(self, array: np.ndarray) -> None:
        """Overwrite the host array ``array`` with rank 0's, in place."""
        self.mpi.Bcast(array, root=0)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order, on every rank."""
        lengths = np.zeros(self.size, dtype=np.int64)
        self.mpi.Allgather(np.array([len(data)], dtype=np.int64), lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out = np.empty(int(lengths.sum()), dtype=np.uint8)
        self.mpi.Allgatherv(np.frombuffer(data, dtype=np.uint8).copy(),
                            [out, lengths, offsets, self._MPI.BYTE])
        return [out[o:o + n].tobytes() for o, n in zip(offsets, lengths, strict=True)]


# -- transports ---------------------------------------------------------------------------------------
def choose_transport(backend_name: str, requested: str = "auto",
                     probe: Callable[[], tuple[bool, str]] | None = None) -> tuple[str, str]:
    """``(kind, reason)``: how arrays of the backend ``backend_name`` are summed across ranks.

    NumPy: ``"mpi"``, in place. torch, array_api_strict: ``"mpi"`` with host staging. CuPy:
    ``"nccl"`` when ``requested`` allows it and ``probe()`` (default: import ``cupy.cuda.nccl``)
    returns ``(True, why)``, else ``"mpi"`` with host staging. ``requested="nccl"`` where NCCL
    cannot serve raises :class:`~bpgpu.DistributedUnavailableError`.
    """
    if requested not in GPU_TRANSPORTS:
        raise ValueError(f"gpu_transport must be one of {GPU_TRANSPORTS}, got {requested!r}")
    if backend_name != "cupy":
        if requested == "nccl":
            raise DistributedUnavailableError(
                f"gpu_transport='nccl' serves CuPy networks only; this network runs on "
                f"{backend_name!r}. Use gpu_transport='auto' or 'mpi', or backend='cupy'")
        if backend_name == "numpy":
            return "mpi", "MPI sums the NumPy gradient buffer in place"
        return "mpi", (f"MPI with host staging: {backend_name} arrays are copied to the host, "
                       "summed and copied back")
    if requested == "mpi":
        return "mpi", "MPI with host staging (gpu_transport='mpi' asked for it)"
    usable, why = (probe or _probe_nccl)()
    if usable:
        return "nccl", f"NCCL over the GPUs ({why}), its unique id broadcast over MPI"
    if requested == "nccl":
        raise DistributedUnavailableError(f"gpu_transport='nccl' but NCCL cannot serve: {why}")
    return "mpi", f"MPI with host staging: NCCL unavailable ({why})"


def _probe_nccl():
    """``(True, version)`` when CuPy's NCCL bindings import and answer, else ``(False, why)``."""
    try:
        from cupy.cuda import nccl
    except Exception as exc:  # noqa: BLE001 - CuPy missing or built without NCCL
        return False, f"cupy.cuda.nccl does not import: {exc}"
    if not getattr(nccl, "available", True):
        return False, "this CuPy was built without NCCL"
    try:
        version = nccl.get_version()
    except Exception as exc:  # noqa: BLE001 - the library is missing at run time
        return False, f"the NCCL library does not answer: {exc}"
    return True, f"NCCL {version}"


class _MPITransport:
    """Sums with MPI: NumPy buffers in place, other arrays through a host copy."""

    kind = "mpi"

    def __init__(self, comm, backend, reason):
        self.comm, self.backend, self.reason = comm, backend, reason

    def allreduce(self, buf):
        """The sum over ranks of the 1-D array ``buf``: ``buf`` itself when it is a NumPy array
        (summed in place), else a new array on the backend."""
        MPI = self.comm._MPI
        if isinstance(buf, np.ndarray) and buf.flags.c_contiguous:
            self.comm.mpi.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            return buf
        host = np.ascontiguousarray(self.backend.to_numpy(buf))
        self.comm.mpi.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        return self.backend.asarray(host, dtype=buf.dtype)


class _NCCLTransport:
    """Sums CuPy buffers in place with NCCL on the current stream. One NCCL communicator per
    process, over every rank; rank 0 draws the unique id and MPI broadcasts it."""

    kind = "nccl"

    def __init__(self, comm, backend, reason):
        import cupy
        from cupy.cuda import nccl

        self.backend, self.reason = backend, reason
        self._cupy, self._nccl = cupy, nccl
        root_id = np.array(nccl.get_unique_id(), dtype=np.int16).tobytes() if comm.rank == 0 else None
        uid = tuple(int(v) for v in np.frombuffer(comm.broadcast_bytes(root_id), dtype=np.int16))
        self._comm = nccl.NcclCommunicator(comm.size, uid, comm.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32,
                       np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def allreduce(self, buf):
        stream = self._cupy.cuda.get_current_stream().ptr
        self._comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._types[np.dtype(buf.dtype)],
                             self._nccl.NCCL_SUM, stream)
        return buf


class GradientSync:
    """The gradient hook of a distributed ``fit`` (first in ``net.gradient_hooks``, see
    :mod:`bpgpu._engine`): ``sync(flat_grads, rows)`` multiplies this rank's flat gradient by
    ``weight`` (n_r / g, set before each step; 0 zeroes it) and sums it over the ranks in ONE
    all-reduce, in place. Running first, it hands every later hook the summed gradient, so their
    verdicts (a mixed-precision skip) agree on every rank. ``calls`` counts the all-reduces."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.weight = 1.0
        self.calls = 0

    def __call__(self, flat_grads: Any, rows: int | None = None) -> None:
        if self.weight == 0.0:
            flat_grads[...] = 0.0
        elif self.weight != 1.0:
            flat_grads *= self.weight
        total = self.transport.allreduce(flat_grads)
        if total is not flat_grads:  # summed through a host copy
            flat_grads[...] = total
        self.calls += 1


class RowWindow:
    """Makes a device generator draw for the whole global batch and return this rank's rows.

    While installed (as the ``uniform`` of the generator object itself, which the layers share),
    a draw whose leading dimension is this rank's row count ``rows`` is made with the global
    batch's ``total`` rows instead, and rows [offset, offset + rows) are returned. Every rank thus
    makes the same draws as one process with the global batch (same numbers, same generator
    state afterwards): Dropout masks match it exactly. Other draws pass through unchanged.
    """

    def __init__(self, rng: Any) -> None:
        self.rng, self.draw = rng, rng.uniform
        self.offset, self.rows, self.total = 0, -1, -1
        rng.uniform = self

    def select(self, offset: int, rows: int, total: int) -> None:
        self.offset, self.rows, self.total = offset, rows, total

    def __call__(self, shape: tuple, dtype: Any) -> Any:
        shape = tuple(shape)
        if not shape or shape[0] != self.rows or self.rows == self.total:
            return self.draw(shape, dtype)
        whole = self.draw((self.total, *shape[1:]), dtype)
        return whole[self.offset:self.offset + self.rows, ...]

    def remove(self) -> None:
        """Give the generator its own ``uniform`` back."""
        del self.rng.uniform


class SyncedStatistics:
    """BatchNorm's batch statistics over the global batch (installed as the layers'
    ``statistics`` while a distributed ``fit`` runs; see :class:`~bpgpu.layers.BatchNorm`).

    With G the global batch's rows, n_r this rank's (0 for a one-row stand-in) and m values per
    row and channel: ``count`` = G m; ``mean(v)`` = (sum over every rank's rows of v) / (G m), one
    all-reduce; ``grad_means(a, b)`` = the two averages of BatchNorm's backward pass over the
    global batch, in this rank's units (its loss is the mean over its n_r rows, i.e. G / n_r times
    its share of the global loss): (G / n_r) sum_r' (n_r' / G) sum a / (G m), one all-reduce for
    both. So BatchNorm normalises, keeps running statistics and backpropagates exactly as in one
    process with the global batch, for 3 small all-reduces per BatchNorm layer and step.
    """

    def __init__(self, parallel: DataParallel) -> None:
        self.parallel = parallel

    def _window(self) -> tuple[int, int, Any]:
        """``(G, n_r, transport)`` of the current step."""
        window, sync = self.parallel.window, self.parallel.sync
        if window is None or sync is None:
            raise RuntimeError("SyncedStatistics serves a distributed fit only")
        return window.total, round(sync.weight * window.total), sync.transport

    def count(self, x: Any) -> int:
        total, _, _ = self._window()
        return total * math.prod(x.shape[2:])

    def _global_sum(self, parts: list, scale: float) -> list:
        """Each part summed over every rank (this rank's multiplied by ``scale``), in one
        all-reduce."""
        _, _, transport = self._window()
        xp = self.parallel.net.backend.xp
        shapes = [tuple(p.shape) for p in parts]
        flat = xp.concat([xp.reshape(p, (-1,)) for p in parts])
        flat = flat * scale if scale != 0.0 else xp.zeros_like(flat)
        total = transport.allreduce(flat)
        out, offset = [], 0
        for shape in shapes:
            size = math.prod(shape)
            out.append(xp.reshape(total[offset:offset + size], shape))
            offset += size
        return out

    def mean(self, v: Any, axes: tuple) -> Any:
        total, rows, _ = self._window()
        xp = self.parallel.net.backend.xp
        (summed,) = self._global_sum([xp.sum(v, axis=axes, keepdims=True)],
                                     1.0 if rows else 0.0)
        return summed / float(total * math.prod(v.shape[2:]))

    def grad_means(self, a: Any, b: Any, axes: tuple) -> tuple[Any, Any]:
        total, rows, _ = self._window()
        xp = self.parallel.net.backend.xp
        summed = self._global_sum([xp.sum(a, axis=axes, keepdims=True),
                                   xp.sum(b, axis=axes, keepdims=True)], rows / total)
        unit = total / max(rows, 1) / float(total * math.prod(a.shape[2:]))
        return summed[0] * unit, summed[1] * unit


# -- what fit adds ----------------------------------------------------------------------------------------
def row_share(start: int, stop: int, rank: int, size: int) -> tuple[int, int]:
    """``(a, b)``: rank ``rank``'s contiguous share of the rows [start, stop) cut among ``size``
    ranks, ``a = start + g rank // size`` with g = stop - start; shares differ by at most a row."""
    g = stop - start
    return start + g * rank // size, start + g * (rank + 1) // size


def _short(value):
    """A readable form of ``value`` for error messages: its JSON, or a digest when long."""
    text = json.dumps(value, sort_keys=True, default=str)
    if len(text) <= 160:
        return text
    return f"sha256 {hashlib.sha256(text.encode()).hexdigest()[:16]} of {len(text)} characters"


class DataParallel:
    """What ``fit(distributed=comm)`` adds to one training run (see the module docstring)."""

    def __init__(self, comm, net):
        if not isinstance(comm, Communicator):
            raise TypeError(f"distributed must be the Communicator from bpgpu.distributed.init(), "
                            f"got {comm!r}")
        self.comm, self.net = comm, net
        self.rank, self.size = comm.rank, comm.size
        self.sync: GradientSync | None = None  # set by attached()
        self.window: RowWindow | None = None

    # -- before the first step ------------------------------------------------------------------
    def check(self, n_samples, metrics):
        """Refuse what data-parallel training cannot reproduce (ValueError)."""
        for metric in metrics:
            if type(metric).begin is not Metric.begin:
                raise ValueError(f"metric {metric.name!r} keeps state between batches that "
                                 "cannot be summed across ranks; data-parallel fit supports "
                                 "metrics made of sums (accuracy, binary_accuracy, mae, rmse, "
                                 "functions)")
        if n_samples < self.size:
            raise ValueError(f"the training set holds {n_samples} sample(s) for {self.size} ranks; "
                             "data-parallel training needs at least one sample per rank")

    def fingerprint(self, X, y, Xd, yd, settings):
        """``{what: short description}`` that every rank must share with rank 0."""
        net = self.net
        backend = net.backend
        n = Xd.shape[0]
        rows = np.unique(np.linspace(0, n - 1, min(n, SAMPLED_ROWS)).astype(np.int64))
        index = backend.asarray(rows, dtype=backend.xp.int64)
        digest = hashlib.sha256()
        for data in (Xd, yd):
            digest.update(np.ascontiguousarray(
                backend.to_numpy(backend.xp.take(data, index, axis=0))).tobytes())
        return {
            "backend and dtype": f"{backend.name} {net.dtype_name}",
            "layers": _short([serialize_layer(layer) for layer in net.layers]),
            "parameter shapes": _short([list(layer.params[key].shape)
                                        for layer, key in net.structure.slots]),
            "loss": _short(serialize_loss(net.loss)),
            "optimizer": _short(serialize_optimizer(net.optimizer)),
            "X": f"shape {tuple(Xd.shape)}, dtype {getattr(X, 'dtype', type(X).__name__)}",
            "y": f"shape {tuple(yd.shape)}, dtype {getattr(y, 'dtype', type(y).__name__)}",
            "data (sampled rows)": digest.hexdigest()[:16],
            "fit settings": _short(settings),
        }

    def agree(self, error, fingerprint):
        """The collective start: every rank passes its own error (or None) and fingerprint. Raises
        :class:`~bpgpu.DistributedError` on a rank that had no error when another rank had one or
        a fingerprint differs from rank 0's; returns when all is well, or when this rank has an
        error of its own (the caller raises it)."""
        mine = {"error": None if error is None else f"{type(error).__name__}: {error}",
                "fingerprint": fingerprint or {}}
        every = [json.loads(b) for b in self.comm.allgather_bytes(json.dumps(mine).encode())]
        if error is not None:
            return
        failed = [f"rank {r}: {e['error']}" for r, e in enumerate(every) if e["error"]]
        if failed:
            raise DistributedError(f"{len(failed)} of {self.size} ranks rejected their fit call, "
                                   f"so no rank trains: {'; '.join(failed)}")
        reference = every[0]["fingerprint"]
        differ = [f"{key}: rank {r} has {value}, rank 0 has {reference.get(key)}"
                  for r, e in enumerate(every[1:], start=1)
                  for key, value in e["fingerprint"].items() if reference.get(key) != value]
        if differ:
            raise DistributedError("the ranks disagree before training, so no rank trains ("
                                   + "; ".join(differ) + "). Every rank must call fit with the "
                                   "same data, network and settings")

    def broadcast_state(self):
        """Give every rank rank 0's weights, buffers, optimizer state, generators, epoch and
        history (the device generator too: every rank draws what rank 0 draws)."""
        net, comm = self.net, self.comm
        header: Any = None  # rank 0 sends the JSON bytes; every rank then holds the parsed dict
        arrays: dict[str, np.ndarray] = {}  # rank 0's, to send
        if self.rank == 0:
            training, state_arrays = training_state(net)
            arrays = dict(state_arrays)
            for i, w in enumerate(net.get_weights()):
                arrays[f"param:{i}"] = w
            for j, layer in enumerate(net.structure.all_layers):
                for name, value in layer.buffers.items():
                    arrays[f"buffer:{j}:{name}"] = net.backend.to_numpy(value)
            arrays = {k: np.ascontiguousarray(a) for k, a in arrays.items()}
            header = json.dumps({"training": training, "epoch": net.epoch, "seed": net.seed,
                                 "arrays": [[k, a.dtype.str, list(a.shape)]
                                            for k, a in arrays.items()]}).encode()
        header = json.loads(comm.broadcast_bytes(header))
        received = {}
        for key, dtype, shape in header["arrays"]:
            buf = arrays[key] if self.rank == 0 else np.empty(tuple(shape), dtype=np.dtype(dtype))
            comm.broadcast_array(buf)
            received[key] = buf
        if self.rank != 0:
            net.set_weights([received[f"param:{i}"] for i in range(len(net.structure.slots))])
            for j, layer in enumerate(net.structure.all_layers):
                for name in list(layer.buffers):
                    layer.buffers[name] = net.backend.asarray(received[f"buffer:{j}:{name}"],
                                                              dtype=net.dtype)
            restore_training_state(net, header["training"], received)
            net.epoch = int(header["epoch"])

    # -- during training ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self):
        """For the duration of the block: the gradient hook first in ``net.gradient_hooks``, the
        device generator's draws windowed to this rank's rows (:class:`RowWindow`), and every
        BatchNorm's statistics taken over the global batch (:class:`SyncedStatistics`)."""
        self.sync = GradientSync(self.comm.transport_for(self.net.backend))
        self.window = RowWindow(self.net.device_rng)
        self.net.gradient_hooks.insert(0, self.sync)
        norms = [layer for layer in self.net.structure.all_layers
                 if isinstance(layer, BatchNorm)] if self.size > 1 else []  # 1 rank: its own
        for layer in norms:
            layer.statistics = SyncedStatistics(self)
        try:
            yield self
        finally:
            self.net.gradient_hooks.remove(self.sync)
            if self.net.precision is not None:
                self.net.precision.batch_fraction = 1.0
            self.window.remove()
            for layer in norms:
                del layer.statistics  # back to the class's None

    def select(self, start, stop):
        """Prepare the step on the global rows [start, stop); ``(a, b, rows)``: the rows this rank
        runs (one row weighted zero when its share is empty) and how many of them count."""
        if self.sync is None or self.window is None:
            raise RuntimeError("select() runs inside attached()")
        a, b = self.share(start, stop)
        rows = b - a
        self.sync.weight = rows / (stop - start)
        if self.net.precision is not None:  # 16-bit gradients in the global batch's units
            self.net.precision.batch_fraction = max(rows, 1) / (stop - start)
        b = max(b, a + 1)
        self.window.select(a - start, b - a, stop - start)
        return a, b, rows

    @contextlib.contextmanager
    def abort_on_error(self):
        """Turn an exception raised on this rank alone after the start agreement (state
        broadcast, training) into an abort of the whole job: the other ranks already wait in the
        next collective and would wait forever. :class:`~bpgpu.TrainingDivergedError` passes, as
        every rank raises it at the same step."""
        try:
            yield
        except TrainingDivergedError:
            raise
        except BaseException as exc:
            print(f"bpgpu.distributed: rank {self.rank} of {self.size} failed during training "
                  f"({type(exc).__name__}: {exc}); aborting every rank, as the others wait for "
                  "it in a collective", file=sys.stderr, flush=True)
            traceback.print_exc()
            sys.stderr.flush()
            time.sleep(ABORT_GRACE_S)  # let the launcher forward the message before the kill
            self.comm.mpi.Abort(1)
            raise

    def share(self, start, stop):
        """``(a, b)``: this rank's rows of the global rows [start, stop)."""
        return row_share(start, stop, self.rank, self.size)

    def sum_sums(self, host, rows, metrics):
        """Sum a vector of sums and its row count across ranks; the metrics' sample counts too
        (set in place). Returns ``(summed vector, summed rows)``."""
        counts = [metric.count for metric in metrics]
        total = self.comm.sum(np.concatenate([np.asarray(host, dtype=np.float64), [rows], counts]))
        k = len(host)
        for metric, count in zip(metrics, total[k + 1:], strict=True):
            metric.count = int(count)
        return total[:k], int(total[k])

    def step_loss(self, loss, weight):
        """The global batch's loss of one step, from this rank's (``weight`` = n_r / g)."""
        local = 0.0 if weight == 0.0 else self.net.backend.to_float(loss) * weight
        return float(self.comm.sum([local])[0])

    def any(self, flag):
        """True on every rank when ``flag`` is true on some rank."""
        return self.comm.any(flag)
