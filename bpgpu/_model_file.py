"""The model file format behind :mod:`bpgpu.io`: writing a network's description and arrays
to one ``.npz`` file, and reading them back with every check, without knowing how a
:class:`~bpgpu.Network` is built (:func:`bpgpu.io.load` builds it; :meth:`Network.save
<bpgpu.Network.save>` and :func:`bpgpu.io.save` write through :func:`save`). The members and the
description are listed in :mod:`bpgpu.io`.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import stat
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ._safe_npz import SafeNpz
from .errors import ModelFileError
from .history import History
from .layers import Layer, deserialize_layer, layer_class, serialize_layer
from .losses import serialize_loss
from .optimizers import serialize_optimizer
from .precision import serialize_precision
from .registry import get_registry

if TYPE_CHECKING:  # only for the annotations: this module sits below network.py
    from .network import Network

__all__ = ["save", "FORMAT_VERSION", "Loader", "Architecture", "Budget",
           "TooBig", "Members", "check_leading_bytes", "restore_training_state", "training_state"]

FORMAT = "bpgpu-network"
FORMAT_VERSION = 2
#: Largest JSON description accepted (its text, in bytes as stored: 4 per character).
MAX_META_BYTES = 64 * 2**20
#: Deepest nesting of lists and objects accepted in the JSON description.
MAX_JSON_DEPTH = 100
#: Largest epoch counter accepted.
MAX_EPOCH = 2**53
#: Deflate packs at most about 1032 bytes into one: a file of n bytes holds at most this many
#: times n bytes of data, however it is compressed.
MAX_DEFLATE_RATIO = 1032

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_MEMBER = re.compile(rf"meta|param:\d+|buffer:\d+:{_NAME}|optimizer:{_NAME}:\d+"
                     rf"|callback:\d+:weights:\d+")


# -- saving ----------------------------------------------------------------------------------------
def save(net: Network, path: str | os.PathLike[str]) -> None:
    """Write ``net`` to ``path`` atomically: a temporary file in the same folder is renamed over
    ``path`` only once it is complete, so a crash never leaves a half-written file behind.

    Replacing a file keeps its permission bits; a new file gets those of any new file. The
    temporary file is removed if the save fails or is interrupted (Ctrl-C, and SIGTERM when
    saving from the main thread). Errors name ``path``. Raises ValueError, before writing
    anything, when a layer could not be rebuilt from its description at load time."""
    path = os.fspath(path)
    _check_rebuildable(net)
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
    meta["training"], arrays = training_state(net)
    meta["callbacks"], callback_arrays = _callback_state(net)
    arrays.update(callback_arrays)
    try:
        arrays["meta"] = np.array(json.dumps(meta, allow_nan=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot save to {path!r}: the network's description is not "
                         f"JSON-serialisable ({exc}); every get_config() (and each callback's "
                         "state_dict()) must return plain numbers, strings, lists and dicts") \
            from None
    for i, w in enumerate(net.get_weights()):
        arrays[f"param:{i}"] = w
    for j, layer in enumerate(net.structure.all_layers):
        for name, value in layer.buffers.items():
            arrays[f"buffer:{j}:{name}"] = net.backend.to_numpy(value)
    _write_atomically(path, arrays)


_PLAIN = (int, float, str, bool, type(None), tuple)
_BASE_ATTRIBUTES = frozenset(vars(Layer()))


def _check_rebuildable(net) -> None:
    """ValueError unless every layer is a concrete registered class that its own description
    rebuilds: ``get_config()`` is JSON, ``from_config(get_config())`` works and gives a layer
    whose plain settings (public numbers, strings, tuples set by its constructor) are the
    same."""
    for layer in net.structure.all_layers:
        cls, name = type(layer), type(layer).__name__
        try:
            _check_layer_class(cls)
        except ValueError as exc:
            raise ValueError(f"cannot save {name}: {exc}") from None
        config = layer.get_config()
        try:
            json.dumps(config)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot save {name}: its get_config() is not JSON-serialisable "
                             f"({exc}); return plain numbers, strings, lists and dicts") from None
        try:
            twin = cls.from_config(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot save {name}: {name}.from_config(get_config()) fails "
                             f"({exc}); give the layer a get_config() that returns its "
                             "constructor arguments") from None
        differ = [key for key, value in vars(twin).items()
                  if key not in _BASE_ATTRIBUTES and not key.startswith("_")
                  and isinstance(value, _PLAIN) and key in vars(layer)
                  and (type(value) is not type(vars(layer)[key]) or value != vars(layer)[key])]
        if twin.get_config() != config or differ:
            raise ValueError(f"cannot save {name}: rebuilding it from get_config() gives a "
                             f"different layer ({', '.join(differ) or 'config'} differ); "
                             "get_config() must return every constructor argument")


def _write_atomically(path: str, arrays: dict[str, Any]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save the model: {exc.strerror}", path) from None
    # A fresh name in the same folder, so the rename is atomic; opened with "x" (never an existing
    # file) rather than by tempfile.mkstemp, whose files are private to their owner: the
    # checkpoint gets the permissions of any new file, or those of the file it replaces.
    # The name is this call's alone, so whatever exists under it after a failure is ours to remove
    # (even when the signal came between open() creating the file and the next statement).
    tmp = os.path.join(folder, f".bpgpu-{os.getpid()}-{secrets.token_hex(8)}.tmp")
    with _TerminationAsException():
        try:
            with open(tmp, "xb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except OSError as exc:
            _remove(tmp)
            if exc.errno is None:
                raise
            raise type(exc)(exc.errno, f"cannot save the model: {exc.strerror}", path) from None
        except BaseException:
            _remove(tmp)
            raise


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


class _Terminated(BaseException):
    """SIGTERM arrived during a save (raised so the temporary file is removed)."""


class _TerminationAsException:
    """While saving from the main thread with SIGTERM's default action in place, turn SIGTERM
    into an exception so the cleanup runs, then deliver it again with the default action."""

    def __enter__(self):
        self.active = (threading.current_thread() is threading.main_thread()
                       and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
        if self.active:
            signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise _Terminated

    def __exit__(self, exc_type, exc, tb):
        if self.active:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if exc_type is _Terminated:
                os.kill(os.getpid(), signal.SIGTERM)
        return False


# -- loading ---------------------------------------------------------------------------------------
def check_leading_bytes(path: str) -> None:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise ModelFileError(f"{path!r} holds a single array (.npy), not a bpgpu model (.npz)")
    if magic[:1] == b"\x80":
        raise ModelFileError(f"{path!r} is a Python pickle; bpgpu never loads pickles (they can "
                             "run code)")
    if magic[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{path!r} is not a readable bpgpu model file (not an .npz archive)")


def _check_layer_class(cls: type[Layer]) -> None:
    """ValueError unless ``cls`` is the concrete, public layer class registered under its name."""
    name = cls.__name__
    if name.startswith("_") or cls.forward is Layer.forward or cls.backward is Layer.backward:
        raise ValueError(f"{name} is not a concrete layer class (it lacks forward/backward or "
                         "is private)")
    if layer_class(name) is not cls:
        raise ValueError(f"the layer class registered as {name!r} is another class than this "
                         f"one ({cls.__module__}.{cls.__qualname__}); give it a unique name")


def _json_depth_ok(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return True


def _whole(value: Any, name: str, high: int = MAX_EPOCH) -> int:
    """``value`` if it is a JSON integer in [0, high]; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"{name} must be a whole number in [0, {high}], got {value!r}")
    return value


