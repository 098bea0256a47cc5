"""The :class:`Layer` base class every layer (built-in or your own) derives from.

A layer is two formulas and the bookkeeping between them:

* ``forward(x, training=False) -> y`` computes the output and keeps what the backward pass needs;
* ``backward(dy) -> dx`` takes dL/dy, fills ``self.grads`` (same keys as ``self.params``) with
  dL/dparam and returns dL/dx.

Both compute with ``self.xp``, the Array API namespace of the layer's backend, never with NumPy
or CuPy directly, so one implementation runs on every backend.

Writing your own layer::

    class Scale(Layer):
        '''y = x * s, one learnable scale per feature. Shapes: x (N, F) -> y (N, F).'''

        def __init__(self, features):
            super().__init__()
            self.features = features

        def init_params(self, rng):
            self.add_param("s", np.ones(self.features))

        def forward(self, x, training=False):
            self._x = x
            return x * self.params["s"]

        def backward(self, dy):
            self.grads["s"] = self.xp.sum(dy * self._x, axis=0)
            return dy * self.params["s"]

        def get_config(self):
            return {"features": self.features}

Conventions: parameters and buffers are replaced (``self.params[k] = new``), never mutated in
place by layer code, so snapshots of them stay valid; layers read their dtype from their inputs
and parameters, not from globals.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import numpy as np

from ..registry import get_registry
from ..typing import Array, ArrayLike, Namespace

__all__ = ["Layer", "serialize_layer", "deserialize_layer", "layer_class"]

_LAYERS = get_registry("layer")
_L = TypeVar("_L", bound="Layer")


class Layer:
    """Base class of all layers.

    Attributes:
        params: ``{name: array}`` learnable parameters, in a fixed order.
        grads: ``{name: array}`` dL/dparam from the last :meth:`backward`.
        buffers: ``{name: array}`` non-learnable state saved with the model (running statistics).
        backend, xp, dtype: set by :meth:`build`.
    """

    #: When False, ``backward`` may skip dL/dx and return None. The Network clears it on its
    #: first layer, whose input gradient nobody needs (for Dense that saves a whole matmul).
    input_grad = True
    #: Names of buffers that can never be negative (variances); a loaded file whose values
    #: there are negative is refused.
    nonnegative_buffers: tuple = ()

    params: dict[str, Array]
    grads: dict[str, Array]
    buffers: dict[str, Array]
    backend: Any  # the Backend once built, None before
    xp: Namespace
    dtype: Any

    #: Mixed precision (:mod:`bpgpu.precision`): True keeps this layer's parameters in float32
    #: while the rest of the network computes in 16 bits; the layer then computes in the dtype
    #: of its parameters and returns results in the dtype of its inputs (normalisation layers).
    keep_float32 = False

    #: The factor the ``dy`` reaching :meth:`backward` carries (mixed precision's loss scale, set
    #: during the backward pass). A layer that adds the gradient of its :meth:`penalty` in
    #: ``backward`` multiplies that term by it.
    loss_scale = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _LAYERS.register(cls)  # every layer class can be rebuilt from a file by its name

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.backend = None
        self.xp = None
        self.dtype = None
        self.device_rng = None

    # -- construction -----------------------------------------------------------------------------
    def build(self: _L, backend: Any, dtype: Any, rng: np.random.Generator,
              device_rng: Any = None) -> _L:
        """Create the parameters on ``backend`` with ``dtype``.

        ``rng`` is a ``numpy.random.Generator`` for initial values (drawn on the host);
        ``device_rng`` (from ``backend.make_rng``) serves draws made during training.
        Built layers are rebuilt from scratch (fresh parameters).
        """
        self.backend = backend
        self.xp = backend.xp
        self.dtype = dtype
        self.device_rng = device_rng
        self.params, self.grads, self.buffers = {}, {}, {}
        self.init_params(rng)
        for child in self.children():
            child.build(backend, dtype, rng, device_rng)
        return self

    def init_params(self, rng: np.random.Generator) -> None:
        """Hook: create parameters with :meth:`add_param` / :meth:`add_buffer` (host arrays)."""

    def add_param(self, name: str, host_value: ArrayLike) -> None:
        """Register a learnable parameter from a host array (cast to the layer's dtype)."""
        self.params[name] = self.backend.asarray(np.asarray(host_value), dtype=self.dtype)

    def add_buffer(self, name: str, host_value: ArrayLike) -> None:
        """Register non-learnable state saved with the model (cast to the layer's dtype)."""
        self.buffers[name] = self.backend.asarray(np.asarray(host_value), dtype=self.dtype)

    @property
    def built(self) -> bool:
        return self.backend is not None

    def children(self) -> list[Layer]:
        """The layers nested inside this one (empty for plain layers)."""
        return []

    def walk(self) -> Iterator[Layer]:
        """This layer and every nested layer, depth first, parents before children."""
        yield self
        for child in self.children():
            yield from child.walk()

    # -- computation ----------------------------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, training)")

    def backward(self, dy: Array) -> Array | None:
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy)")

    def __call__(self, x: Array, training: bool = False) -> Array:
        return self.forward(x, training=training)

    def penalty(self) -> Array | None:
        """Regularisation term this layer adds to the loss (a 0-d array), or None."""
        return None

    # -- shapes -----------------------------------------------------------------------------------
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample input shape this layer requires (without the batch axis), or None."""
        return None

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample output shape for a per-sample ``input_shape``; raises ValueError if the
        input cannot be accepted. The default keeps the shape (element-wise layers)."""
        return tuple(input_shape)

    # -- serialisation ------------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``cls(**config)`` rebuilds it)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def layer_class(name: str) -> type[Layer]:
    """The registered :class:`Layer` subclass called ``name`` (every subclass registers itself)."""
    return _LAYERS.class_named(name)


def serialize_layer(layer: Layer) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` describing ``layer`` (JSON-serialisable)."""
    return _LAYERS.serialize(layer)


def deserialize_layer(spec: dict[str, Any]) -> Layer:
    """Rebuild an (unbuilt) layer from :func:`serialize_layer`'s output. Runs no code from it."""
    return _LAYERS.deserialize(spec)
