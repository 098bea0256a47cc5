"""Weights for other tools: PyTorch ``state_dict`` names and layouts, and safetensors files.

**Names.** The network is named like a ``torch.nn.Sequential`` of its layers: layer ``i``'s
tensors are ``"{i}.weight"``, ``"{i}.bias"``... Layers without parameters (activations, pooling,
Flatten, Dropout) keep their index and add no entry. Nested layers:

* ``Sequential`` -> ``nn.Sequential``: ``"{i}.{j}.weight"``;
* ``Residual(block)`` -> a module holding the block as ``self.block`` and returning
  ``x + self.block(x)``: ``"{i}.block.weight"`` (``"{i}.block.{j}.weight"`` for a Sequential);
* ``Checkpoint(block)`` adds nothing: its block's names, as if it were the block itself.

**Layouts.** ``Dense`` -> ``nn.Linear``: weight = W^T, shape (out, in), and bias. ``Conv2D`` ->
``nn.Conv2d`` (same dilation/groups): weight (O, C/groups, kh, kw), bias. ``BatchNorm`` ->
``nn.BatchNorm1d``/``2d``: weight, bias, running_mean, running_var and num_batches_tracked (an
int64 scalar: bpgpu counts the network's optimizer steps, which is what it is for a network
trained by ``fit``; PyTorch reads it only when ``momentum=None``). ``LayerNorm`` ->
``nn.LayerNorm``: weight, bias. Other layers: their parameters and buffers under their own
names and layouts.

**safetensors** (the format the ecosystem shares, pickle-free): an 8-byte little-endian header
length N, N bytes of JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`` padded with spaces to a multiple of 8, then the tensors' raw
little-endian bytes, back to back, in the header's order. :func:`save_safetensors` writes the
``state_dict(format="torch")`` tensors; :func:`load_safetensors` reads such a file (checking
every size and offset before reading any data) into a network of the same architecture.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from .errors import ModelFileError
from .layers import BatchNorm, Checkpoint, Conv2D, Dense, Layer, LayerNorm, Residual, Sequential

if TYPE_CHECKING:
    from .network import Network

PathLike = str | os.PathLike[str]

__all__ = ["STATE_DICT_FORMATS", "MAX_HEADER_BYTES", "state_dict", "load_state_dict",
           "save_safetensors", "read_safetensors", "load_safetensors"]

STATE_DICT_FORMATS = ("torch",)

#: Largest safetensors header read (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000

# safetensors dtype names <-> NumPy dtypes (little-endian).
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
           "I8": "i1", "U8": "u1", "BOOL": "?"}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


class _Entry:
    """One exported tensor: where it lives in the network and how its layout differs."""

    def __init__(self, name: str, layer: Layer, store: str, key: str | None,
                 transpose: bool = False) -> None:
        self.name, self.layer, self.store, self.key = name, layer, store, key
        self.transpose = transpose  # Dense W (in, out) is exported as (out, in)


def _entries(layer: Layer, prefix: str) -> list[_Entry]:
    """The tensors of ``layer`` (and its nested layers) under torch names starting ``prefix``."""
    if isinstance(layer, Sequential):
        return [e for i, child in enumerate(layer.layers) for e in _entries(child, f"{prefix}{i}.")]
    if isinstance(layer, Residual):
        return _entries(layer.block, f"{prefix}block.")
    if isinstance(layer, Checkpoint):
        return _entries(layer.block, prefix)
    if isinstance(layer, Dense):
        return [_Entry(prefix + "weight", layer, "params", "W", transpose=True)] + \
            ([_Entry(prefix + "bias", layer, "params", "b")] if layer.bias else [])
    if isinstance(layer, Conv2D):
        return [_Entry(prefix + "weight", layer, "params", "W")] + \
            ([_Entry(prefix + "bias", layer, "params", "b")] if layer.bias else [])
    if isinstance(layer, (BatchNorm, LayerNorm)):
        entries = [_Entry(prefix + k, layer, "params", k) for k in ("weight", "bias")]
        if isinstance(layer, BatchNorm):
            entries += [_Entry(prefix + k, layer, "buffers", k)
                        for k in ("running_mean", "running_var")]
            entries.append(_Entry(prefix + "num_batches_tracked", layer, "count", None))
        return entries
    own = [_Entry(prefix + k, layer, "params", k) for k in layer.params]
    own += [_Entry(prefix + k, layer, "buffers", k) for k in layer.buffers]
    return own + [e for i, child in enumerate(layer.children())
                  for e in _entries(child, f"{prefix}{i}.")]


def _network_entries(net: Network, format: str) -> list[_Entry]:
    if format not in STATE_DICT_FORMATS:
        raise ValueError(f"state_dict format must be one of {STATE_DICT_FORMATS}, got {format!r}")
    return [e for i, layer in enumerate(net.layers) for e in _entries(layer, f"{i}.")]


def _value(net: Network, entry: _Entry) -> np.ndarray:
    if entry.store == "count":
        return np.asarray(net.optimizer.step_count, dtype=np.int64)
    value = net.backend.to_numpy(getattr(entry.layer, entry.store)[entry.key])
    return np.ascontiguousarray(value.T if entry.transpose else value)


def state_dict(net: Network, format: str = "torch") -> dict[str, np.ndarray]:
    """``{name: host NumPy array}`` of every parameter and buffer of ``net``, with the names and
    layouts of the equivalent ``torch.nn`` modules (see the module docstring). Load it into
    them with ``model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``."""
    return {e.name: _value(net, e) for e in _network_entries(net, format)}


def load_state_dict(net: Network, state: dict[str, Any], format: str = "torch") -> None:
    """Set ``net``'s parameters and buffers from ``state`` (``{name: array}`` in the names and
    layouts of :func:`state_dict`, e.g. the ``state_dict()`` of the equivalent torch model on the
    CPU: any value ``numpy.asarray`` reads). Every name, shape and value is checked first: a
    rejected call changes nothing. ``num_batches_tracked`` entries may be missing and are not
    read."""
    entries = _network_entries(net, format)
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of name -> array, got {type(state).__name__}")
    expected = {e.name for e in entries}
    counts = {e.name for e in entries if e.store == "count"}
    missing = sorted(expected - counts - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"the state does not fit this network: missing {missing or 'nothing'}, "
                         f"unexpected {unexpected or 'nothing'}")
    updates = []
    for e in entries:
        if e.store == "count":
            continue
        value = np.asarray(state[e.name])
        current = getattr(e.layer, e.store)[e.key]
        shape = tuple(current.shape)
        want = shape[::-1] if e.transpose else shape
        if value.shape != want or value.dtype.kind != "f":
            raise ValueError(f"{e.name} has shape {value.shape} and dtype {value.dtype}; "
                             f"expected floats of shape {want}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{e.name} contains NaN or infinite values")
        updates.append((e, value.T if e.transpose else value))
    for e, value in updates:
        getattr(e.layer, e.store)[e.key] = net.backend.asarray(value, dtype=net.dtype)


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise ValueError(f"safetensors metadata must be a dict of str -> str, got {metadata!r}")
    return dict(metadata)


def save_safetensors(net: Network, path: PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict(net, format="torch")`` to ``path`` as a safetensors file, with the
    optional ``metadata`` (str -> str) under ``__metadata__``. The file is written under a
    temporary name next to ``path`` and renamed over it once complete."""
    metadata = _check_metadata(metadata)
    tensors = state_dict(net)
    header: dict[str, Any] = {}
    offset = 0
    for name, value in tensors.items():
        size = value.nbytes
        header[name] = {"dtype": _DTYPE_NAMES[value.dtype.newbyteorder("<")],
                        "shape": list(value.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    path = os.fspath(path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".bpgpu-{os.getpid()}-{secrets.token_hex(8)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(len(text).to_bytes(8, "little"))
            f.write(text)
            for value in tensors.values():
                f.write(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fail(path: str, what: str) -> NoReturn:
    raise ModelFileError(f"{path!r} is not a readable safetensors file: {what}")


def _counts(value: object) -> bool:
    """Whether ``value`` is a JSON list of non-negative integers."""
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _parse_header(path: str, raw: bytes, data_size: int) -> tuple[
        dict[str, tuple[np.dtype, tuple[int, ...], int, int]], dict[str, str] | None]:
    """``({name: (numpy dtype, shape, begin, end)}, metadata)`` from the header bytes, every
    entry checked: known dtype, non-negative shape, offsets that tile [0, data_size) exactly."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        _fail(path, f"its header is not JSON ({exc})")
    if not isinstance(header, dict):
        _fail(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        _fail(path, "__metadata__ must map strings to strings")
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            _fail(path, f"entry {name!r} must hold exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            _fail(path, f"entry {name!r} has dtype {dtype!r}; supported: {', '.join(_DTYPES)}")
        if not _counts(shape) or not _counts(offsets) or len(offsets) != 2:
            _fail(path, f"entry {name!r} needs a shape of non-negative ints and two offsets")
        begin, end = offsets
        if not begin <= end <= data_size:
            _fail(path, f"entry {name!r} has offsets {offsets} outside the {data_size} data bytes")
        if math.prod(shape) * np.dtype(_DTYPES[dtype]).itemsize != end - begin:
            _fail(path, f"entry {name!r}: shape {shape} of {dtype} does not take "
                        f"{end - begin} bytes")
        entries[name] = (np.dtype(_DTYPES[dtype]), tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            _fail(path, f"entry {name!r} starts at byte {begin}, expected {position} (the data "
                        "must be covered without gaps or overlaps)")
        position = end
    if position != data_size:
        _fail(path, f"the entries cover {position} of the {data_size} data bytes")
    return entries, metadata


def read_safetensors(path: PathLike) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """``({name: host NumPy array}, metadata or None)`` from a safetensors file. The header
    (at most :data:`MAX_HEADER_BYTES`) and every entry's size and offsets are checked against
    the file's length before any data is read, so nothing is allocated beyond what the file
    holds; any inconsistency raises :class:`~bpgpu.ModelFileError`. Runs no code from the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such safetensors file: {path!r}")
    file_size = os.path.getsize(path)
    with open(path, "rb") as f:
        if file_size < 8:
            _fail(path, f"it has {file_size} bytes, fewer than the 8-byte header length")
        header_size = int.from_bytes(f.read(8), "little")
        if header_size > MAX_HEADER_BYTES or header_size > file_size - 8:
            _fail(path, f"its header length {header_size} exceeds "
                        f"{min(MAX_HEADER_BYTES, file_size - 8)} bytes (the limit or the file)")
        entries, metadata = _parse_header(path, f.read(header_size), file_size - 8 - header_size)
        start = 8 + header_size
        tensors = {}
        for name, (dtype, shape, begin, end) in entries.items():
            f.seek(start + begin)
            data = f.read(end - begin)
            if len(data) != end - begin:
                _fail(path, f"entry {name!r} is truncated")
            tensors[name] = np.frombuffer(data, dtype=dtype).reshape(shape).astype(
                dtype.newbyteorder("="), copy=True)
    return tensors, metadata


def load_safetensors(net: Network, path: PathLike) -> dict[str, str] | None:
    """Set ``net``'s weights from a safetensors file written by :func:`save_safetensors` (or
    by ``safetensors.torch.save_file`` from the equivalent torch model). Returns the file's
    metadata (or None). A file that does not fit the network raises
    :class:`~bpgpu.ModelFileError` and changes nothing."""
    tensors, metadata = read_safetensors(path)
    try:
        load_state_dict(net, tensors)
    except ValueError as exc:
        raise ModelFileError(f"{os.fspath(path)!r} does not fit this network: {exc}") from None
    return metadata
