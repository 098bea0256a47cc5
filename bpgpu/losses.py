"""Losses: ``forward(pred, target, weight=None)`` gives a 0-d array, ``backward()`` dL/dpred.

Without weights all use PyTorch's default ``reduction="mean"``, so numbers compare one to one
with ``torch.nn.MSELoss``, ``BCELoss``, ``BCEWithLogitsLoss`` and ``CrossEntropyLoss``.

Sample weights follow scikit-learn's convention, a weight of 2 counts a row twice: with ``l_n``
the loss of sample n (for MSE and BCE the mean over that sample's elements), the batch loss is
the weighted mean ``L = sum_n w_n l_n / sum_n w_n`` (0 when every weight is 0), i.e. torch's
``reduction="none"`` followed by that weighted mean. With all weights equal it is the plain mean.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from array_api_compat import array_namespace, device

from ._validation import as_numeric, cast_finite, check_finite
from .layers.activations import stable_sigmoid
from .registry import get_registry
from .typing import Array, ArrayLike, Namespace

__all__ = ["Loss", "MSE", "BinaryCrossEntropy", "CrossEntropy", "get_loss", "LOSSES",
           "serialize_loss", "deserialize_loss"]

# log(p) is clamped at -100, as torch.nn.BCELoss does; p is floored first so that log(0) is never
# evaluated (no divide-by-zero warning). The floor is the smallest positive float32 (a subnormal,
# log = -103.3): below e^-100 in every dtype, so the clamp, not the floor, sets the value. (A floor
# of e^-100 itself rounds to a subnormal in float32 whose log is -99.98, not -100.)
_LOG_FLOOR = -100.0
_P_FLOOR = 1e-45
# The floor of p (1 - p) in the BCE gradient: torch's 1e-12, which it stores as a float32.
_GRAD_FLOOR = float(np.float32(1e-12))

_LOSSES = get_registry("loss")
_L = TypeVar("_L", bound="Loss")


class Loss:
    """Base class. Subclasses implement ``forward``, ``backward`` and ``prepare_target``."""

    name = "loss"
    #: True for losses whose targets are classes (evaluate() then reports an accuracy).
    is_classification = False
    xp: Namespace

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _LOSSES.register(cls)  # every loss class can be rebuilt from a file by its name

    def __init__(self) -> None:
        self.xp = None

    def bind(self: _L, backend: Any) -> _L:
        """Use ``backend.xp`` from now on (set by the Network that owns the loss)."""
        self.xp = backend.xp
        return self

    def _ns(self, x):
        return self.xp if self.xp is not None else array_namespace(x)

    def __call__(self, pred: Array, target: Array, weight: Array | None = None) -> Array:
        return self.forward(pred, target, weight)

    def forward(self, pred: Array, target: Array, weight: Array | None = None) -> Array:
        """The batch loss of ``pred`` against ``target``, optionally weighted per sample by
        ``weight`` (shape (N,), non-negative; see the module docstring)."""
        raise NotImplementedError

    def backward(self) -> Array:
        raise NotImplementedError

    def prepare_target(self, y: ArrayLike, backend: Any, dtype: Any,
                       output_shape: tuple[int, ...]) -> Array:
        """Validate targets ``y`` for per-sample network outputs of ``output_shape`` and return
        them on ``backend``: the boundary check done once per fit/evaluate."""
        y = as_numeric(y, "y", backend)
        shape = tuple(y.shape)
        if shape[1:] == () and tuple(output_shape) == (1,):
            y = backend.xp.reshape(y, (-1, 1)) if backend.is_native(y) else np.reshape(y, (-1, 1))
        elif shape[1:] != tuple(output_shape):
            raise ValueError(
                f"y has shape {shape}; expected (n_samples, {', '.join(map(str, output_shape))}) "
                f"to match the network's output" + (" or (n_samples,)" if tuple(output_shape) == (1,) else ""))
        y = cast_finite(y, "y", backend, dtype)
        self._check_values(y, backend)
        return y

    def _check_values(self, y, backend):
        """Hook: reject target values outside the loss's domain."""

    def accuracy(self, pred: Array, target: Array) -> Array:
        """Fraction of correct predictions as a 0-d array (classification losses only)."""
        raise TypeError(f"accuracy is not defined for the {self.name!r} loss")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``cls(**config)`` rebuilds it)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Loss:
        return cls(**config)


class MSE(Loss):
    """L = mean((pred - target)^2) over all elements;  dL/dpred = 2 (pred - target) / n_elements."""

    name = "mse"

    def forward(self, pred, target, weight=None):
        xp = self._ns(pred)
        self._diff = pred - target
        self._n = _size(pred)
        self._scale = _row_scale(xp, weight, pred)  # w_n / sum(w) * N, broadcast over rows
        if self._scale is None:
            return xp.sum(self._diff * self._diff) / self._n
        return xp.sum(self._scale * self._diff * self._diff) / self._n

    def backward(self):
        grad = self._diff * (2.0 / self._n)
        return grad if self._scale is None else grad * self._scale


