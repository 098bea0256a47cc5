"""2-D pooling on NCHW images: each channel's windows (from one im2col gather) reduced to one value."""

from .base import Layer
from .im2col import Windows, output_size, pair

__all__ = ["MaxPool2D", "AvgPool2D"]


class _Pool2D(Layer):
    """Shared geometry: windows of ``kernel_size`` moved by ``stride`` (default: the kernel size),
    no padding. Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), ``Ho = floor((H - kh) / sh) + 1``."""

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name} kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name} stride", 1)

    def init_params(self, rng):
        self._windows = {}  # (H, W) -> Windows on this backend, built on first use

    def _cols(self, x):
        """(windows, cols of shape (N*C, kh*kw, Ho*Wo)) of each channel of x."""
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects input of shape (N, C, H, W), got "
                             f"{tuple(x.shape)}")
        key = tuple(x.shape[2:])
        if key not in self._windows:
            self._windows[key] = Windows(self.backend, 1, *key, self.kernel_size, self.stride,
                                         (0, 0), repr(self), windows_last=True)
        win = self._windows[key]
        n, c, h, w = x.shape
        return win, win.im2col(self.xp.reshape(x, (n * c, 1, h, w)))

    def _to_image(self, dcols):
        """dL/dx (N, C, H, W) from dL/dcols (N*C, kh*kw, Ho*Wo) of the last forward pass."""
        return self.xp.reshape(self._win.col2im(dcols), self._shape)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects samples of shape (C, H, W), got "
                             f"{tuple(input_shape)}")
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (input_shape[0], output_size(input_shape[1], kh, sh, 0, repr(self)),
                output_size(input_shape[2], kw, sw, 0, repr(self)))

    def get_config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}


class MaxPool2D(_Pool2D):
    """y = the maximum of each window, as PyTorch's ``nn.MaxPool2d`` (no padding, no dilation).

    Backward: each window's dy goes to the position of its maximum; overlapping windows
    (stride < kernel) add up. Ties go to the first maximal entry in row-major window order,
    as in PyTorch.
    """

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
    """y = the mean of each window, as PyTorch's ``nn.AvgPool2d`` (no padding).

    Backward: each window's dy / (kh kw) goes to every entry of the window; overlaps add up.
    """

    def forward(self, x, training=False):
        win, cols = self._cols(x)
        self._win, self._shape = win, tuple(x.shape)
        y = self.xp.mean(cols, axis=1)
        return self.xp.reshape(y, (x.shape[0], x.shape[1]) + win.out_hw)

    def backward(self, dy):
        if not self.input_grad:
            return None
        xp, win = self.xp, self._win
        rows = self._shape[0] * self._shape[1]
        share = xp.reshape(dy, (rows, 1, win.n_windows)) * (1.0 / win.window_size)
        return self._to_image(xp.broadcast_to(share, (rows, win.window_size, win.n_windows)))
