"""Layers that only change the per-sample shape: Flatten and Reshape. Their backward passes
reshape dy back to the input's shape."""

import math

from .base import Layer

__all__ = ["Flatten", "Reshape"]


class Flatten(Layer):
    """x (N, d1, ..., dk) -> y (N, d1 * ... * dk), e.g. between a Conv2D/pooling stack and Dense."""

    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0], math.prod(x.shape[1:])))

    def backward(self, dy):
        return self.xp.reshape(dy, self._shape) if self.input_grad else None

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)


class Reshape(Layer):
    """x ``(N, *in_shape)`` -> y ``(N, *shape)``, the same values in the same (row-major) order.

    ``shape`` is the per-sample output shape (no batch axis); one entry may be -1, inferred from
    the sample size, e.g. ``Reshape((1, 8, 8))`` turns 64 features into a 1-channel 8x8 image.
    """

    def __init__(self, shape):
        super().__init__()
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        ok = isinstance(shape, (tuple, list)) and len(shape) > 0 and all(
            isinstance(s, int) and not isinstance(s, bool) and (s >= 1 or s == -1) for s in shape)
        if not ok or list(shape).count(-1) > 1:
            raise ValueError("Reshape shape must be a non-empty tuple of positive ints, at most one "
                             f"of them -1, got {shape!r}")
        self.shape = tuple(shape)

    def output_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if size % known:
                raise ValueError(f"Reshape{self.shape} cannot hold a sample of shape "
                                 f"{tuple(input_shape)} ({size} values is not a multiple of {known})")
            return tuple(size // known if s == -1 else s for s in self.shape)
        if size != known:
            raise ValueError(f"Reshape{self.shape} needs {known} values per sample, got shape "
                             f"{tuple(input_shape)} ({size} values)")
        return self.shape

    def forward(self, x, training=False):
        self._shape = tuple(x.shape)
        return self.xp.reshape(x, (x.shape[0],) + self.output_shape(x.shape[1:]))

    def backward(self, dy):
        return self.xp.reshape(dy, self._shape) if self.input_grad else None

    def get_config(self):
        return {"shape": list(self.shape)}
