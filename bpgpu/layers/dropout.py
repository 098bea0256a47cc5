"""Dropout: randomly silence units while training."""

import math

from .._validation import is_real_number
from ..precision import wide_dtype
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Inverted dropout with drop probability ``p``.

    Training: ``y = x * m / (1 - p)`` with ``m_i = 1`` where a uniform draw ``u_i >= p`` (kept with
    probability ``1 - p``), else 0; so ``E[y] = x``. Inference (``training=False``): ``y = x``.
    Backward: ``dx = dy * m / (1 - p)`` (the mask of the last forward pass). Shapes: any, kept.

    The draws come from the layer's device generator (``device_rng``, seeded by the Network's
    seed), so one seed gives the same masks on one backend. 16-bit inputs (mixed precision) draw
    in float32, so they get the masks a float32 run would.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if not is_real_number(p) or not 0.0 <= p < 1.0 or not math.isfinite(p):
            raise ValueError(f"Dropout p (the drop probability) must be a number in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x, training=False):
        if not training or self.p == 0.0:
            self._scale = None
            return x
        if self.device_rng is None:
            raise RuntimeError("Dropout needs a device random generator: build it with "
                               "build(backend, dtype, rng, device_rng=backend.make_rng(seed)) "
                               "or use it inside a Network")
        keep = self.device_rng.uniform(tuple(x.shape), wide_dtype(self.xp, x.dtype)) >= self.p
        self._scale = self.xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p))
        return x * self._scale

    def backward(self, dy):
        return dy if self._scale is None else dy * self._scale

    def get_config(self):
        return {"p": self.p}