class Architecture:
    """Parameter and buffer shapes of a described layer list, found by building it on a probe
    that records shapes instead of allocating arrays (:class:`_ProbeBackend`)."""

    def __init__(self, layer_specs: Any, itemsize: int, budget: Budget):
        if not isinstance(layer_specs, list) or not layer_specs:
            raise ValueError(f"'layers' must be a non-empty list, got {layer_specs!r}")
        _check_config_sizes(layer_specs, budget)
        layers = [deserialize_layer(spec) for spec in layer_specs]
        probe = _ProbeBackend(itemsize, budget)
        rng: Any = _ProbeRNG(budget)  # stands in for a numpy Generator
        for layer in layers:
            layer.build(probe, np.float64, rng, None)
        walked = [sub for layer in layers for sub in layer.walk()]
        for layer in walked:
            _check_layer_class(type(layer))
        self.params = [tuple(layer.params[key].shape) for layer in walked for key in layer.params]
        self.buffers = {f"buffer:{j}:{name}": tuple(value.shape)
                        for j, layer in enumerate(walked) for name, value in layer.buffers.items()}
        self.nonnegative = {f"buffer:{j}:{name}" for j, layer in enumerate(walked)
                            for name in getattr(layer, "nonnegative_buffers", ())}

    def weight_shapes(self) -> list[tuple[int, ...]]:
        """Shapes of a weights snapshot: parameters, then buffers (layer order)."""
        return self.params + list(self.buffers.values())


