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
* ``"precision"``, ``"recall"``, ``"f1"`` (and ``_macro``, ``_micro``, ``_weighted``,
  ``_per_class`` variants): from per-class counts of true positives, predicted and true
  samples, as scikit-learn's ``precision_score``/``recall_score``/``f1_score``. Cross-entropy:
  classes by argmax; one-output BCE: the two classes 0 and 1 (plain names report the positive
  class, scikit-learn's ``average="binary"``); BCE with k outputs: k labels (multilabel). A class
  with nothing to divide by scores 0 (``zero_division=0``).
* ``"roc_auc"``: area under the ROC curve of a binary output (one-output BCE, or cross-entropy
  with two classes: the score is z_1 - z_0), exact with ties counting one half. Not a sum: it
  keeps the epoch's scores on the device and ranks them once at the end (one read).
* ``"top_k_accuracy"``: cross-entropy only; a hit when fewer than k classes (default 5) score
  higher than the true one (``TopKAccuracy(k)`` for other k; name ``top_{k}_accuracy``).

Sample weights: every built-in metric takes ``update(pred, target, weight)`` with per-sample
weights ``weight`` (N,) and then reports the weighted value, as scikit-learn's metrics do with
``sample_weight``. Function metrics are unweighted.

A plain function ``fn(y_true, y_pred)`` is accepted too: it receives the batch's backend arrays
(targets as the loss prepared them, raw outputs), returns a mean over the batch (0-d array or
float), and its epoch value is the batch-size-weighted mean; its ``__name__`` names it. For a
metric that is not a per-sample mean, subclass :class:`Metric`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from array_api_compat import device

from .registry import get_registry
from .typing import Array, Namespace

__all__ = ["Metric", "Accuracy", "BinaryAccuracy", "MAE", "RMSE", "R2", "Precision", "Recall",
           "F1", "ROCAUC", "TopKAccuracy", "FunctionMetric", "get_metric", "metric_logs",
           "METRICS"]


_METRICS = get_registry("metric")
_M = TypeVar("_M", bound="Metric")


class Metric:
    """Base class. ``begin()`` starts an epoch, ``update(pred, target)`` (or ``update(pred,
    target, weight)`` with sample weights) returns a 1-D device array of additive sums for one
    batch, ``result(sums)`` turns the summed vector (host NumPy, float64) into a float (or a
    list of floats, one per class). ``bind(backend, loss)`` is called once before use and may
    reject a loss the metric makes no sense for (ValueError)."""

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
        self.weighted = False

    def update(self, pred: Array, target: Array, weight: Array | None = None) -> Array:
        raise NotImplementedError

    def result(self, sums: np.ndarray) -> float:
        raise NotImplementedError

    def _vector(self, *values):
        return self.xp.stack(values)

    def _mean_sums(self, values, weight):
        """The vector ``[sum_i w_i v_i, sum_i w_i]`` over the elements of ``values`` (weights
        per row, broadcast along the other axes); unweighted, ``[sum v]`` and the count kept on
        the host. :meth:`_mean` reads it back."""
        xp = self.xp
        if weight is None:
            self.count += math.prod(values.shape)
            return self._vector(xp.sum(values))
        self.weighted = True
        full = _row_weights(xp, weight, values) * xp.ones_like(values)
        return self._vector(xp.sum(full * values), xp.sum(full))

    def _mean(self, sums):
        total = float(sums[-1]) if self.weighted else self.count
        return float(sums[0]) / total if total else float("nan")

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

    def update(self, pred, target, weight=None):
        xp = self.xp
        if self.loss.name == "cross_entropy":
            guess = xp.argmax(pred, axis=1)
            truth = target if target.ndim == 1 else xp.argmax(target, axis=1)
            hit = guess == truth
        else:
            hit = (pred > _threshold(self.loss)) == (target > 0.5)
        return self._mean_sums(xp.astype(hit, pred.dtype), weight)

    def result(self, sums):
        return self._mean(sums)


class BinaryAccuracy(Metric):
    """Mean over elements of ``(pred > threshold) == (target > 0.5)``; threshold 0 for logits
    (``bce_with_logits``), else 0.5."""

    name = "binary_accuracy"

    def bind(self, backend, loss):
        if loss.name == "cross_entropy":
            raise ValueError("metric 'binary_accuracy' compares each output with its target; with "
                             "the cross_entropy loss use 'accuracy'")
        self.threshold = _threshold(loss)
        return super().bind(backend, loss)

    def update(self, pred, target, weight=None):
        hit = (pred > self.threshold) == (target > 0.5)
        return self._mean_sums(self.xp.astype(hit, pred.dtype), weight)

    def result(self, sums):
        return self._mean(sums)


class _Regression(Metric):
    def bind(self, backend, loss):
        if loss.name == "cross_entropy":
            raise ValueError(f"metric {self.name!r} compares outputs with targets element-wise; it "
                             "does not apply to the cross_entropy loss (class ids); use 'accuracy'")
        return super().bind(backend, loss)


class MAE(_Regression):
    """Mean absolute error over all elements: ``mean |pred - target|``."""

    name = "mae"

    def update(self, pred, target, weight=None):
        return self._mean_sums(self.xp.abs(pred - target), weight)

    def result(self, sums):
        return self._mean(sums)


class RMSE(_Regression):
    """Root mean squared error over all elements: sqrt(mean (pred - target)^2)."""

    name = "rmse"

    def update(self, pred, target, weight=None):
        d = pred - target
        return self._mean_sums(d * d, weight)

    def result(self, sums):
        return math.sqrt(self._mean(sums))


class R2(_Regression):
    """Coefficient of determination per output column, averaged (scikit-learn's ``r2_score``).

    Per batch and column: sum (pred - t)^2, sum (t - c), sum (t - c)^2, where c is the column
    mean of the epoch's first batch (a shift that keeps SS_tot = S2 - S1^2 / n accurate); with
    weights every sum is weighted and n is the sum of the weights.
    """

    name = "r2"

    def begin(self):
        super().begin()
        self._shift = None

    def update(self, pred, target, weight=None):
        xp = self.xp
        t = xp.reshape(target, (target.shape[0], -1))
        d = xp.reshape(pred, (pred.shape[0], -1)) - t
        if self._shift is None:
            self._shift = xp.mean(t, axis=0)
        s = t - self._shift
        if weight is None:
            self.count += t.shape[0]
            return xp.concat([xp.sum(d * d, axis=0), xp.sum(s, axis=0), xp.sum(s * s, axis=0)])
        self.weighted = True
        w = _row_weights(xp, weight, t)
        return xp.concat([xp.sum(w * d * d, axis=0), xp.sum(w * s, axis=0),
                          xp.sum(w * s * s, axis=0), xp.reshape(xp.sum(w), (1,))])

    def result(self, sums):
        sums = np.asarray(sums, dtype=np.float64)
        count = float(self.count)
        if self.weighted:
            sums, count = sums[:-1], float(sums[-1])
        ss_res, s1, s2 = np.split(sums, 3)
        ss_tot = np.maximum(s2 - s1 * s1 / count, 0.0)
        scores = [1.0 if res == 0 else 0.0 if tot == 0 else 1.0 - res / tot
                  for res, tot in zip(ss_res, ss_tot, strict=True)]
        return float(np.mean(scores))


class _ClassCounts(Metric):
    """Per-class weighted counts ``[true positives (K), predicted (K), true (K)]`` of a
    classification output, turned into a score by :meth:`_score` (Precision, Recall, F1)."""

    averages = ("auto", "binary", "macro", "micro", "weighted", None)
    base_name = "counts"

    def __init__(self, average="auto"):
        super().__init__()
        if average not in self.averages:
            raise ValueError(f"average must be one of {self.averages}, got {average!r}")
        self.average = average
        suffix = {"auto": "", "binary": "", None: "_per_class"}.get(average, f"_{average}")
        self.name = f"{self.base_name}{suffix}"

    def bind(self, backend, loss):
        if not loss.is_classification:
            raise ValueError(f"metric {self.name!r} needs a classification loss (cross_entropy "
                             f"or bce), got {loss.name!r}")
        self.loss = loss
        return super().bind(backend, loss)

    def _indicators(self, pred, target):
        """``(guess, truth, multilabel)``: (N, K) 0/1 matrices of predicted and true classes."""
        xp = self.xp
        if self.loss.name == "cross_entropy":
            n_classes = pred.shape[1]
            classes = xp.arange(n_classes, device=device(pred))
            truth_ids = target if target.ndim == 1 else xp.argmax(target, axis=1)
            guess = xp.argmax(pred, axis=1)[:, None] == classes
            truth = truth_ids[:, None] == classes
            return xp.astype(guess, pred.dtype), xp.astype(truth, pred.dtype), False
        p = xp.reshape(pred, (pred.shape[0], -1))
        t = xp.reshape(target, (target.shape[0], -1))
        guess = xp.astype(p > _threshold(self.loss), pred.dtype)
        truth = xp.astype(t > 0.5, pred.dtype)
        if p.shape[1] == 1:  # binary: classes 0 and 1
            return xp.concat([1.0 - guess, guess], axis=1), xp.concat([1.0 - truth, truth],
                                                                       axis=1), False
        return guess, truth, True

    def update(self, pred, target, weight=None):
        xp = self.xp
        guess, truth, self.multilabel = self._indicators(pred, target)
        if weight is not None:
            w = _row_weights(xp, weight, guess)
            guess_w, truth_w = w * guess, w * truth
        else:
            guess_w, truth_w = guess, truth
        return xp.concat([xp.sum(guess_w * truth, axis=0), xp.sum(guess_w, axis=0),
                          xp.sum(truth_w, axis=0)])

    def result(self, sums):
        tp, predicted, true = np.split(np.asarray(sums, dtype=np.float64), 3)
        average = self.average
        binary = not self.multilabel and tp.shape[0] == 2
        if average == "auto":
            average = "binary" if binary else "macro"
        if average == "binary":
            if not binary:
                raise ValueError(f"metric {self.name!r} with average='binary' needs a binary "
                                 "output (one BCE output or two classes); use 'macro' or 'micro'")
            return float(self._score(tp[1:], predicted[1:], true[1:])[0])
        if average == "micro":
            return float(self._score(tp.sum(keepdims=True), predicted.sum(keepdims=True),
                                     true.sum(keepdims=True))[0])
        scores = self._score(tp, predicted, true)
        if average is None:
            return [float(v) for v in scores]
        # Multiclass: labels seen in the targets or the predictions (scikit-learn's default);
        # multilabel: every label.
        present = np.ones_like(tp, dtype=bool) if self.multilabel else (predicted + true) > 0
        if average == "weighted":
            support = true[present]
            return float(np.sum(scores[present] * support) / support.sum()) if support.sum() \
                else 0.0
        return float(np.mean(scores[present])) if present.any() else 0.0

    def get_config(self):
        return {"average": self.average}

    def _score(self, tp, predicted, true):
        """Per-class scores from the counts (subclasses)."""
        raise NotImplementedError

    @staticmethod
    def _ratio(numerator, denominator):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1.0),
                        0.0)

    def __repr__(self):
        return f"{type(self).__name__}(average={self.average!r})"


