"""Weight initialisers, drawn on the host so one seed means one network on every backend.

Each takes ``(rng, shape, fan_in, fan_out)`` (``rng`` a ``numpy.random.Generator``) and returns a
float64 NumPy array; the layer then casts and moves it to its backend.

==================  =========================================  ==================================
name                distribution                               scale
==================  =========================================  ==================================
``he_normal``       N(0, std^2)                                std = sqrt(2 / fan_in)
``he_uniform``      U(-a, a)                                   a = sqrt(6 / fan_in)
``glorot_normal``   N(0, std^2)  (alias ``xavier_normal``)     std = sqrt(2 / (fan_in + fan_out))
``glorot_uniform``  U(-a, a)     (alias ``xavier_uniform``)    a = sqrt(6 / (fan_in + fan_out))
``lecun_normal``    N(0, std^2)                                std = sqrt(1 / fan_in)
``lecun_uniform``   U(-a, a)                                   a = sqrt(3 / fan_in)
``zeros``           all zeros
==================  =========================================  ==================================
"""

import math
from collections.abc import Callable

import numpy as np


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
              fan_out: int) -> np.ndarray:
    """N(0, 2 / fan_in): keeps the variance of ReLU layers' outputs (He et al., 2015)."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def he_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
               fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / fan_in): the uniform twin of :func:`he_normal`."""
    bound = math.sqrt(6.0 / fan_in)
    return rng.uniform(-bound, bound, shape)


def glorot_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
                  fan_out: int) -> np.ndarray:
    """N(0, 2 / (fan_in + fan_out)) (Glorot and Bengio, 2010), for tanh and sigmoid layers."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan_in + fan_out))


def glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
                   fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)): the uniform twin of :func:`glorot_normal`."""
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, shape)


def lecun_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
                 fan_out: int) -> np.ndarray:
    """N(0, 1 / fan_in) (LeCun et al., 1998)."""
    return rng.standard_normal(shape) * math.sqrt(1.0 / fan_in)


def lecun_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
                  fan_out: int) -> np.ndarray:
    """U(-a, a) with a = sqrt(3 / fan_in): the uniform twin of :func:`lecun_normal`."""
    bound = math.sqrt(3.0 / fan_in)
    return rng.uniform(-bound, bound, shape)


def zeros(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
          fan_out: int) -> np.ndarray:
    """All zeros: for biases (zero weights would keep every unit of a layer identical)."""
    return np.zeros(shape)


INITIALIZERS = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "zeros": zeros,
}


def get_initializer(name: str) -> Callable[..., np.ndarray]:
    """The initialiser function called ``name`` (see the table in the module docstring)."""
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown initializer {name!r}; expected one of {', '.join(sorted(INITIALIZERS))}"
        ) from None