def _check_config_sizes(value: Any, budget: Budget) -> None:
    """ValueError when a layer description holds an integer, or a list of integers whose product
    is, above the number of float64 values the budget allows: layers allocate arrays of such
    sizes and shapes on the host while being built (BatchNorm(n) holds np.ones(n), LayerNorm(s)
    np.ones(s)), before any shape can be compared."""
    limit = budget.limit // 8
    stack = [value]
    while stack:
        item = stack.pop()
        size = None
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            if item and all(isinstance(v, int) and not isinstance(v, bool) for v in item):
                size = math.prod(abs(v) for v in item)
        elif isinstance(item, int) and not isinstance(item, bool):
            size = abs(item)
        if size is not None and size > limit:
            raise TooBig(f"a layer declares the size {item}: that many values need more than "
                          f"{budget.limit} bytes, {budget.why}")


class TooBig(ValueError):
    pass


class Budget:
    """The most bytes the described parameters may take, and why (for the message)."""

    def __init__(self, limit: int, why: str):
        self.limit, self.why = limit, why

    @classmethod
    def for_file(cls, max_bytes: int, file_size: int) -> Budget:
        """The caller's ``max_bytes``, or less when the file is too small to hold that much."""
        held = MAX_DEFLATE_RATIO * file_size
        if held < max_bytes:
            return cls(held, f"more than a file of {file_size} bytes can hold (at most "
                             f"{MAX_DEFLATE_RATIO} times its size, uncompressed)")
        return cls(max_bytes, "above the load limit (load(..., max_bytes=...) raises it)")

    def check(self, shape: Any, itemsize: int, total: int = 0) -> int:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape or ())
        if not all(isinstance(s, (int, np.integer)) and s >= 0 for s in shape):
            raise ValueError(f"invalid array shape {shape!r}")
        size = math.prod(int(s) for s in shape) * itemsize
        if total + size > self.limit:
            raise TooBig(f"the described layers need more than {self.limit} bytes of "
                          f"parameters, {self.why}")
        return size


