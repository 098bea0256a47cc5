"""Metrics reported by ``fit`` and ``evaluate``, accumulated on the device.

A metric turns each batch into a short vector of sums on the device (``update``); the training
loop adds these vectors up and reads them back once per epoch, then ``result`` turns the total
into one number. So a metric costs no device read per batch, and the epoch value is exact over
all samples (an RMSE over the epoch, not a mean of batch RMSEs).

By name (``pred`` is the network output, ``t`` the target as the loss prepared it):

* ``"accuracy"``: fraction of correct classes; cross-entropy: argmax of the logits against the
  class id (or the argmax of probability rows); binary cross-entropy: ``p > 0.5`` (logit ``> 0``
  with ``from_logits=True``) against ``t > 0.5``, element-wise. Classification losses only.
* ``"binary_accuracy"``: mean over elements of ``(pred > threshold) == (t > 0.5)``, threshold 0
  for ``bce_with_logits``, else 0.5. Not for cross-entropy.
* ``"mae"``: ``mean |pred - t|`` over all elements;  ``"rmse"``: sqrt(mean (pred - t)^2).
* ``"r2"``: coefficient of determination 1 - SS_res / SS_tot per output column, averaged over
  columns (scikit-learn's ``r2_score``; a constant column scores 1 if predicted exactly, else 0).

A plain function ``fn(y_true, y_pred)`` is accepted too: it receives the batch's backend arrays
(targets as the loss prepared them, raw outputs), returns a mean over the batch (0-d array or
float), and its epoch value is the batch-size-weighted mean; its ``__name__`` names it. For a
metric that is not a per-sample mean, subclass :class:`Metric`.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np
from array_api_compat import device

from .registry import get_registry
from .typing import Array, Namespace

__all__ = ["Metric", "Accuracy", "BinaryAccuracy", "MAE", "RMSE", "R2", "FunctionMetric",
           "get_metric", "METRICS"]


_METRICS = get_registry("metric")
_M = TypeVar("_M", bound="Metric")


class Metric:
    """Base class. ``begin()`` starts an epoch, ``update(pred, target)`` returns a 1-D device
    array of additive sums for one batch, ``result(sums)`` turns the summed vector (host NumPy,
    float64) into a float. ``bind(backend, loss)`` is called once before use and may reject a
    loss the metric makes no sense for (ValueError)."""

    name = "metric"
    xp: Namespace

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _METRICS.register(cls)  # every metric class can be rebuilt from a description by name

    def __init__(self) -> None:
        self.xp = None
        self.count = 0

    def bind(self: _M, backend: Any, loss: Any) -> _M:
        self.xp = backend.xp
        return self

    def begin(self) -> None:
        """Reset the host-side counters before an epoch (or a validation pass)."""
        self.count = 0

    def update(self, pred: Array, target: Array) -> Array:
        raise NotImplementedError

    def result(self, sums: np.ndarray) -> float:
        raise NotImplementedError

    def _vector(self, *values):
        return self.xp.stack(values)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (``cls(**config)`` rebuilds it)."""
        return {}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Metric:
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    """Fraction of correctly classified samples (see the module docstring)."""

    name = "accuracy"

    def bind(self, backend, loss):
        if not loss.is_classification:
            raise ValueError(f"metric 'accuracy' needs a classification loss (cross_entropy or "
                             f"bce), got {loss.name!r}; use 'binary_accuracy' to threshold a "
                             "regression output at 0.5, or 'mae'/'rmse'/'r2'")
        self.loss = loss
        return super().bind(backend, loss)

    def update(self, pred, target):
        xp = self.xp
        if self.loss.name == "cross_entropy":
            guess = xp.argmax(pred, axis=1)
            truth = target if target.ndim == 1 else xp.argmax(target, axis=1)
            hit = guess == truth
        else:
            threshold = 0.0 if getattr(self.loss, "from_logits", False) else 0.5
            hit = (pred > threshold) == (target > 0.5)
        self.count += math.prod(hit.shape)
        return self._vector(xp.sum(xp.astype(hit, pred.dtype)))

    def result(self, sums):
        return float(sums[0]) / self.count


class BinaryAccuracy(Metric):
    """Mean over elements of ``(pred > threshold) == (target > 0.5)``; threshold 0 for logits
    (``bce_with_logits``), else 0.5."""

    name = "binary_accuracy"

    def bind(self, backend, loss):
        if loss.name == "cross_entropy":
            raise ValueError("metric 'binary_accuracy' compares each output with its target; with "
                             "the cross_entropy loss use 'accuracy'")
        self.threshold = 0.0 if getattr(loss, "from_logits", False) else 0.5
        return super().bind(backend, loss)

    def update(self, pred, target):
        hit = (pred > self.threshold) == (target > 0.5)
        self.count += math.prod(hit.shape)
        return self._vector(self.xp.sum(self.xp.astype(hit, pred.dtype)))

    def result(self, sums):
        return float(sums[0]) / self.count


