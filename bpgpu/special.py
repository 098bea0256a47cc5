"""The error function, written with the Array API's elementary operations only.

Neither the Array API standard nor NumPy has ``erf``, which the exact GELU needs. :func:`erf`
evaluates it on any namespace (NumPy, CuPy, torch, array-api-strict) on the arrays' own device,
accurate to about 2 ulp in float64 (to float32 rounding in float32).

Method, for a = abs(x) (erf is odd): four pieces, each one polynomial of degree 14 in a variable s
that runs over [-1, 1] on its piece,

* a in [0, 1]:       erf(a) = a p0(s),                 s = 2 a^2 - 1;
* a in [1, 1.75], [1.75, 3], [3, 6]:
                     erf(a) = 1 - exp(-a^2) p_i(s),    s = (a - centre) / half-width,

where p_i approximates erfcx(a) = exp(a^2) erfc(a), a smooth, slowly varying function, so the
tail 1 - erf(a) needs no subtraction of nearly equal numbers. Beyond 6, erf(a) rounds to 1 in
float64. The coefficients are Chebyshev interpolants rewritten in powers of s, derived by
``tools/derive_erf_coefficients.py`` (50-digit arithmetic). Each element evaluates only its own
piece: the coefficients are gathered per element (``take``) inside one Horner loop.

That standard-only :func:`erf` is the reference. :func:`erf_for` hands layers the fastest erf a
backend offers: the library's own where it has one (``scipy.special.erf`` for NumPy when SciPy
is installed, ``torch.special.erf``, ``cupyx.scipy.special.erf``), else the reference; the tests
compare each native erf with the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

__all__ = ["ErfTable", "erf", "erf_for", "normal_cdf"]

BREAKS = (1.0, 1.75, 3.0, 6.0)  # piece 0 is [0, 1], piece i is [BREAKS[i-1], BREAKS[i]]

# COEFFICIENTS[i][k]: coefficient of s^k in piece i (tools/derive_erf_coefficients.py).
COEFFICIENTS = (
    (0.9654687386698673, -0.1405360890227171, 0.019852496688983708, -0.0022854855611440673,
     0.0002175171560415978, -1.75371694414921e-05, 1.2233827383720745e-06, -7.511569160678145e-08,
     4.11580054145447e-09, -2.0352493920236875e-10, 9.167689188119807e-12, -3.791093040150038e-13,
     1.4488212905007758e-14, -5.166061346551406e-16, 1.713081554907914e-17),
    (0.3432958898621254, -0.06911830124050045, 0.012636860434728357, -0.0021359199668578976,
     0.00033786238286087313, -5.046138168309861e-05, 7.164249223217206e-06, -9.720187390521392e-07,
     1.26568832525822e-07, -1.5873051382507194e-08, 1.9228696479182977e-09, -2.2538674859762927e-10,
     2.5662488915675593e-11, -2.966678273787335e-12, 3.192066666743833e-13),
    (0.22050569220490668, -0.0506107057013799, 0.011009769742057834, -0.002284786635778009,
     0.0004546055714644187, -8.707585426965842e-05, 1.6109027033705296e-05, -2.8863315577520986e-06,
     5.020463792298304e-07, -8.494971566075636e-08, 1.4005419532811803e-08, -2.2460478673658073e-09,
     3.5324855765817046e-10, -5.927429162102176e-11, 8.903214522753725e-12),
    (0.12248480427384142, -0.039023892947264334, 0.012179532228092938, -0.0037279443623137623,
     0.0011201614180255182, -0.0003307144469834922, 9.601442097892721e-05, -2.742980243322736e-05,
     7.717130773722622e-06, -2.1433115664945932e-06, 5.856851194088754e-07, -1.5261960871427327e-07,
     4.0672025486539483e-08, -1.4200194989314377e-08, 3.6620914354354556e-09),
)

_SQRT_HALF = math.sqrt(0.5)


class ErfTable:
    """The coefficient tables of :func:`erf` as arrays of one namespace, dtype and device
    (build once, reuse for every call on such arrays)."""

    def __init__(self, xp: Any, dtype: Any, device: Any = None) -> None:
        def column(values):
            return xp.asarray(values, dtype=dtype, device=device)

        self.xp, self.dtype = xp, dtype
        # Per-piece affine map a -> s: s = v * scale + shift, v = a^2 in piece 0, else a.
        self.scale = column([2.0] + [2.0 / (hi - lo) for lo, hi in pairwise(BREAKS)])
        self.shift = column([-1.0] + [-(hi + lo) / (hi - lo) for lo, hi in pairwise(BREAKS)])
        self.powers = [column([row[k] for row in COEFFICIENTS])
                       for k in range(len(COEFFICIENTS[0]))]


def erf(xp: Any, x: Any, table: ErfTable | None = None) -> Any:
    """erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, element-wise, same shape and dtype as x.

    ``table``: an :class:`ErfTable` for x's namespace, dtype and device (built if omitted).
    NaN gives NaN, +-inf gives +-1.
    """
    if table is None:
        from array_api_compat import device

        table = ErfTable(xp, x.dtype, device(x))
    shape = x.shape
    x = xp.reshape(x, (-1,))
    a = xp.abs(x)
    v = xp.minimum(a, BREAKS[-1])  # beyond 6, 1 - exp(-36) p(1) rounds to 1 as erf(a) does
    piece = xp.astype(v >= BREAKS[0], xp.int64)
    for b in BREAKS[1:-1]:
        piece = piece + xp.astype(v >= b, xp.int64)
    small = piece == 0
    s = xp.where(small, v * v, v) * xp.take(table.scale, piece) + xp.take(table.shift, piece)
    p = xp.take(table.powers[-1], piece)
    for c in reversed(table.powers[:-1]):
        p = p * s + xp.take(c, piece)
    y = xp.where(small, v * p, 1.0 - xp.exp(-(v * v)) * p)
    return xp.reshape(xp.where(x < 0, -y, y), shape)


def normal_cdf(erf_fn: Callable[[Any], Any], x: Any) -> Any:
    """Phi(x) = (1 + erf(x / sqrt(2))) / 2, the standard normal distribution function, with
    ``erf_fn`` one of :func:`erf_for`'s functions."""
    return 0.5 * (1.0 + erf_fn(x * _SQRT_HALF))


def _native_erf(backend_name: str) -> Callable[[Any], Any] | None:
    """The array library's own erf for a backend name, or None (none, or not installed)."""
    try:
        if backend_name == "torch":
            from torch.special import erf as torch_erf

            return torch_erf
        if backend_name == "cupy":
            from cupyx.scipy.special import erf as cupy_erf

            return cupy_erf
        if backend_name != "numpy":
            return None
        from scipy.special import erf as scipy_erf
    except ImportError:
        return None

    def native(x: Any) -> Any:  # SciPy computes float16 in float32: keep the input's dtype
        y = scipy_erf(x)
        return y if y.dtype == x.dtype else y.astype(x.dtype)

    return native


def erf_for(backend: Any, native: bool = True) -> Callable[[Any], Any]:
    """A function ``x -> erf(x)`` for arrays of ``backend`` (any float dtype it has): the
    library's own erf where it has one and ``native`` is True, else the reference :func:`erf`
    with coefficient tables kept per dtype."""
    fast = _native_erf(backend.name) if native else None
    if fast is not None:
        return fast
    xp = backend.xp
    tables: dict[Any, ErfTable] = {}

    def reference(x: Any) -> Any:
        table = tables.get(x.dtype)
        if table is None:
            table = tables[x.dtype] = ErfTable(xp, x.dtype, backend.device)
        return erf(xp, x, table)

    return reference