class _Lazy:
    """Stands for a random draw of ``shape`` in the probe: scaling and shifting keep it lazy;
    anything else sees a broadcast array of zeros (no memory per element)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape

    def __array__(self, dtype=None, copy=None):
        return np.broadcast_to(np.zeros((), dtype=dtype or np.float64), self.shape)

    def _same(self, other):
        return self if isinstance(other, (int, float, np.number)) else NotImplemented

    __mul__ = __rmul__ = __add__ = __radd__ = __sub__ = __rsub__ = __truediv__ = _same

    def __neg__(self):
        return self

    def astype(self, dtype, copy=True):
        return self


class _ProbeRNG:
    """A stand-in for ``numpy.random.Generator`` whose draws are :class:`_Lazy` shapes."""

    _SIZE_POSITION = {"standard_normal": 0, "random": 0, "normal": 2, "uniform": 2,
                      "integers": 2, "standard_exponential": 0, "exponential": 1}

    def __init__(self, budget: Budget):
        self._budget = budget

    def __getattr__(self, method):
        position = self._SIZE_POSITION.get(method)

        def draw(*args, size=None, **kwargs):
            if size is None and position is not None and len(args) > position:
                size = args[position]
            shape = () if size is None else (
                (size,) if isinstance(size, (int, np.integer)) else tuple(size))
            self._budget.check(shape, 8)
            return _Lazy(tuple(int(s) for s in shape))

        return draw


class _ProbeBackend:
    """Enough of a :class:`~bpgpu.Backend` for ``Layer.build``: ``asarray`` records the shape,
    counts the bytes against the budget and returns a broadcast view (nothing allocated)."""

    name = "probe"

    def __init__(self, itemsize: int, budget: Budget):
        # imported here: array_api_compat.numpy pulls in numpy.f2py and numpy.testing (~100 ms),
        # which `import bpgpu` should not pay for
        from array_api_compat import numpy as compat_numpy

        self.xp = compat_numpy
        self._itemsize = itemsize
        self._budget = budget
        self._total = 0

    def asarray(self, data, dtype=None):
        shape = np.shape(data)
        self._total += self._budget.check(shape, self._itemsize, self._total)
        return np.broadcast_to(np.zeros((), dtype=np.float64), shape)


class Loader:
    """One load: check the description, then the members' headers, then build and fill."""

    def __init__(self, archive: SafeNpz, path: str, max_bytes: int):
        self.archive, self.path, self.max_bytes = archive, path, max_bytes

    def refuse(self, problem: str) -> ModelFileError:
        return ModelFileError(f"{self.path!r}: {problem}")

    # -- the description ------------------------------------------------------------------------
    def read_meta(self) -> dict:
        archive = self.archive
        if "meta" not in archive.names:
            raise ModelFileError(f"{self.path!r} is an .npz archive but not a bpgpu model (no "
                                 "'meta' entry)")
        header = archive.header("meta")
        if header.dtype.kind != "U":
            raise self.refuse(f"its 'meta' entry is not text (dtype {header.dtype})")
        if header.nbytes > MAX_META_BYTES:
            raise self.refuse(f"its description has {header.nbytes} bytes; at most "
                              f"{MAX_META_BYTES} accepted")
        text = str(archive.array("meta")[()])
        try:
            meta = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.refuse(f"its description is not valid JSON ({exc})") from None
        except RecursionError:
            raise self.refuse(f"its description nests deeper than {MAX_JSON_DEPTH} levels") \
                from None
        if not _json_depth_ok(meta, MAX_JSON_DEPTH):
            raise self.refuse(f"its description nests deeper than {MAX_JSON_DEPTH} levels")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ModelFileError(f"{self.path!r} is not a bpgpu model file (format tag missing)")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) \
                or not 1 <= version <= FORMAT_VERSION:
            raise self.refuse(f"it has format version {version!r}; this bpgpu reads versions "
                              f"up to {FORMAT_VERSION} (from 1)")
        try:
            _whole(meta.get("epoch", 0), "epoch")
        except ValueError as exc:
            raise self.refuse(f"bad epoch counter: {exc}") from None
        return meta

    # -- the members ----------------------------------------------------------------------------
    def expected_members(self, meta: dict, arch: Architecture) -> dict[str, tuple[str, tuple]]:
        """``{member: (part, shape)}`` for every array member the description implies; ``part``
        names the section a mismatch is reported under."""
        fit = "stored arrays do not fit the described network"
        state = "its training state does not fit the described network"
        expected = {f"param:{i}": (fit, shape) for i, shape in enumerate(arch.params)}
        expected.update({name: (fit, shape) for name, shape in arch.buffers.items()})
        training = meta.get("training")
        if isinstance(training, dict):
            names = training.get("optimizer", {}).get("state") \
                if isinstance(training.get("optimizer"), dict) else None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names) \
                    or len(set(names)) != len(names):
                raise self.refuse(f"{state}: optimizer state names must be a list of distinct "
                                  f"strings, got {names!r}")
            for name in names:
                expected.update({f"optimizer:{name}:{i}": (state, shape)
                                 for i, shape in enumerate(arch.params)})
        for c, spec in enumerate(self.callback_specs(meta)):
            if spec.get("weights"):
                expected.update({f"callback:{c}:weights:{k}": (state, shape)
                                 for k, shape in enumerate(arch.weight_shapes())})
        return expected

    def callback_specs(self, meta: dict) -> list[dict]:
        specs = meta.get("callbacks", [])
        ok = isinstance(specs, list) and all(
            isinstance(s, dict) and isinstance(s.get("class"), str)
            and isinstance(s.get("state"), dict) and isinstance(s.get("weights", False), bool)
            for s in specs)
        if not ok:
            raise self.refuse("its callback state must be a list of {'class': str, 'state': "
                              f"dict, 'weights': bool}}, got {specs!r}")
        return specs

    def check_members(self, expected: dict[str, tuple[str, tuple]]) -> None:
        """Names, dtypes, shapes and the total size, from the directory and headers only."""
        archive = self.archive
        for name in archive.names:
            if name != "meta" and name not in expected:
                kind = "not part of the bpgpu format" if not _MEMBER.fullmatch(name) \
                    else "not described by the network's description"
                raise self.refuse(f"member {name!r} is {kind}; refused unread")
        total = 0
        for name, (part, shape) in expected.items():
            if name not in archive.names:
                raise self.refuse(f"{part}: {name} is missing")
            header = archive.header(name)
            if header.dtype.kind != "f":
                raise self.refuse(f"{part}: {name} holds {header.dtype}, expected floats")
            if header.shape != shape:
                raise self.refuse(f"{part}: {name} has shape {header.shape}; expected {shape}")
            total += header.nbytes
            if total > self.max_bytes:
                raise self.refuse(f"its arrays hold more than {self.max_bytes} bytes "
                                  "(load(..., max_bytes=...) raises the limit)")

    def finite(self, name: str, part: str, nonnegative: bool = False) -> np.ndarray:
        try:
            return _checked_values(self.archive.array(name), name, nonnegative)
        except ValueError as exc:
            raise self.refuse(f"{part}: {exc}") from None

    def callbacks(self, meta: dict, net, arch: Architecture) -> list[dict]:
        """The saved callback states, checked by their classes, with weight snapshots on the
        network's backend."""
        restored = []
        callbacks = get_registry("callback")
        for c, spec in enumerate(self.callback_specs(meta)):
            try:
                callback_class: Any = callbacks.class_named(spec["class"])
                callback_class.check_state(spec["state"])
            except (ValueError, TypeError) as exc:
                raise self.refuse(f"its state of callback {c} ({spec['class']}) is invalid: "
                                  f"{exc}") from None
            weights = None
            if spec.get("weights"):
                part = "its training state does not fit the described network"
                flat = [net.backend.asarray(self.finite(f"callback:{c}:weights:{k}", part),
                                            dtype=net.dtype)
                        for k in range(len(arch.weight_shapes()))]
                weights = _unflatten_weights(net, flat)
            restored.append({"class": spec["class"], "state": spec["state"], "weights": weights})
        return restored