class BinaryCrossEntropy(Loss):
    """L = -mean(t log p + (1 - t) log(1 - p)) over all elements, targets t in [0, 1].

    ``from_logits=False``: ``pred`` are probabilities p; log terms are clamped at -100 as
    ``torch.nn.BCELoss`` does, so p of exactly 0 or 1 gives a finite loss;
    dL/dp = (p - t) / max(p (1 - p), 1e-12) / n.

    ``from_logits=True``: ``pred`` are logits z, p = sigma(z) (``torch.nn.BCEWithLogitsLoss``);
    ``L = mean(max(z, 0) - z t + log(1 + e^-|z|))``, dL/dz = (sigma(z) - t) / n.
    """

    name = "bce"
    is_classification = True

    def __init__(self, from_logits=False):
        super().__init__()
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be True or False, got {from_logits!r}")
        self.from_logits = from_logits

    def forward(self, pred, target, weight=None):
        xp = self._ns(pred)
        self._pred, self._t, self._n = pred, target, _size(pred)
        self._scale = _row_scale(xp, weight, pred)
        if self.from_logits:
            z = pred
            terms = xp.maximum(z, 0.0) - z * target + xp.log1p(xp.exp(-xp.abs(z)))
        else:
            log_p = xp.maximum(xp.log(xp.maximum(pred, _P_FLOOR)), _LOG_FLOOR)
            log_q = xp.maximum(xp.log(xp.maximum(1.0 - pred, _P_FLOOR)), _LOG_FLOOR)
            terms = -(target * log_p + (1.0 - target) * log_q)
        if self._scale is not None:
            terms = self._scale * terms
        return xp.sum(terms) / self._n

    def backward(self):
        xp = self._ns(self._pred)
        p, t = self._pred, self._t
        if self.from_logits:
            grad = (stable_sigmoid(xp, p) - t) / self._n
        else:
            grad = (p - t) / (xp.maximum(p * (1.0 - p), _GRAD_FLOOR) * self._n)
        return grad if self._scale is None else grad * self._scale

    def backward_through_sigmoid(self):
        """dL/dz for p = sigmoid(z), fused: (p - t) / n. Exact where the chained form rounds."""
        grad = (self._pred - self._t) / self._n
        return grad if self._scale is None else grad * self._scale

    def _check_values(self, y, backend):
        xp = backend.xp if backend.is_native(y) else array_namespace(y)
        if xp.isdtype(y.dtype, "bool"):  # always in [0, 1]; strict refuses bool >= 0
            return
        if not bool(xp.all((y >= 0) & (y <= 1))):
            raise ValueError("binary cross-entropy targets must lie in [0, 1] (e.g. labels 0 and 1)")

    def accuracy(self, pred, target):
        xp = self._ns(pred)
        threshold = 0.0 if self.from_logits else 0.5
        hit = (pred > threshold) == (target > 0.5)
        return xp.mean(xp.astype(hit, pred.dtype))

    def get_config(self):
        return {"from_logits": self.from_logits}


