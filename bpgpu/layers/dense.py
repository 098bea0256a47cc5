"""Fully connected layer."""

import math

import numpy as np

from .._validation import check_bool, check_positive_int, is_real_number
from ..initializers import get_initializer
from ..precision import wide_dtype
from .base import Layer

__all__ = ["Dense"]


class Dense(Layer):
    """``y = x @ W + b``.

    Shapes: x (N, in_features) -> y (N, out_features); W (in_features, out_features), b (out_features,).

    Backward: dW = x^T dy, db = sum_n dy, dx = dy W^T.

    Args:
        in_features, out_features: sizes of the input and output.
        init: initialiser of W by name (``"he_normal"``, ``"glorot_uniform"``, ... see
            :mod:`bpgpu.initializers`); b starts at zero.
        bias: whether to learn b.
        l2: L2 penalty ``l2 * sum(W**2)`` added to the loss (b is not penalised). Read at
            every step by every engine, so it may be changed between steps (while it stays > 0;
            scikit-learn's per-batch penalty in :mod:`bpgpu.sklearn` does so).
    """

    def __init__(self, in_features, out_features, init="he_normal", bias=True, l2=0.0):
        super().__init__()
        self.in_features = check_positive_int(in_features, "Dense in_features")
        self.out_features = check_positive_int(out_features, "Dense out_features")
        get_initializer(init)
        self.init = init
        self.bias = check_bool(bias, "Dense bias")
        if not is_real_number(l2) or not l2 >= 0.0:
            raise ValueError(f"Dense l2 must be a number >= 0, got {l2!r}")
        self.l2 = float(l2)

    def init_params(self, rng):
        shape = (self.in_features, self.out_features)
        self.add_param("W", get_initializer(self.init)(rng, shape, *shape))
        if self.bias:
            self.add_param("b", np.zeros(self.out_features))

    def forward(self, x, training=False):
        if x.ndim != 2:
            self.output_shape(tuple(x.shape[1:]))  # says what to do (add Flatten) and raises
        self._x = x
        y = self.backend.matmul(x, self.params["W"])
        return y + self.params["b"] if self.bias else y

    def backward(self, dy):
        W = self.params["W"]
        matmul = self.backend.matmul
        dW = matmul(self._x.T, dy)
        if self.l2:
            dW = dW + (2.0 * self.l2 * self.loss_scale) * W
        self.grads["W"] = dW
        if self.bias:
            self.grads["b"] = self.xp.sum(dy, axis=0, dtype=wide_dtype(self.xp, dy.dtype))
        return matmul(dy, W.T) if self.input_grad else None

    def penalty(self):
        if not self.l2:
            return None
        W = self.params["W"]
        return self.l2 * self.xp.sum(W * W)

    def input_shape(self):
        return (self.in_features,)

    def output_shape(self, input_shape):
        if len(input_shape) > 1:
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) receives samples of shape "
                f"{tuple(input_shape)} but takes flat vectors of {self.in_features} features: add "
                f"Flatten() before it (it would turn them into {math.prod(input_shape)} features)")
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) expects inputs with "
                f"{self.in_features} features, got per-sample shape {tuple(input_shape)}")
        return (self.out_features,)

    def get_config(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "init": self.init, "bias": self.bias, "l2": self.l2}