# -- training state --------------------------------------------------------------------------------
def training_state(net):
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


class Members:
    """The arrays of an archive by member name, read when asked for (a mapping for
    :func:`restore_training_state`)."""

    def __init__(self, archive: SafeNpz):
        self.archive = archive

    def __getitem__(self, name: str) -> np.ndarray:
        return self.archive.array(name)


def _checked_values(value: np.ndarray, name: str, nonnegative: bool = False) -> np.ndarray:
    """``value`` unless it holds NaN or infinity, or (``nonnegative``) a negative number."""
    if not np.isfinite(value).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if nonnegative and (value < 0).any():
        raise ValueError(f"{name} holds negative values; it is a variance")
    return value


def restore_training_state(net, training, arrays) -> None:
    """Inverse of :func:`training_state` on a freshly built ``net``; ``arrays`` maps member
    names (``optimizer:<name>:<i>``) to host arrays. Everything is checked (ValueError, TypeError
    or KeyError otherwise). The device generator's state is restored only when it comes from the
    same kind of generator (device random streams differ between backends); otherwise the one
    seeded from ``net.seed`` is kept."""
    info = training["optimizer"]
    counts = {key: _whole(info[key], f"optimizer {key}") for key in ("step_count", "schedule_step")}
    names = list(info["state"])
    expected = set(net.optimizer._init_state([p for p in (layer.params[key]
                                                          for layer, key in net.structure.slots)]))
    if (names or counts["step_count"]) and set(names) != expected:
        raise ValueError(f"the optimizer state holds {sorted(names)}; "
                         f"{type(net.optimizer).__name__} keeps {sorted(expected)}")
    nonnegative = set(getattr(net.optimizer, "nonnegative_state", ()))
    shapes = [tuple(layer.params[key].shape) for layer, key in net.structure.slots]
    state = {}
    for name in names:
        values = []
        for i, shape in enumerate(shapes):
            key = f"optimizer:{name}:{i}"
            value = arrays[key]
            if tuple(value.shape) != shape or value.dtype.kind != "f":
                raise ValueError(f"{key} has shape {tuple(value.shape)} and dtype {value.dtype}; "
                                 f"expected floats of shape {shape}")
            checked = _checked_values(value, key, name in nonnegative)
            values.append(net.backend.asarray(checked, dtype=net.dtype))
        state[name] = values
    history = History.from_dict(training["history"])
    shuffle_state = training["shuffle_rng"]
    kind = net.shuffle_rng.bit_generator.state["bit_generator"]
    if not isinstance(shuffle_state, dict) or shuffle_state.get("bit_generator") != kind:
        raise ValueError(f"the shuffling generator's state {shuffle_state!r} is not a {kind} state")
    try:
        net.shuffle_rng.bit_generator.state = shuffle_state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"the shuffling generator's state is invalid ({exc})") from None
    device_state = training["device_rng"]
    if isinstance(device_state, dict) and device_state.get("kind") == \
            net.backend.rng_state(net.device_rng).get("kind"):
        try:
            net.backend.set_rng_state(net.device_rng, device_state)
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise ValueError(f"the device generator's state is invalid ({exc})") from None
    if net.precision is not None and "precision" in training:
        net.precision.load_state_dict(training["precision"])
    net.optimizer.load_state_dict({**counts, "state": state})
    net.history = history