class _Regression(Metric):
    def bind(self, backend, loss):
        if loss.name == "cross_entropy":
            raise ValueError(f"metric {self.name!r} compares outputs with targets element-wise; it "
                             "does not apply to the cross_entropy loss (class ids); use 'accuracy'")
        return super().bind(backend, loss)


class MAE(_Regression):
    """Mean absolute error over all elements: ``mean |pred - target|``."""

    name = "mae"

    def update(self, pred, target):
        self.count += math.prod(pred.shape)
        return self._vector(self.xp.sum(self.xp.abs(pred - target)))

    def result(self, sums):
        return float(sums[0]) / self.count


class RMSE(_Regression):
    """Root mean squared error over all elements: sqrt(mean (pred - target)^2)."""

    name = "rmse"

    def update(self, pred, target):
        d = pred - target
        self.count += math.prod(pred.shape)
        return self._vector(self.xp.sum(d * d))

    def result(self, sums):
        return math.sqrt(float(sums[0]) / self.count)


class R2(_Regression):
    """Coefficient of determination per output column, averaged (scikit-learn's ``r2_score``).

    Per batch and column: sum (pred - t)^2, sum (t - c), sum (t - c)^2, where c is the column
    mean of the epoch's first batch (a shift that keeps SS_tot = S2 - S1^2 / n accurate).
    """

    name = "r2"

    def begin(self):
        super().begin()
        self._shift = None

    def update(self, pred, target):
        xp = self.xp
        t = xp.reshape(target, (target.shape[0], -1))
        d = xp.reshape(pred, (pred.shape[0], -1)) - t
        if self._shift is None:
            self._shift = xp.mean(t, axis=0)
        s = t - self._shift
        self.count += t.shape[0]
        return xp.concat([xp.sum(d * d, axis=0), xp.sum(s, axis=0), xp.sum(s * s, axis=0)])

    def result(self, sums):
        ss_res, s1, s2 = np.split(np.asarray(sums, dtype=np.float64), 3)
        ss_tot = np.maximum(s2 - s1 * s1 / self.count, 0.0)
        scores = [1.0 if res == 0 else 0.0 if tot == 0 else 1.0 - res / tot
                  for res, tot in zip(ss_res, ss_tot)]
        return float(np.mean(scores))


class FunctionMetric(Metric):
    """A function ``fn(y_true, y_pred) -> batch mean`` averaged over the epoch, weighted by
    batch size."""

    def __init__(self, fn, name=None):
        super().__init__()
        name = name or getattr(fn, "__name__", None)
        if not name or name == "<lambda>":
            raise ValueError("a metric function needs a name: use a def'd function, or "
                             "bpgpu.metrics.FunctionMetric(fn, name='...')")
        self.fn, self.name = fn, name

    def get_config(self):
        raise TypeError(f"the metric function {self.name!r} cannot be described in a file (that "
                        "would mean storing code); subclass bpgpu.metrics.Metric instead")

    def update(self, pred, target):
        xp = self.xp
        value = self.fn(target, pred)
        if not hasattr(value, "dtype") or not hasattr(value, "shape") or value.shape != ():
            value = xp.asarray(float(value), dtype=pred.dtype, device=device(pred))
        else:
            value = xp.astype(xp.asarray(value), pred.dtype)
        n = pred.shape[0]
        self.count += n
        return xp.reshape(value * float(n), (1,))

    def result(self, sums):
        return float(sums[0]) / self.count

    def __repr__(self):
        return f"FunctionMetric({self.name!r})"


METRICS = {"accuracy": Accuracy, "acc": Accuracy, "binary_accuracy": BinaryAccuracy,
           "mae": MAE, "mean_absolute_error": MAE, "rmse": RMSE, "r2": R2}


_METRICS.use_names(METRICS)  # the names fit(metrics=[...]) accepts; add yours with add_name


def get_metric(metric: Any) -> Metric:
    """A fresh :class:`Metric` from a name (see :data:`METRICS`), a Metric or a function."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        return _METRICS.create(metric)
    if callable(metric):
        return FunctionMetric(metric)
    raise TypeError(f"a metric is a name, a bpgpu.metrics.Metric or a function, got {metric!r}")
