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

import numpy as np

__all__ = ["Layer", "serialize_layer", "deserialize_layer", "layer_class"]

_REGISTRY = {}


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
        _REGISTRY[cls.__name__] = cls

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.backend = None
        self.xp = None
        self.dtype = None
        self.device_rng = None

    # -- construction -----------------------------------------------------------------------------
    def build(self, backend, dtype, rng, device_rng=None):
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

    def init_params(self, rng):
        """Hook: create parameters with :meth:`add_param` / :meth:`add_buffer` (host arrays)."""

    def add_param(self, name, host_value):
        """Register a learnable parameter from a host array (cast to the layer's dtype)."""
        self.params[name] = self.backend.asarray(np.asarray(host_value), dtype=self.dtype)

    def add_buffer(self, name, host_value):
        """Register non-learnable state saved with the model (cast to the layer's dtype)."""
        self.buffers[name] = self.backend.asarray(np.asarray(host_value), dtype=self.dtype)

    @property
    def built(self):
        return self.backend is not None

    def children(self):
        """The layers nested inside this one (empty for plain layers)."""
        return []

    def walk(self):
        """This layer and every nested layer, depth first, parents before children."""
        yield self
        for child in self.children():
            yield from child.walk()

    # -- computation ----------------------------------------------------------------------------
    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x, training)")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy)")

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    def penalty(self):
        """Regularisation term this layer adds to the loss (a 0-d array), or None."""
        return None

    # -- shapes -----------------------------------------------------------------------------------
    def input_shape(self):
        """Per-sample input shape this layer requires (without the batch axis), or None."""
        return None

    def output_shape(self, input_shape):
        """Per-sample output shape for a per-sample ``input_shape``; raises ValueError if the
        input cannot be accepted. The default keeps the shape (element-wise layers)."""
        return tuple(input_shape)

    # -- serialisation ------------------------------------------------------------------------------
    def get_config(self):
        """Constructor arguments as a JSON-serialisable dict (``cls(**config)`` rebuilds it)."""
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def layer_class(name):
    """The registered :class:`Layer` subclass called ``name`` (every subclass registers itself)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown layer class {name!r}; known layers: {', '.join(sorted(_REGISTRY))}. "
            "A custom layer must be imported before a model using it is loaded."
        ) from None


def serialize_layer(layer):
    """``{"class": name, "config": {...}}`` describing ``layer`` (JSON-serialisable)."""
    return {"class": type(layer).__name__, "config": layer.get_config()}


def deserialize_layer(spec):
    """Rebuild an (unbuilt) layer from :func:`serialize_layer`'s output. Runs no code from it."""
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) \
            or not isinstance(spec.get("config", {}), dict):
        raise ValueError(f"a layer description must be {{'class': str, 'config': dict}}, got {spec!r}")
    return layer_class(spec["class"]).from_config(spec.get("config", {}))