# -- callbacks' state ------------------------------------------------------------------------------
def _callback_state(net):
    """``(json part, arrays)`` of the callbacks of the network's last ``fit`` (or of the states
    it was loaded with, when it has not been fitted since)."""
    specs, arrays = [], {}
    for c, item in enumerate(_current_callback_states(net)):
        weights = item["weights"]
        specs.append({"class": item["class"], "state": item["state"],
                      "weights": weights is not None})
        if weights is not None:
            for k, value in enumerate(_flatten_weights(weights)):
                arrays[f"callback:{c}:weights:{k}"] = net.backend.to_numpy(value)
    return specs, arrays


def _current_callback_states(net) -> list[dict]:
    callbacks = getattr(net, "_fit_callbacks", None)
    if callbacks is None:
        return list(getattr(net, "_restored_callbacks", None) or [])
    return [{"class": type(c).__name__, "state": c.state_dict(), "weights": c.weights_state()}
            for c in callbacks]


def _flatten_weights(weights) -> list:
    params, buffers = weights
    return list(params) + [value for layer_buffers in buffers for value in layer_buffers.values()]


def _unflatten_weights(net, flat: list):
    n = len(net.structure.slots)
    params, rest = flat[:n], iter(flat[n:])
    buffers = [{name: next(rest) for name in layer.buffers} for layer in net.structure.all_layers]
    return params, buffers