class Precision(_ClassCounts):
    """Precision tp / (tp + fp) per class, averaged as ``average`` says: ``"auto"`` (binary
    output: the positive class, else ``"macro"``), ``"binary"``, ``"macro"``, ``"micro"``,
    ``"weighted"`` (by true counts) or None (a list, one value per class)."""

    base_name = "precision"

    def _score(self, tp, predicted, true):
        return self._ratio(tp, predicted)


class Recall(_ClassCounts):
    """Recall tp / (tp + fn) per class, averaged as in :class:`Precision`."""

    base_name = "recall"

    def _score(self, tp, predicted, true):
        return self._ratio(tp, true)


class F1(_ClassCounts):
    """F1 = 2 tp / (2 tp + fp + fn) per class, averaged as in :class:`Precision`."""

    base_name = "f1"

    def _score(self, tp, predicted, true):
        return self._ratio(2.0 * tp, predicted + true)


class ROCAUC(Metric):
    """Area under the ROC curve of a binary output, exact (scikit-learn's ``roc_auc_score``).

    The score s is the output itself (its order is the probability's order): z for BCE,
    p for BCE on probabilities, z_1 - z_0 for two-class cross-entropy. Each batch keeps its
    scores, labels and weights on the device; at the end, with the scores sorted,
    AUC = sum over positives of w_i (N(s < s_i) + N(s = s_i) / 2) / (P N), where N(.) sums the
    weights of negatives (found with ``searchsorted`` on the cumulative sums) and P, N are the
    total positive and negative weights. One device read; NaN when one class is missing.
    """

    name = "roc_auc"

    def bind(self, backend, loss):
        self.loss, self.backend = loss, backend
        return super().bind(backend, loss)

    def begin(self):
        super().begin()
        self._parts = []

    def _score(self, pred):
        if self.loss.name == "cross_entropy" and pred.ndim == 2 and pred.shape[1] == 2:
            return pred[:, 1] - pred[:, 0]
        if self.loss.name == "bce" and math.prod(pred.shape[1:]) == 1:
            return self.xp.reshape(pred, (-1,))
        raise ValueError(f"metric 'roc_auc' needs a binary output (one BCE output or two-class "
                         f"cross-entropy); got outputs of shape {tuple(pred.shape[1:])} with the "
                         f"{self.loss.name!r} loss")

    def update(self, pred, target, weight=None):
        xp = self.xp
        score = self._score(pred)
        if self.loss.name == "cross_entropy":
            positive = target == 1 if target.ndim == 1 else target[:, 1] > target[:, 0]
        else:
            positive = xp.reshape(target, (-1,)) > 0.5
        w = xp.ones_like(score) if weight is None else xp.astype(weight, pred.dtype)
        # a copy: the fast engine reuses its output buffer for the next batch
        self._parts.append((xp.asarray(score, copy=True), xp.astype(positive, pred.dtype), w))
        return xp.zeros((0,), dtype=pred.dtype, device=device(pred))

    def result(self, sums):
        xp = self.xp
        score, pos, w = (xp.concat([part[i] for part in self._parts]) for i in range(3))
        self._parts = []
        order = xp.argsort(score)
        ranked = xp.take(score, order)
        neg = w * (1.0 - pos)
        below = xp.concat([xp.zeros((1,), dtype=neg.dtype, device=device(neg)),
                           xp.cumulative_sum(xp.take(neg, order))])
        lower = xp.take(below, xp.searchsorted(ranked, score, side="left"))
        upper = xp.take(below, xp.searchsorted(ranked, score, side="right"))
        wins = xp.sum(w * pos * (lower + 0.5 * (upper - lower)))
        host = self.backend.to_numpy(xp.stack([wins, xp.sum(w * pos), xp.sum(neg)]))
        wins, total_pos, total_neg = (float(v) for v in host)
        if total_pos <= 0 or total_neg <= 0:
            return float("nan")  # one class only: AUC is undefined
        return wins / (total_pos * total_neg)


