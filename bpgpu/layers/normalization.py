"""Normalisation layers: BatchNorm (statistics over the batch) and LayerNorm (over each sample).

Both normalise ``xhat = (x - mean) / sqrt(var + eps)`` with the biased variance and return
``y = weight * xhat + bias``. With ``g = dy * weight`` and averages ``<.>`` taken over the axes
the statistics were computed on, the input gradient of both is

    dx = (g - <g> - xhat <g xhat>) / sqrt(var + eps),

and ``dweight = sum(dy * xhat)``, ``dbias = sum(dy)`` over every axis but the parameters' own.

Both compute in the dtype of their parameters and return results in the dtype of their inputs:
under mixed precision (``keep_float32``) the parameters stay float32, so 16-bit inputs are
normalised with float32 statistics.
"""

import math
from typing import Any

import numpy as np

from .._validation import check_number, check_positive_int
from .base import Layer

__all__ = ["BatchNorm", "LayerNorm"]


def _as(xp, x, dtype):
    """``x`` in ``dtype`` (no copy when it already is)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


def _normalize(xp, x, axes, eps, average=None):
    """``(xhat, 1/sqrt(var + eps), mean, var)`` with statistics over ``axes`` (kept as size 1).
    ``average(v, axes)``: how an average is taken (default: over this array)."""
    average = average or (lambda v, axes: xp.mean(v, axis=axes, keepdims=True))
    mean = average(x, axes)
    centred = x - mean
    var = average(centred * centred, axes)
    inv_std = 1.0 / xp.sqrt(var + eps)
    return centred * inv_std, inv_std, mean, var


def _normalize_backward(xp, g, xhat, inv_std, axes, averages=None):
    """dL/dx of ``xhat`` (statistics over ``axes``) given ``g = dL/dxhat``. ``averages(a, b,
    axes) -> (<a>, <b>)``: how the two averages are taken (default: over these arrays)."""
    if averages is None:
        mean_g = xp.mean(g, axis=axes, keepdims=True)
        mean_gx = xp.mean(g * xhat, axis=axes, keepdims=True)
    else:
        mean_g, mean_gx = averages(g, g * xhat, axes)
    return inv_std * (g - mean_g - xhat * mean_gx)


class BatchNorm(Layer):
    """Batch normalisation over the channel axis 1, as PyTorch's ``BatchNorm1d`` / ``BatchNorm2d``.

    Shapes: x (N, C) after a Dense layer, or (N, C, H, W) after a Conv2D; y has the shape of x.
    Parameters ``weight`` (gamma, starts at 1) and ``bias`` (beta, starts at 0), both (C,);
    buffers ``running_mean`` (starts at 0) and ``running_var`` (starts at 1), both (C,), saved
    with the model.

    Training: per-channel ``mean`` and biased ``var`` over the batch (and H, W) normalise x, and
    the running statistics move by ``momentum`` (PyTorch's convention):

        running_mean <- (1 - momentum) running_mean + momentum mean
        running_var  <- (1 - momentum) running_var  + momentum var * n / (n - 1)

    (n values per channel: the running variance is the unbiased estimate). Inference: the running
    statistics normalise x, and dx = dy * weight / sqrt(running_var + eps).

    ``statistics``: None (the batch's own statistics), or an object that takes them over a larger
    batch split across processes (``count(x)``, ``mean(v, axes)``, ``grad_means(a, b, axes)``);
    a data-parallel ``fit`` installs :class:`bpgpu.distributed.SyncedStatistics` while it runs.
    """

    nonnegative_buffers = ("running_var",)
    statistics: Any = None

    def __init__(self, num_features, momentum=0.1, eps=1e-5):
        super().__init__()
        self.num_features = check_positive_int(num_features, "BatchNorm num_features")
        self.momentum = check_number(momentum, "BatchNorm momentum", 0.0, 1.0)
        self.eps = check_number(eps, "BatchNorm eps", 0, low_open=True)

    def init_params(self, rng):
        c = self.num_features
        self.add_param("weight", np.ones(c))
        self.add_param("bias", np.zeros(c))
        self.add_buffer("running_mean", np.zeros(c))
        self.add_buffer("running_var", np.ones(c))

    def _layout(self, shape):
        """(axes of the statistics, broadcast shape of per-channel vectors) for input ``shape``."""
        if len(shape) not in (2, 4) or shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) expects input of shape (N, "
                             f"{self.num_features}) or (N, {self.num_features}, H, W), got "
                             f"{tuple(shape)}")
        if len(shape) == 2:
            return (0,), (1, self.num_features)
        return (0, 2, 3), (1, self.num_features, 1, 1)

    keep_float32 = True

    def forward(self, x, training=False):
        xp = self.xp
        axes, bshape = self._layout(tuple(x.shape))
        x_dtype, x = x.dtype, _as(xp, x, self.params["weight"].dtype)
        if training:
            stats = self.statistics
            n = math.prod(x.shape) // self.num_features if stats is None else stats.count(x)
            if n < 2:
                raise ValueError("BatchNorm in training needs more than one value per channel "
                                 f"(got input of shape {tuple(x.shape)}); use a larger batch")
            xhat, inv_std, mean, var = _normalize(xp, x, axes, self.eps,
                                                  None if stats is None else stats.mean)
            m, c = self.momentum, (self.num_features,)
            self.buffers["running_mean"] = ((1.0 - m) * self.buffers["running_mean"]
                                            + m * xp.reshape(mean, c))
            self.buffers["running_var"] = ((1.0 - m) * self.buffers["running_var"]
                                           + (m * n / (n - 1)) * xp.reshape(var, c))
        else:
            mean = xp.reshape(self.buffers["running_mean"], bshape)
            inv_std = 1.0 / xp.sqrt(xp.reshape(self.buffers["running_var"], bshape) + self.eps)
            xhat = (x - mean) * inv_std
        self._xhat, self._inv_std, self._batch_stats = xhat, inv_std, training
        y = xp.reshape(self.params["weight"], bshape) * xhat + xp.reshape(self.params["bias"], bshape)
        return _as(xp, y, x_dtype)

    def backward(self, dy):
        xp, xhat = self.xp, self._xhat
        axes, bshape = self._layout(tuple(dy.shape))
        dy_dtype, dy = dy.dtype, _as(xp, dy, xhat.dtype)
        self.grads["weight"] = xp.sum(dy * xhat, axis=axes)
        self.grads["bias"] = xp.sum(dy, axis=axes)
        if not self.input_grad:
            return None
        g = dy * xp.reshape(self.params["weight"], bshape)
        if self._batch_stats:
            stats = self.statistics
            dx = _normalize_backward(xp, g, xhat, self._inv_std, axes,
                                     None if stats is None else stats.grad_means)
            return _as(xp, dx, dy_dtype)
        return _as(xp, g * self._inv_std, dy_dtype)

    def output_shape(self, input_shape):
        self._layout((1,) + tuple(input_shape))
        return tuple(input_shape)

    def get_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps}


class LayerNorm(Layer):
    """Layer normalisation over the trailing ``normalized_shape`` axes of each sample, as PyTorch's
    ``nn.LayerNorm``.

    Shapes: x ``(..., *normalized_shape)`` -> y of the same shape; parameters ``weight`` (starts at 1)
    and ``bias`` (starts at 0), both of shape ``normalized_shape``. Statistics (mean, biased
    variance) are taken per sample over the normalised axes, in training and inference alike.
    """

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        if not isinstance(normalized_shape, (tuple, list)) or not normalized_shape:
            raise ValueError("LayerNorm normalized_shape must be a positive int or a non-empty "
                             f"tuple of them, got {normalized_shape!r}")
        self.normalized_shape = tuple(check_positive_int(s, "every LayerNorm normalized_shape entry")
                                      for s in normalized_shape)
        self.eps = check_number(eps, "LayerNorm eps", 0, low_open=True)

    def init_params(self, rng):
        self.add_param("weight", np.ones(self.normalized_shape))
        self.add_param("bias", np.zeros(self.normalized_shape))

    def _axes(self, shape):
        k = len(self.normalized_shape)
        if len(shape) < k or tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"LayerNorm{self.normalized_shape} expects inputs ending in shape "
                             f"{self.normalized_shape}, got {tuple(shape)}")
        return tuple(range(len(shape) - k, len(shape)))

    keep_float32 = True

    def forward(self, x, training=False):
        axes = self._axes(tuple(x.shape))
        x_dtype, x = x.dtype, _as(self.xp, x, self.params["weight"].dtype)
        self._xhat, self._inv_std, _, _ = _normalize(self.xp, x, axes, self.eps)
        return _as(self.xp, self.params["weight"] * self._xhat + self.params["bias"], x_dtype)

    def backward(self, dy):
        xp, xhat = self.xp, self._xhat
        axes = self._axes(tuple(dy.shape))
        dy_dtype, dy = dy.dtype, _as(xp, dy, xhat.dtype)
        leading = tuple(range(dy.ndim - len(axes)))
        self.grads["weight"] = xp.sum(dy * xhat, axis=leading)
        self.grads["bias"] = xp.sum(dy, axis=leading)
        if not self.input_grad:
            return None
        dx = _normalize_backward(xp, dy * self.params["weight"], xhat, self._inv_std, axes)
        return _as(xp, dx, dy_dtype)

    def output_shape(self, input_shape):
        self._axes(tuple(input_shape))
        return tuple(input_shape)

    def get_config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}
