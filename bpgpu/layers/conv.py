"""2-D convolution on NCHW images, as one gather (im2col) and one matrix product."""

import numpy as np

from .._validation import check_bool, check_positive_int
from ..initializers import get_initializer
from ..precision import wide_dtype
from ._im2col import Windows, output_size, pair
from .base import Layer

__all__ = ["Conv2D"]


class Conv2D(Layer):
    """2-D cross-correlation, as PyTorch's ``nn.Conv2d`` (zero padding).

    Shapes: x (N, C, H, W) -> y (N, O, Ho, Wo) with
    ``Ho = floor((H + 2 ph - dh (kh - 1) - 1) / sh) + 1`` (likewise Wo); W (O, C/g, kh, kw),
    b (O,); C = ``in_channels``, O = ``out_channels``, g = ``groups``. Input channels split into
    g groups of C/g, output channels into g groups of O/g; output group k sees input group k only:

        y[n, o, r, s] = b[o] + sum_{c,i,j} W[o, c, i, j] xpad[n, k C/g + c, sh r + dh i, sw s + dw j]

    with k = o // (O/g). With cols = im2col(x) (one row of C*kh*kw entries per window, group
    after group) split into the groups' blocks cols_k (n windows, C/g*kh*kw) and W_k the
    group's weights as (O/g, C/g*kh*kw): y_k = cols_k @ W_k^T + b_k, one batched matrix product.
    Backward: dW_k = dy_k^T cols_k, db = sum of dy over n, r, s, dx = col2im(dy_k @ W_k)
    (see :mod:`bpgpu.layers._im2col`). ``groups=in_channels`` is a depthwise convolution.

    Args:
        kernel_size, stride, padding, dilation: an int or an (h, w) pair; padding adds zeros on
            each side; dilation spaces the kernel's entries (1: adjacent).
        groups: a divisor of both ``in_channels`` and ``out_channels``.
        init: initialiser of W (fan_in = C/g*kh*kw, fan_out = O/g*kh*kw); b starts at zero.
        bias: whether to learn b.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 init="he_normal", bias=True, dilation=1, groups=1):
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "Conv2D in_channels")
        self.out_channels = check_positive_int(out_channels, "Conv2D out_channels")
        self.kernel_size = pair(kernel_size, "Conv2D kernel_size", 1)
        self.stride = pair(stride, "Conv2D stride", 1)
        self.padding = pair(padding, "Conv2D padding", 0)
        self.dilation = pair(dilation, "Conv2D dilation", 1)
        self.groups = check_positive_int(groups, "Conv2D groups")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2D groups={self.groups} must divide both in_channels "
                             f"({self.in_channels}) and out_channels ({self.out_channels})")
        if isinstance(init, int):
            raise ValueError(f"Conv2D init must be an initializer name, got {init!r}: pass dilation "
                             "and groups by keyword (torch.nn.Conv2d takes them positionally "
                             "after padding; bpgpu's sixth argument is init)")
        get_initializer(init)
        self.init = init
        self.bias = check_bool(bias, "Conv2D bias")

    def init_params(self, rng):
        kh, kw = self.kernel_size
        c, o = self.in_channels // self.groups, self.out_channels // self.groups
        shape = (self.out_channels, c, kh, kw)
        self.add_param("W", get_initializer(self.init)(rng, shape, c * kh * kw, o * kh * kw))
        if self.bias:
            self.add_param("b", np.zeros(self.out_channels))
        self._windows = {}  # (H, W) -> Windows on this backend, built on first use

    def _windows_for(self, shape):
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"Conv2D({self.in_channels}, {self.out_channels}) expects input of "
                             f"shape (N, {self.in_channels}, H, W), got {tuple(shape)}")
        key = height, width = tuple(shape[2:])
        if key not in self._windows:
            self._windows[key] = Windows(self.backend, self.in_channels, height, width, self.kernel_size,
                                         self.stride, self.padding, repr(self),
                                         dilation=self.dilation)
        return self._windows[key]

    def _grouped_weights(self):
        """W as (g, O/g, C/g*kh*kw)."""
        g = self.groups
        return self.xp.reshape(self.params["W"], (g, self.out_channels // g, -1))

    def forward(self, x, training=False):
        xp, g = self.xp, self.groups
        win = self._windows_for(tuple(x.shape))
        n, (ho, wo) = x.shape[0], win.out_hw
        rows = n * win.n_windows
        cols = xp.reshape(win.im2col(x), (rows, g, win.window_size // g))
        cols = xp.permute_dims(cols, (1, 0, 2))                       # (g, rows, C/g*kh*kw)
        y = self.backend.matmul(cols, xp.matrix_transpose(self._grouped_weights()))  # (g, rows, O/g)
        y = xp.reshape(xp.permute_dims(y, (1, 0, 2)), (rows, self.out_channels))
        if self.bias:
            y = y + self.params["b"]
        self._cols, self._win = cols, win
        return xp.permute_dims(xp.reshape(y, (n, ho, wo, self.out_channels)), (0, 3, 1, 2))

    def backward(self, dy):
        xp, win, g, W = self.xp, self._win, self.groups, self.params["W"]
        n = dy.shape[0]
        rows = n * win.n_windows
        dy2 = xp.reshape(xp.permute_dims(dy, (0, 2, 3, 1)), (rows, self.out_channels))
        dyg = xp.permute_dims(xp.reshape(dy2, (rows, g, self.out_channels // g)), (1, 0, 2))
        self.grads["W"] = xp.reshape(self.backend.matmul(xp.matrix_transpose(dyg), self._cols),
                                     tuple(W.shape))
        if self.bias:
            self.grads["b"] = xp.sum(dy2, axis=0, dtype=wide_dtype(xp, dy2.dtype))
        if not self.input_grad:
            return None
        dcols = xp.permute_dims(self.backend.matmul(dyg, self._grouped_weights()), (1, 0, 2))
        return win.col2im(xp.reshape(dcols, (n, win.n_windows, win.window_size)))

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D({self.in_channels}, {self.out_channels}) expects samples of "
                             f"shape ({self.in_channels}, H, W), got {tuple(input_shape)}")
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (self.kernel_size, self.stride, self.padding,
                                                  self.dilation)
        return (self.out_channels, output_size(input_shape[1], kh, sh, ph, repr(self), dh),
                output_size(input_shape[2], kw, sw, pw, repr(self), dw))

    def get_config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding), "dilation": list(self.dilation),
                "groups": self.groups, "init": self.init, "bias": self.bias}