class TopKAccuracy(Metric):
    """Fraction of samples whose true class is among the k highest outputs: fewer than k
    classes score strictly higher than it (cross-entropy only)."""

    def __init__(self, k=5):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        self.k = k
        self.name = f"top_{k}_accuracy"

    def bind(self, backend, loss):
        if loss.name != "cross_entropy":
            raise ValueError(f"metric {self.name!r} ranks class scores; it needs the "
                             f"cross_entropy loss, got {loss.name!r}")
        return super().bind(backend, loss)

    def update(self, pred, target, weight=None):
        xp = self.xp
        truth = target if target.ndim == 1 else xp.argmax(target, axis=1)
        true_score = xp.take_along_axis(pred, xp.reshape(truth, (-1, 1)), axis=1)
        higher = xp.sum(xp.astype(pred > true_score, pred.dtype), axis=1)
        hit = xp.astype(higher < float(self.k), pred.dtype)
        return self._mean_sums(hit, weight)

    def result(self, sums):
        return self._mean(sums)

    def get_config(self):
        return {"k": self.k}

    def __repr__(self):
        return f"TopKAccuracy(k={self.k})"


def _threshold(loss):
    """The decision threshold of a BCE output: 0 for logits, 0.5 for probabilities."""
    return 0.0 if getattr(loss, "from_logits", False) else 0.5


