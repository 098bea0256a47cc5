"""A network's shapes: the per-sample input shape (declared or implied by the first layer), each
layer's output shape, and the compact table :meth:`bpgpu.Network.summary` shows."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence as SequenceOf
from typing import TYPE_CHECKING

import numpy as np

from .layers import Layer, Sequential

if TYPE_CHECKING:
    from .network import Network

Shape = tuple[int, ...]

__all__ = ["Summary", "check_input_shape", "describe_layer", "summary_table"]


def check_input_shape(layers: SequenceOf[Layer],
                      input_shape: int | SequenceOf[int] | None) -> Shape | None:
    """The per-sample input shape of a network of ``layers``: ``input_shape`` (a positive int or
    a tuple of them, e.g. ``(1, 8, 8)`` for one-channel 8x8 images) when given, else the first
    layer's own (``Dense(4, ...)``: ``(4,)``), else None. ValueError when the two disagree."""
    own = layers[0].input_shape()
    if input_shape is None:
        return own
    shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else input_shape
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError("input_shape must be the per-sample shape (no batch axis) as a tuple of "
                         f"positive ints, e.g. (1, 8, 8) or (64,), got {input_shape!r}")
    shape = tuple(int(s) for s in shape)
    if own is not None and tuple(own) != shape:
        raise ValueError(f"input_shape {shape} does not match the first layer, {layers[0]!r}, "
                         f"which takes samples of shape {tuple(own)}")
    return shape


def _short(value: object) -> str:
    """(3, 3) and [3, 3] as 3; other lists as tuples."""
    if isinstance(value, (list, tuple)):
        return _short(value[0]) if len(set(map(repr, value))) == 1 else repr(tuple(value))
    return repr(value)


def describe_layer(layer: Layer) -> str:
    """``Conv2D(1, 8, 3, padding=1)``: the class, its required arguments, and the settings that
    differ from the defaults. Containers show only their class (their layers get rows)."""
    name = type(layer).__name__
    if layer.children():
        return name
    config = layer.get_config()
    try:
        params = inspect.signature(type(layer).__init__).parameters
        required = [p for p in list(params)[1:] if params[p].default is inspect.Parameter.empty
                    and params[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        defaults = type(layer)(**{p: config[p] for p in required}).get_config()
    except (KeyError, TypeError, ValueError):  # a custom layer we cannot rebuild: full config
        return repr(layer)
    args = [_short(config[p]) for p in required]
    args += [f"{k}={_short(v)}" for k, v in config.items() if k not in required
             and defaults.get(k) != v]
    return f"{name}({', '.join(args)})" if args else name


def _shape_text(shape: Shape | None) -> str:
    """``(N, 8, 4, 4)`` for the per-sample shape (8, 4, 4); ``?`` when unknown."""
    return "?" if shape is None else f"(N, {', '.join(map(str, shape))})"


def _rows(layer: Layer, shape: Shape | None, depth: int) -> list[tuple[str, Shape | None, int]]:
    """``(description, output shape or None, parameter count)`` for ``layer`` and its nested
    layers (indented), given the per-sample input ``shape`` (or None when unknown)."""
    out = layer.output_shape(shape) if shape is not None else None
    count = sum(math.prod(p.shape) for sub in layer.walk() for p in sub.params.values())
    rows = [("  " * depth + describe_layer(layer), out, count)]
    children = layer.children()
    inner = shape
    for child in children:
        if not isinstance(layer, Sequential) and len(children) > 1:
            inner = None  # no general rule for the shapes inside other containers
        child_rows = _rows(child, inner, depth + 1)
        rows += child_rows
        if isinstance(layer, Sequential) and inner is not None:
            inner = child_rows[0][1]
    return rows


class Summary(str):
    """The summary table: a string that shows as the table itself at an interactive prompt."""

    def __repr__(self) -> str:
        return str(self)


def summary_table(net: Network) -> Summary:
    """The table behind :meth:`bpgpu.Network.summary`: one row per layer (nested layers
    indented under their container) with its output shape ``(N, ...)`` and parameter count,
    then the totals. Output shapes need a known input shape (``Network(..., input_shape=...)``
    or a first layer that implies one); otherwise they show as ``?``."""
    rows, shape = [], net.input_shape
    for layer in net.layers:
        layer_rows = _rows(layer, shape, 0)
        rows += layer_rows
        shape = layer_rows[0][1]
    shape = net.input_shape
    table = [("layer", "output shape", "params")]
    table += [(text, _shape_text(out), f"{count:,}") for text, out, count in rows]
    width = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"{a.ljust(width[0])}  {b.ljust(width[1])}  {c.rjust(width[2])}" for a, b, c in table]
    rule = "-" * len(lines[0])
    lines[1:1] = [rule]
    lines.append(rule)
    precision = getattr(net, "precision", None)
    lines.append(f"input {_shape_text(shape)}, {net.n_params:,} parameters, dtype {net.dtype_name}"
                 + (f", precision {precision.name}" if precision is not None else ""))
    lines.append(f"loss {net.loss.name}, optimizer {net.optimizer!r}")
    lines.append(f"engine: {net.engine.reason}")
    lines.append(f"backend {net.backend.name} ({net.backend.reason})")
    return Summary("\n".join(lines))
