"""Activation functions as layers, each with its derivative written next to it.

All are element-wise except :class:`Softmax` (over the last axis). All are stable for inputs of
+-1000 in float32 and float64: no overflow, no NaN, no warnings.
"""

import math

from .._validation import is_real_number
from ..registry import get_registry
from ..special import erf_for, normal_cdf
from .base import Layer

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "SiLU", "Swish", "GELU", "Softmax", "Identity",
           "get_activation", "ACTIVATIONS", "stable_sigmoid", "stable_softmax"]


def stable_sigmoid(xp, x):
    """sigma(x) = 1 / (1 + e^-x) without overflow: with e = exp(-|x|) <= 1,
    sigma(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0."""
    e = xp.exp(-xp.abs(x))
    r = 1.0 / (1.0 + e)
    return xp.where(x >= 0, r, e * r)


def stable_softmax(xp, x):
    """softmax over the last axis, shifted by the row maximum (a row of -inf gives NaN-free output
    wherever any entry is finite)."""
    m = xp.max(x, axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0.0)
    e = xp.exp(x - m)
    return e / xp.sum(e, axis=-1, keepdims=True)


class ReLU(Layer):
    """y = max(x, 0);  dy/dx = 1 where x > 0, else 0."""

    def forward(self, x, training=False):
        self._x = x
        return self.xp.maximum(x, 0.0)

    def backward(self, dy):
        return self.xp.where(self._x > 0, dy, 0.0)


class LeakyReLU(Layer):
    """y = x for x > 0, ``negative_slope * x`` otherwise;  dy/dx = 1 or ``negative_slope``."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if not is_real_number(negative_slope) or not math.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def forward(self, x, training=False):
        self._x = x
        return self.xp.where(x > 0, x, self.negative_slope * x)

    def backward(self, dy):
        return self.xp.where(self._x > 0, dy, self.negative_slope * dy)

    def get_config(self):
        return {"negative_slope": self.negative_slope}


class Sigmoid(Layer):
    """y = 1 / (1 + e^-x);  dy/dx = y (1 - y)."""

    def forward(self, x, training=False):
        self._y = stable_sigmoid(self.xp, x)
        return self._y

    def backward(self, dy):
        y = self._y
        return dy * y * (1.0 - y)


class Tanh(Layer):
    """y = tanh(x);  dy/dx = 1 - y^2."""

    def forward(self, x, training=False):
        self._y = self.xp.tanh(x)
        return self._y

    def backward(self, dy):
        y = self._y
        return dy * (1.0 - y * y)


class SiLU(Layer):
    """y = x sigma(x) (also called Swish);  dy/dx = sigma(x) (1 + x (1 - sigma(x)))."""

    def forward(self, x, training=False):
        self._x = x
        self._s = stable_sigmoid(self.xp, x)
        return x * self._s

    def backward(self, dy):
        s = self._s
        return dy * s * (1.0 + self._x * (1.0 - s))


Swish = SiLU

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_FORMS = ("none", "tanh")


class GELU(Layer):
    """Gaussian error linear unit, as PyTorch's ``nn.GELU(approximate=...)``.

    ``approximate="none"`` (the default, exact): y = x Phi(x) with Phi(x) = (1 + erf(x/sqrt 2))/2,
    dy/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi). erf comes from
    :func:`bpgpu.special.erf_for` (the library's own where it has one, else a standard-only
    version accurate to about 2 ulp).

    ``approximate="tanh"``: y = x/2 (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3);
    dy/dx = (1 + t)/2 + x/2 (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t = tanh(u).
    The two forms differ by less than 5e-4 everywhere.

    Model files written before the exact form existed stored GELU without ``approximate``; they
    load as the tanh form they were trained with.
    """

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in GELU_FORMS:
            raise ValueError(f"GELU approximate must be one of {GELU_FORMS} (PyTorch's "
                             f"spelling), got {approximate!r}")
        self.approximate = approximate

    def init_params(self, rng):
        if self.approximate == "none":
            self._erf = erf_for(self.backend)

    def forward(self, x, training=False):
        self._x = x
        if self.approximate == "none":
            self._cdf = normal_cdf(self._erf, x)
            return x * self._cdf
        self._t = self.xp.tanh(_GELU_C * (x + _GELU_A * (x * x * x)))
        return 0.5 * x * (1.0 + self._t)

    def backward(self, dy):
        x = self._x
        if self.approximate == "none":
            return dy * (self._cdf + x * (_INV_SQRT_2PI * self.xp.exp(-0.5 * (x * x))))
        t = self._t
        du = _GELU_C * (1.0 + (3.0 * _GELU_A) * (x * x))
        return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)

    def get_config(self):
        return {"approximate": self.approximate}

    @classmethod
    def from_config(cls, config):
        # Files from before the exact form have no "approximate": they were trained with tanh.
        return cls(**{"approximate": "tanh", **config})


class Softmax(Layer):
    """y_i = e^{x_i} / sum_j e^{x_j} over the last axis;  dx = y * (dy - sum_j dy_j y_j).

    For classification, prefer raw logits with the ``CrossEntropy`` loss, which fuses the
    softmax into the loss and is more stable.
    """

    def forward(self, x, training=False):
        self._y = stable_softmax(self.xp, x)
        return self._y

    def backward(self, dy):
        y = self._y
        return y * (dy - self.xp.sum(dy * y, axis=-1, keepdims=True))


class Identity(Layer):
    """y = x;  dx = dy."""

    def forward(self, x, training=False):
        return x

    def backward(self, dy):
        return dy


ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "silu": SiLU,
    "swish": SiLU,
    "gelu": GELU,
    "softmax": Softmax,
    "identity": Identity,
    "linear": Identity,
}
get_registry("activation").use_names(ACTIVATIONS)  # the names activation=... accepts; add yours there


def get_activation(name):
    """A new activation layer from its name (``"relu"``, ``"sigmoid"``, ... or None for identity),
    or the layer itself when ``name`` is already a :class:`Layer`."""
    if name is None:
        return Identity()
    if isinstance(name, Layer):
        return name
    try:
        return ACTIVATIONS[name.lower()]()
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)} or None"
        ) from None
