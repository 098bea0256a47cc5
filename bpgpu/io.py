"""Saving and loading networks: one ``.npz`` file, never pickle.

The file holds the arrays (``param:<i>`` for the i-th learnable parameter in
``Network.get_weights()`` order, ``buffer:<j>:<name>`` for layer j's buffers, layers numbered
depth first) and one JSON document under ``meta`` describing the layers, loss, optimizer, dtype
and seed. Loading reads it with ``allow_pickle=False`` and rebuilds layers only from registered
:class:`~bpgpu.layers.Layer` classes, so a file can never run code.

Since format version 2 the file also holds the full training state, so that ``fit`` continues
after :func:`load` exactly where it stopped: the optimizer's state arrays
(``optimizer:<name>:<i>``, one per parameter) and, under ``meta["training"]``, its step count and
schedule position, the shuffling generator's state, the device generator's state, the epoch
counter and the history. Version 1 files still load (with a fresh training state).

A mixed-precision network also records its policy (``meta["precision"]``; absent or None for
none) and its loss scaler's state (scale, growth count, skipped steps) under
``meta["training"]["precision"]``.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ModelFileError
from .layers import deserialize_layer, serialize_layer
from .losses import deserialize_loss, serialize_loss
from .optimizers import deserialize_optimizer, serialize_optimizer
from .precision import deserialize_precision, serialize_precision

if TYPE_CHECKING:  # only for the annotations: network.py imports this module
    from .backend import Backend
    from .network import Network

__all__ = ["save", "load", "FORMAT_VERSION"]

FORMAT = "bpgpu-network"
FORMAT_VERSION = 2


def save(net: Network, path: str | os.PathLike[str]) -> None:
    """Write ``net`` to ``path`` atomically: a temporary file in the same folder is renamed over
    ``path`` only once it is complete, so a crash never leaves a half-written file behind."""
    path = os.fspath(path)
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "layers": [serialize_layer(layer) for layer in net.layers],
        "loss": serialize_loss(net.loss),
        "optimizer": serialize_optimizer(net.optimizer),
        "dtype": net.dtype_name,
        "seed": net.seed,
        "epoch": net.epoch,
        "input_shape": None if net.input_shape is None else list(net.input_shape),
        "precision": serialize_precision(net.precision),
    }
    meta["training"], arrays = _training_state(net)
    arrays["meta"] = np.array(json.dumps(meta))
    for i, w in enumerate(net.get_weights()):
        arrays[f"param:{i}"] = w
    for j, layer in enumerate(net.structure.all_layers):
        for name, value in layer.buffers.items():
            arrays[f"buffer:{j}:{name}"] = net.backend.to_numpy(value)
    folder = os.path.dirname(os.path.abspath(path))
    # A fresh name in the same folder, so the rename is atomic; opened with "x" (never an existing
    # file) rather than by tempfile.mkstemp, whose files are private to their owner: the
    # checkpoint gets the permissions of any new file.
    tmp = os.path.join(folder, f".bpgpu-{os.getpid()}-{secrets.token_hex(8)}.tmp")
    created = False
    try:
        with open(tmp, "xb") as f:
            created = True
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if created and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` from a bpgpu file; ModelFileError if it is anything else."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    # Sort by the leading bytes first: np.load treats every non-zip, non-.npy file as a pickle.
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ModelFileError(f"{path!r} holds a single array (.npy), not a bpgpu model (.npz)")
    if magic[:1] == b"\x80":
        raise ModelFileError(f"{path!r} is a Python pickle; bpgpu never loads pickles (they can "
                             "run code)")
    if magic[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{path!r} is not a readable bpgpu model file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise ModelFileError(f"{path!r} contains pickled Python objects; bpgpu never loads "
                                 "pickles (they can run code)") from None
        raise ModelFileError(f"{path!r} is not a readable bpgpu model file: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path!r} is not a readable bpgpu model file (truncated or not an "
                             f".npz archive): {exc}") from None
    meta_array = arrays.pop("meta", None)
    if meta_array is None or meta_array.dtype.kind != "U" or meta_array.ndim != 0:
        raise ModelFileError(f"{path!r} is an .npz archive but not a bpgpu model (no 'meta' entry)")
    try:
        meta = json.loads(str(meta_array))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path!r}: its description is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path!r} is not a bpgpu model file (format tag missing)")
    if not isinstance(meta.get("version"), int) or meta["version"] > FORMAT_VERSION:
        raise ModelFileError(f"{path!r} has format version {meta.get('version')!r}; this bpgpu "
                             f"reads versions up to {FORMAT_VERSION}")
    return meta, arrays


def load(path: str | os.PathLike[str], backend: str | Backend | None = None) -> Network:
    """Rebuild a saved :class:`~bpgpu.Network` on ``backend`` (any backend, whatever the one it
    was saved from). Raises :class:`~bpgpu.ModelFileError` for files that are not bpgpu models."""
    from .network import Network

    meta, arrays = read_file(path)
    try:
        layers = [deserialize_layer(spec) for spec in meta["layers"]]
        net = Network(layers, loss=deserialize_loss(meta["loss"]),
                      optimizer=deserialize_optimizer(meta["optimizer"]), backend=backend,
                      dtype=meta["dtype"], seed=meta["seed"],
                      input_shape=meta.get("input_shape"),
                      precision=deserialize_precision(meta.get("precision")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{os.fspath(path)!r}: cannot rebuild the network: {exc}") from None
    n = len(net.structure.slots)
    try:
        weights = [arrays[f"param:{i}"] for i in range(n)]
        net.set_weights(weights)
        for j, layer in enumerate(net.structure.all_layers):
            for name in list(layer.buffers):
                value = arrays[f"buffer:{j}:{name}"]
                if value.shape != tuple(layer.buffers[name].shape):
                    raise ValueError(f"buffer {name} of layer {j} has shape {value.shape}")
                layer.buffers[name] = net.backend.asarray(value, dtype=net.dtype)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{os.fspath(path)!r}: stored arrays do not fit the described "
                             f"network: {exc}") from None
    net.epoch = int(meta.get("epoch", 0))
    if "training" in meta:
        try:
            _restore_training_state(net, meta["training"], arrays)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ModelFileError(f"{os.fspath(path)!r}: its training state does not fit the "
                                 f"described network: {exc}") from None
    return net


def _training_state(net):
    """``(json part, arrays)`` of everything ``fit`` needs to continue exactly."""
    state = net.optimizer.state_dict()
    arrays = {}
    for name, values in state["state"].items():
        for i, value in enumerate(values):
            arrays[f"optimizer:{name}:{i}"] = net.backend.to_numpy(value)
    meta = {
        "optimizer": {"step_count": state["step_count"],
                      "schedule_step": state.get("schedule_step", 0),
                      "state": list(state["state"])},
        "shuffle_rng": net.shuffle_rng.bit_generator.state,
        "device_rng": net.backend.rng_state(net.device_rng),
        "history": net.history.to_dict(),
    }
    if net.precision is not None:
        meta["precision"] = net.precision.state_dict()
    return meta, arrays


def _restore_training_state(net, training, arrays):
    """Inverse of :func:`_training_state` on a freshly built ``net``. The device generator's
    state is restored only when it comes from the same kind of generator (device random streams
    differ between backends); otherwise the one seeded from ``net.seed`` is kept."""
    from .history import History

    info = training["optimizer"]
    counts = {key: info[key] for key in ("step_count", "schedule_step")}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"optimizer {key} must be an integer >= 0, got {value!r}")
    shapes = [tuple(layer.params[key].shape) for layer, key in net.structure.slots]
    state = {}
    for name in info["state"]:
        values = []
        for i, shape in enumerate(shapes):
            value = arrays[f"optimizer:{name}:{i}"]
            if value.shape != shape or value.dtype.kind != "f":
                raise ValueError(f"optimizer state {name}[{i}] has shape {value.shape} and dtype "
                                 f"{value.dtype}; expected floats of shape {shape}")
            values.append(net.backend.asarray(value, dtype=net.dtype))
        state[name] = values
    history = History.from_dict(training["history"])
    shuffle_state = training["shuffle_rng"]
    if not isinstance(shuffle_state, dict) or shuffle_state.get("bit_generator") != \
            net.shuffle_rng.bit_generator.state["bit_generator"]:
        raise ValueError(f"the shuffling generator's state {shuffle_state!r} is not a "
                         f"{net.shuffle_rng.bit_generator.state['bit_generator']} state")
    net.shuffle_rng.bit_generator.state = shuffle_state
    device_state = training["device_rng"]
    if isinstance(device_state, dict) and device_state.get("kind") == \
            net.backend.rng_state(net.device_rng).get("kind"):
        net.backend.set_rng_state(net.device_rng, device_state)
    if net.precision is not None and "precision" in training:
        net.precision.load_state_dict(training["precision"])
    net.optimizer.load_state_dict({**counts, "state": state})
    net.history = history
