"""Layers made of layers: Sequential (a chain), Residual (x + block(x)) and Checkpoint (a block
that recomputes its activations in the backward pass instead of keeping them).

Nested layers are built, saved, loaded and optimised with their container: ``children()`` lists
them and :meth:`~bpgpu.layers.Layer.walk` visits them depth first, which is the order of
``Network.get_weights()``.
"""

from .base import Layer, deserialize_layer, serialize_layer

__all__ = ["Sequential", "Residual", "Checkpoint"]


def _check_layer(value, owner):
    if not isinstance(value, Layer):
        raise TypeError(f"{owner} takes bpgpu Layer objects, got {type(value).__name__}")
    return value


class Sequential(Layer):
    """``layers`` applied in order: y = f_k(... f_1(x)); backward runs them in reverse."""

    def __init__(self, layers):
        super().__init__()
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)) or not layers:
            raise TypeError("Sequential takes a non-empty list of bpgpu Layer objects, got "
                            f"{layers!r}")
        self.layers = [_check_layer(layer, "Sequential") for layer in layers]

    def children(self):
        return list(self.layers)

    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def backward(self, dy):
        self.layers[0].input_grad = self.input_grad
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def input_shape(self):
        return self.layers[0].input_shape()

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return tuple(input_shape)

    def get_config(self):
        return {"layers": [serialize_layer(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config):
        return cls([deserialize_layer(spec) for spec in config["layers"]])

    def __repr__(self):
        return f"Sequential([{', '.join(map(repr, self.layers))}])"


class _BlockWrapper(Layer):
    """A layer around one ``block`` (several layers: wrap them in Sequential). Subclasses give
    forward and backward; shapes, nesting and (de)serialisation are the block's."""

    def __init__(self, block):
        super().__init__()
        self.block = _check_layer(block, f"{type(self).__name__} (wrap several layers in Sequential)")

    def children(self):
        return [self.block]

    def input_shape(self):
        return self.block.input_shape()

    def output_shape(self, input_shape):
        return self.block.output_shape(input_shape)

    def get_config(self):
        return {"block": serialize_layer(self.block)}

    @classmethod
    def from_config(cls, config):
        return cls(deserialize_layer(config["block"]))

    def __repr__(self):
        return f"{type(self).__name__}({self.block!r})"


class Residual(_BlockWrapper):
    """y = x + block(x);  dx = dy + (d block / dx)^T dy. The block must keep the shape of x."""

    def forward(self, x, training=False):
        return x + self.block.forward(x, training=training)

    def backward(self, dy):
        self.block.input_grad = self.input_grad
        dx = self.block.backward(dy)
        return dy + dx if self.input_grad else None

    def output_shape(self, input_shape):
        out = tuple(self.block.output_shape(input_shape))
        if out != tuple(input_shape):
            raise ValueError(f"Residual block maps per-sample shape {tuple(input_shape)} to {out}; "
                             "x + block(x) needs the block to keep the shape")
        return out


# Attributes every Layer has; Checkpoint never touches them when it frees activations.
_LAYER_STATE = frozenset(("params", "grads", "buffers", "backend", "xp", "dtype", "device_rng",
                          "input_grad"))


def _snapshot(layers):
    return [dict(vars(layer)) for layer in layers]


def _forget(layers, snapshots):
    """Undo every attribute the layers rebound since ``snapshots``: this drops the activations
    their forward passes cached (``self._x = x`` and the like)."""
    for layer, before in zip(layers, snapshots, strict=True):
        for name, value in list(vars(layer).items()):
            if name in _LAYER_STATE or before.get(name, _MISSING) is value:
                continue
            if name in before:
                setattr(layer, name, before[name])
            else:
                delattr(layer, name)


_MISSING = object()


class Checkpoint(_BlockWrapper):
    """Gradient checkpointing: y = block(x), keeping only x between the passes.

    Forward runs the block, then frees what the block's layers cached for their backward pass
    (every attribute a layer rebinds during ``forward``). Backward first re-runs the block's
    forward on the kept x, with the device random generator rewound so dropout draws the same
    masks and with buffers (BatchNorm's running statistics) left as the first pass set them,
    then runs the block's backward. Gradients are those of the plain block; the price is one
    more forward pass of the block per training step.

    Layers written for it keep per-pass data in attributes they rebind (``self._x = x``) and
    long-lived caches in objects created at build time (a dict filled in place survives).
    """

    def forward(self, x, training=False):
        backend, rng = self.backend, self.device_rng
        state = None
        if rng is not None and training:
            # Restoring a state (rather than just reading it) makes the stream that follows
            # reproducible on every backend, CuPy included (its restores reseed).
            state = backend.rng_state(rng)
            backend.set_rng_state(rng, state)
        layers = list(self.block.walk())
        snapshots = _snapshot(layers)
        y = self.block.forward(x, training=training)
        _forget(layers, snapshots)
        self._x, self._training, self._rng_state = x, training, state
        return y

    def backward(self, dy):
        backend, rng, state = self.backend, self.device_rng, self._rng_state
        layers = list(self.block.walk())
        buffers = [dict(layer.buffers) for layer in layers]
        snapshots = _snapshot(layers)
        if state is not None:
            now = backend.rng_state(rng)
            backend.set_rng_state(rng, state)
        try:
            self.block.forward(self._x, training=self._training)
        finally:
            if state is not None:
                backend.set_rng_state(rng, now)
            for layer, saved in zip(layers, buffers, strict=True):
                layer.buffers = saved
        self.block.input_grad = self.input_grad
        dx = self.block.backward(dy)
        _forget(layers, snapshots)
        return dx
