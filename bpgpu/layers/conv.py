"""2-D convolution on NCHW images, as one gather (im2col) and one matrix product."""

import numpy as np

from ..initializers import get_initializer
from ..precision import wide_dtype
from ..validation import check_positive_int
from .base import Layer
from .im2col import Windows, output_size, pair

__all__ = ["Conv2D"]


class Conv2D(Layer):
    """2-D cross-correlation, as PyTorch's ``nn.Conv2d`` (no dilation, no groups).

    Shapes: x (N, C, H, W) -> y (N, O, Ho, Wo) with ``Ho = floor((H + 2 ph - kh) / sh) + 1``
    (likewise Wo); W (O, C, kh, kw), b (O,); C = ``in_channels``, O = ``out_channels``.

        y[n, o, r, s] = b[o] + sum_{c,i,j} W[o, c, i, j] xpad[n, c, sh r + i, sw s + j]

    With cols = im2col(x) (one row of C*kh*kw entries per window) and Wm = W reshaped to
    (O, C*kh*kw): y = cols @ Wm^T + b. Backward: dWm = dy^T cols, db = sum of dy over n, r, s,
    dx = col2im(dy @ Wm) (see :mod:`bpgpu.layers.im2col`).

    Args:
        kernel_size, stride, padding: an int or an (h, w) pair; padding adds zeros on each side.
        init: initialiser of W (fan_in = C*kh*kw, fan_out = O*kh*kw); b starts at zero.
        bias: whether to learn b.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 init="he_normal", bias=True):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "Conv2D in_channels")
        self.out_channels = check_positive_int(out_channels, "Conv2D out_channels")
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size", 1)
        self.stride = pair(stride, "Conv2D stride", 1)
        self.padding = pair(padding, "Conv2D padding", 0)
        get_initializer(init)
        self.init = init
        self.bias = bool(bias)

    def init_params(self, rng):
        kh, kw = self.kernel_size
        shape = (self.out_channels, self.in_channels, kh, kw)
        fan_in, fan_out = self.in_channels * kh * kw, self.out_channels * kh * kw
        self.add_param("W", get_initializer(self.init)(rng, shape, fan_in, fan_out))
        if self.bias:
            self.add_param("b", np.zeros(self.out_channels))
        self._windows = {}  # (H, W) -> Windows on this backend, built on first use

    def _windows_for(self, shape):
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"Conv2D({self.in_channels}, {self.out_channels}) expects input of "
                             f"shape (N, {self.in_channels}, H, W), got {tuple(shape)}")
        key = tuple(shape[2:])
        if key not in self._windows:
            self._windows[key] = Windows(self.backend, self.in_channels, *key, self.kernel_size,
                                         self.stride, self.padding, repr(self))
        return self._windows[key]

    def forward(self, x, training=False):
        xp = self.xp
        win = self._windows_for(tuple(x.shape))
        n, (ho, wo) = x.shape[0], win.out_hw
        cols = xp.reshape(win.im2col(x), (n * win.n_windows, win.window_size))
        y = self.backend.matmul(cols, xp.reshape(self.params["W"],
                                                 (self.out_channels, win.window_size)).T)
        if self.bias:
            y = y + self.params["b"]
        self._cols, self._win = cols, win
        return xp.permute_dims(xp.reshape(y, (n, ho, wo, self.out_channels)), (0, 3, 1, 2))

    def backward(self, dy):
        xp, win, W = self.xp, self._win, self.params["W"]
        n = dy.shape[0]
        dy2 = xp.reshape(xp.permute_dims(dy, (0, 2, 3, 1)), (n * win.n_windows, self.out_channels))
        self.grads["W"] = xp.reshape(self.backend.matmul(dy2.T, self._cols), tuple(W.shape))
        if self.bias:
            self.grads["b"] = xp.sum(dy2, axis=0, dtype=wide_dtype(xp, dy2.dtype))
        if not self.input_grad:
            return None
        dcols = self.backend.matmul(dy2, xp.reshape(W, (self.out_channels, win.window_size)))
        return win.col2im(xp.reshape(dcols, (n, win.n_windows, win.window_size)))

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D({self.in_channels}, {self.out_channels}) expects samples of "
                             f"shape ({self.in_channels}, H, W), got {tuple(input_shape)}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels, output_size(input_shape[1], kh, sh, ph, repr(self)),
                output_size(input_shape[2], kw, sw, pw, repr(self)))

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "init": self.init, "bias": self.bias}
