"""Saving and loading networks: one ``.npz`` file, never pickle.

The file holds the arrays (``param:<i>`` for the i-th learnable parameter in
``Network.get_weights()`` order, ``buffer:<j>:<name>`` for layer j's buffers, layers numbered
depth first) and one JSON document under ``meta`` describing the layers, loss, optimizer, dtype
and seed. Rebuilding uses only concrete registered classes, so a file can never run code.

Since format version 2 the file also holds the full training state, so that ``fit`` continues
after :func:`load` exactly where it stopped: the optimizer's state arrays
(``optimizer:<name>:<i>``, one per parameter) and, under ``meta["training"]``, its step count and
schedule position, the shuffling generator's state, the device generator's state, the epoch
counter and the history; and, under ``meta["callbacks"]``, the state of the callbacks of the last
``fit`` (``callback:<c>:weights:<k>`` for a callback holding a copy of the weights). Version 1
files still load (with a fresh training state).

A mixed-precision network also records its policy (``meta["precision"]``; absent or None for
none) and its loss scaler's state (scale, growth count, skipped steps) under
``meta["training"]["precision"]``.

Loading treats the file as hostile (see :mod:`bpgpu._safe_npz`): the layer list is first built as
a shape-only probe that allocates nothing, every member's declared shape is compared with it and
the total with ``max_bytes`` before any array is read, members the format does not name are
refused unread, and everything restored is checked (finite, variances and second moments >= 0,
counters whole and >= 0). Every failure is a :class:`~bpgpu.ModelFileError` naming the file.
"""

from __future__ import annotations

import os

import numpy as np

from ._model_file import (
    FORMAT_VERSION,
    Architecture,
    Budget,
    Loader,
    Members,
    TooBig,
    check_leading_bytes,
    restore_training_state,
    save,
)
from ._safe_npz import NpzError, SafeNpz
from .backend import Backend, get_backend
from .errors import ModelFileError
from .layers import deserialize_layer
from .losses import deserialize_loss
from .network import Network
from .optimizers import deserialize_optimizer
from .precision import deserialize_precision

__all__ = ["save", "load", "FORMAT_VERSION", "DEFAULT_MAX_BYTES"]

#: Largest total of array data :func:`load` accepts unless told otherwise (4 GiB).
DEFAULT_MAX_BYTES = 4 * 2**30

_REBUILD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError,
                   RecursionError)


def load(path: str | os.PathLike[str], backend: str | Backend | None = None,
         max_bytes: int = DEFAULT_MAX_BYTES) -> Network:
    """Rebuild a saved :class:`~bpgpu.Network` on ``backend`` (any backend, whatever the one it
    was saved from).

    ``max_bytes``: the most array data (declared by the file, summed over its members) accepted;
    checked before anything is allocated. Raises :class:`~bpgpu.ModelFileError` naming the
    file and the problem for anything that is not a complete, consistent bpgpu model file, and
    FileNotFoundError when there is no file."""
    path = os.fspath(path)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 1:
        raise ValueError(f"max_bytes must be an integer >= 1, got {max_bytes!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    backend = get_backend(backend)  # a bad backend argument is the caller's error, not the file's
    check_leading_bytes(path)
    try:
        with SafeNpz(path) as archive:
            return _rebuild(Loader(archive, path, int(max_bytes)), backend)
    except NpzError as exc:
        raise ModelFileError(f"{path!r} is not a readable bpgpu model file: {exc}") from None


def _rebuild(loader: Loader, backend: Backend) -> Network:
    """The network a checked file describes: its description and members' headers first, then
    the network built, then its arrays, training state and callbacks' states filled in."""
    meta = loader.read_meta()
    rebuild = "cannot rebuild the network"
    try:
        dtype = meta["dtype"]
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        budget = Budget.for_file(loader.max_bytes, os.path.getsize(loader.path))
        arch = Architecture(meta["layers"], np.dtype(dtype).itemsize, budget)
    except TooBig as exc:
        raise loader.refuse(str(exc)) from None
    except (*_REBUILD_ERRORS, MemoryError) as exc:
        raise loader.refuse(f"{rebuild}: {type(exc).__name__}: {exc}") from None
    loader.check_members(loader.expected_members(meta, arch))
    try:
        layers = [deserialize_layer(spec) for spec in meta["layers"]]
        net = Network(layers, loss=deserialize_loss(meta["loss"]),
                      optimizer=deserialize_optimizer(meta["optimizer"]), backend=backend,
                      dtype=dtype, seed=meta["seed"], input_shape=meta.get("input_shape"),
                      precision=deserialize_precision(meta.get("precision")))
    except _REBUILD_ERRORS as exc:
        raise loader.refuse(f"{rebuild}: {exc}") from None
    fit = "stored arrays do not fit the described network"
    try:
        net.set_weights([loader.archive.array(f"param:{i}") for i in range(len(arch.params))])
    except (ValueError, TypeError) as exc:
        raise loader.refuse(f"{fit}: {exc}") from None
    for j, layer in enumerate(net.structure.all_layers):
        for name in list(layer.buffers):
            key = f"buffer:{j}:{name}"
            value = loader.finite(key, fit, key in arch.nonnegative)
            layer.buffers[name] = net.backend.asarray(value, dtype=net.dtype)
    net.epoch = meta.get("epoch", 0)
    if "training" in meta:
        try:
            restore_training_state(net, meta["training"], Members(loader.archive))
        except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
            raise loader.refuse(f"its training state does not fit the described network: "
                                f"{exc}") from None
    net._restored_callbacks = loader.callbacks(meta, net, arch)
    return net