class CrossEntropy(Loss):
    """Softmax cross-entropy from logits (``torch.nn.CrossEntropyLoss``).

    Shapes: logits z (N, C); targets either class ids (N,) or (N, 1) in [0, C), or probability
    rows (N, C).
    With t the one-hot or probability rows and s = softmax(z):
    L = mean_n( sum_c t_nc * logsumexp(z_n) - sum_c t_nc z_nc ),  dL/dz = (s * sum_c t - t) / N.
    """

    name = "cross_entropy"
    is_classification = True

    def forward(self, pred, target, weight=None):
        xp = self._ns(pred)
        n, n_classes = pred.shape
        if target.ndim == 1:
            target = xp.astype(target[:, None] == xp.arange(n_classes, device=device(pred)),
                               pred.dtype)
        m = xp.max(pred, axis=1, keepdims=True)
        shifted = pred - m
        e = xp.exp(shifted)
        sum_e = xp.sum(e, axis=1, keepdims=True)
        t_sum = xp.sum(target, axis=1, keepdims=True)
        self._softmax, self._t, self._tsum, self._n = e / sum_e, target, t_sum, n
        self._scale = _row_scale(xp, weight, pred)
        rows = t_sum * xp.log(sum_e) - xp.sum(target * shifted, axis=1, keepdims=True)
        if self._scale is not None:
            rows = self._scale * rows
        return xp.sum(rows) / n

    def backward(self):
        grad = (self._softmax * self._tsum - self._t) / self._n
        return grad if self._scale is None else grad * self._scale

    def prepare_target(self, y, backend, dtype, output_shape):
        if len(output_shape) != 1:
            raise ValueError(f"cross-entropy needs network outputs of shape (n_samples, n_classes), "
                             f"got per-sample shape {tuple(output_shape)}")
        n_classes = output_shape[0]
        y_checked = as_numeric(y, "y", backend)
        if y_checked.ndim == 2 and y_checked.shape[1] == 1 and n_classes > 1:
            y_checked = (backend.xp.reshape(y_checked, (-1,)) if backend.is_native(y_checked)
                         else np.reshape(y_checked, (-1,)))  # class ids as a column
        if y_checked.ndim == 2:
            return super().prepare_target(y_checked, backend, dtype, output_shape)
        if y_checked.ndim != 1:
            raise ValueError(f"cross-entropy targets must be class ids of shape (n_samples,) or "
                             f"probability rows (n_samples, {n_classes}); got shape {tuple(y_checked.shape)}")
        native = backend.is_native(y_checked)
        xp = backend.xp if native else array_namespace(y_checked)  # NumPy < 2 has no isdtype
        if not xp.isdtype(y_checked.dtype, "integral"):
            if xp.isdtype(y_checked.dtype, "bool"):
                raise TypeError("cross-entropy class ids must be integers, got booleans; "
                                "use BinaryCrossEntropy for two classes with one output")
            check_finite(y_checked, "y", backend)
            if not bool(xp.all(y_checked == xp.round(y_checked))):
                raise ValueError("cross-entropy class ids must be whole numbers, got fractional values")
        if y_checked.shape[0] and not bool(xp.all((y_checked >= 0) & (y_checked < n_classes))):
            raise ValueError(f"class labels must lie in [0, {n_classes}) for a network with "
                             f"{n_classes} outputs")
        return backend.asarray(y_checked, dtype=backend.xp.int64)

    #: How far a probability row's sum may stray from 1 (float32 rounding of a handful of
    #: probabilities stays far below it).
    ROW_SUM_TOLERANCE = 1e-3

    def _check_values(self, y, backend):
        """Probability rows: every entry >= 0 and every row summing to 1."""
        xp = backend.xp
        if not bool(xp.all(y >= 0)):
            raise ValueError("cross-entropy probability targets must be >= 0; got negative "
                             "entries (for class ids pass a 1-D array of integers)")
        sums = xp.sum(y, axis=1)
        if y.shape[0] and not bool(xp.all(xp.abs(sums - 1.0) <= self.ROW_SUM_TOLERANCE)):
            worst = float(backend.to_numpy(xp.max(xp.abs(sums - 1.0))))
            raise ValueError("cross-entropy probability targets must be rows summing to 1; a "
                             f"row's sum is off by {worst:.3g}")

    def accuracy(self, pred, target):
        xp = self._ns(pred)
        guess = xp.argmax(pred, axis=1)
        truth = target if target.ndim == 1 else xp.argmax(target, axis=1)
        return xp.mean(xp.astype(guess == truth, pred.dtype))


def _row_scale(xp, weight, pred):
    """None without weights, else ``N w_n / sum(w)`` shaped (N, 1, ...) to broadcast over
    ``pred``'s rows: the factor that turns a mean over rows into the weighted mean. A batch of
    zero weights gets factor 0 (loss and gradient 0), not a division by zero."""
    if weight is None:
        return None
    w = xp.astype(weight, pred.dtype) if weight.dtype != pred.dtype else weight
    total = xp.sum(w)
    scale = (w * float(pred.shape[0])) / xp.where(total > 0, total, 1.0)
    return xp.reshape(scale, (pred.shape[0],) + (1,) * (pred.ndim - 1))


def _size(x):
    n = 1
    for d in x.shape:
        n *= d
    return n


LOSSES = {
    "mse": MSE,
    "mean_squared_error": MSE,
    "bce": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce_with_logits": lambda: BinaryCrossEntropy(from_logits=True),
    "cross_entropy": CrossEntropy,
    "categorical_cross_entropy": CrossEntropy,
}
_LOSSES.use_names(LOSSES)  # the names Network(loss=...) accepts; add yours with add_name


def get_loss(loss: Loss | str) -> Loss:
    """A loss from its name (``"mse"``, ``"bce"``, ``"cross_entropy"``, ...) or a Loss instance."""
    if isinstance(loss, Loss):
        return loss
    return _LOSSES.create(loss)


def serialize_loss(loss: Loss) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` describing ``loss`` (JSON-serialisable)."""
    return _LOSSES.serialize(loss)


def deserialize_loss(spec: dict[str, Any]) -> Loss:
    """Rebuild a loss from :func:`serialize_loss`'s output (any registered Loss class)."""
    return _LOSSES.deserialize(spec)
