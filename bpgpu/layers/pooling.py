"""2-D pooling on NCHW images: each channel's windows (from one im2col gather) reduced to one value."""

import math

from ._im2col import Windows, output_size, pair
from .base import Layer

__all__ = ["MaxPool2D", "AvgPool2D"]


class _Pool2D(Layer):
    """Shared geometry: windows of ``kernel_size`` moved by ``stride`` (default: the kernel size)
    over the input padded by ``padding`` on each side (at most half the kernel, as in PyTorch).
    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = floor((H + 2 ph - kh) / sh) + 1``."""

    #: Value the padding holds for the reduction (zero for averages, -inf for maxima).
    fill = 0.0
    _win: Windows      # the windows and the input shape of the last forward pass
    _shape: tuple[int, ...]

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride", 1)
        self.padding = pair(padding, f"{name} padding", 0)
        if any(p > k // 2 for p, k in zip(self.padding, self.kernel_size, strict=True)):
            raise ValueError(f"{name} padding {self.padding} must be at most half the kernel size "
                             f"{self.kernel_size} (rounded down), so that every window holds a "
                             "pixel of the image")

    def init_params(self, rng):
        self._windows = {}  # (H, W) -> Windows on this backend, built on first use

    def _cols(self, x):
        """(windows, cols of shape (N*C, kh*kw, Ho*Wo)) of each channel of x."""
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects input of shape (N, C, H, W), got "
                             f"{tuple(x.shape)}")
        key = height, width = tuple(x.shape[2:])
        if key not in self._windows:
            self._windows[key] = Windows(self.backend, 1, height, width, self.kernel_size, self.stride,
                                         self.padding, repr(self), windows_last=True)
        win = self._windows[key]
        n, c, h, w = x.shape
        return win, win.im2col(self.xp.reshape(x, (n * c, 1, h, w)), fill=self.fill)

    def _to_image(self, dcols):
        """dL/dx (N, C, H, W) from dL/dcols (N*C, kh*kw, Ho*Wo) of the last forward pass."""
        return self.xp.reshape(self._win.col2im(dcols), self._shape)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects samples of shape (C, H, W), got "
                             f"{tuple(input_shape)}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (input_shape[0], output_size(input_shape[1], kh, sh, ph, repr(self)),
                output_size(input_shape[2], kw, sw, pw, repr(self)))

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}


class MaxPool2D(_Pool2D):
    """y = the maximum of each window, as PyTorch's ``nn.MaxPool2d`` (no dilation): the padding
    holds -inf, so it is never the maximum.

    Backward: each window's dy goes to the position of its maximum; overlapping windows
    (stride < kernel) add up. Ties go to the first maximal entry in row-major window order,
    as in PyTorch.
    """

    fill = -math.inf

    def forward(self, x, training=False):
        xp = self.xp
        win, cols = self._cols(x)
        self._win, self._shape = win, tuple(x.shape)
        self._argmax = xp.argmax(cols, axis=1)
        y = xp.max(cols, axis=1)
        return xp.reshape(y, (x.shape[0], x.shape[1]) + win.out_hw)

    def backward(self, dy):
        if not self.input_grad:
            return None
        xp = self.xp
        positions = xp.arange(self._win.window_size, dtype=self._argmax.dtype,
                              device=self.backend.device)
        hit = xp.astype(self._argmax[:, None, :] == positions[:, None], dy.dtype)
        rows, n_windows = self._argmax.shape
        return self._to_image(hit * xp.reshape(dy, (rows, 1, n_windows)))


class AvgPool2D(_Pool2D):
    """y = the mean of each window, as PyTorch's ``nn.AvgPool2d``: the padding holds zeros, and
    the divisor is kh*kw with ``count_include_pad=True`` (PyTorch's default), else the number of
    the window's entries inside the image. ``count_include_pad`` is keyword-only: PyTorch's fourth
    positional argument is ``ceil_mode``, which bpgpu does not have.

    Backward: each window's dy / divisor goes to every entry of the window; overlaps add up.
    """

    def __init__(self, kernel_size, stride=None, padding=0, *, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        if not isinstance(count_include_pad, bool):
            raise ValueError(f"AvgPool2D count_include_pad must be True or False, got "
                             f"{count_include_pad!r}")
        self.count_include_pad = count_include_pad

    def init_params(self, rng):
        super().init_params(rng)
        self._divisors = {}  # (H, W) -> divisor per window, (Ho*Wo,), on this backend

    def _divisor(self, win):
        """A Python float, or one per window (count_include_pad=False with padding)."""
        if self.count_include_pad or not win.padded:
            return float(win.window_size)
        key = win.in_shape
        if key not in self._divisors:
            self._divisors[key] = self.backend.asarray(win.inside_counts, dtype=self.dtype)
        return self._divisors[key]

    def forward(self, x, training=False):
        win, cols = self._cols(x)
        self._win, self._shape = win, tuple(x.shape)
        y = self.xp.sum(cols, axis=1) / self._divisor(win)
        return self.xp.reshape(y, (x.shape[0], x.shape[1]) + win.out_hw)

    def backward(self, dy):
        if not self.input_grad:
            return None
        xp, win = self.xp, self._win
        rows = self._shape[0] * self._shape[1]
        share = xp.reshape(dy, (rows, 1, win.n_windows)) / self._divisor(win)
        return self._to_image(xp.broadcast_to(share, (rows, win.window_size, win.n_windows)))

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}