def _row_weights(xp, weight, like):
    """Per-row weights (N,) shaped (N, 1, ...) to broadcast over ``like``, in its dtype."""
    w = weight if weight.dtype == like.dtype else xp.astype(weight, like.dtype)
    return xp.reshape(w, (like.shape[0],) + (1,) * (like.ndim - 1))


class FunctionMetric(Metric):
    """A function ``fn(y_true, y_pred) -> batch mean`` averaged over the epoch, weighted by
    batch size (sample weights are not passed to it)."""

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

    def update(self, pred, target, weight=None):
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


METRICS: dict[str, Callable[[], Metric]] = {"accuracy": Accuracy, "acc": Accuracy, "binary_accuracy": BinaryAccuracy,
           "mae": MAE, "mean_absolute_error": MAE, "rmse": RMSE, "r2": R2,
           "roc_auc": ROCAUC, "top_k_accuracy": TopKAccuracy}
for _cls in (Precision, Recall, F1):
    METRICS[_cls.base_name] = _cls
    for _average in ("macro", "micro", "weighted"):
        METRICS[f"{_cls.base_name}_{_average}"] = functools.partial(_cls, average=_average)
    METRICS[f"{_cls.base_name}_per_class"] = functools.partial(_cls, average=None)


def metric_logs(metric, sums):
    """``{name: value}`` for one metric's summed vector; a per-class metric gives one entry
    per class, ``{name}_{i}``."""
    value = metric.result(sums)
    if isinstance(value, list):
        return {f"{metric.name}_{i}": v for i, v in enumerate(value)}
    return {metric.name: value}


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
