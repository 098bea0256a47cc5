"""Sliding windows over NCHW images as one gather (im2col) and its adjoint (col2im).

The Array API standard has gathers (``take``) but no scatter-add, which col2im needs: the
gradient of an input pixel is the sum of the gradients of every window entry that copied it.
Each (pixel, kernel offset) pair is copied by at most one window, so that sum is again a gather:
for every pixel, the host lists the (at most kh*kw) window entries that read it, padded with the
index of an appended zero, and the device gathers them and sums. Both index arrays are built
once per geometry with NumPy and then live on the device.
"""

import numpy as np

__all__ = ["Windows", "pair"]


def pair(value, name, minimum):
    """``value`` (an int or a pair of ints, each >= ``minimum``) as a tuple ``(a, b)``."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                  and v >= minimum for v in items):
        raise ValueError(f"{name} must be an integer >= {minimum} or a pair of them, got {value!r}")
    return int(items[0]), int(items[1])


def output_size(size, kernel, stride, padding, owner, dilation=1):
    """Windows along one axis: ``floor((size + 2 padding - span) / stride) + 1`` with the
    kernel's span ``dilation (kernel - 1) + 1``; ValueError when that is 0 or less."""
    span = dilation * (kernel - 1) + 1
    if size + 2 * padding < span:
        what = f"kernel size {kernel}" if dilation == 1 else \
            f"kernel size {kernel} with dilation {dilation} (span {span})"
        raise ValueError(f"{owner}: {what} is larger than the padded input "
                         f"({size} + 2 * {padding}); the output would have no rows or columns")
    return (size + 2 * padding - span) // stride + 1


class Windows:
    """The windows of one geometry: C channels, an H x W image, kernel ``(kh, kw)``, ``stride``,
    ``padding`` and ``dilation`` (pairs; kernel entry (i, j) reads the pixel ``dh i`` rows and
    ``dw j`` columns from the window's corner).

    :meth:`im2col` maps x (N, C, H, W) to cols (N, Ho*Wo, C*kh*kw): windows in row-major order,
    each window's entries ordered (c, i, j) like a PyTorch weight (O, C, kh, kw). With
    ``windows_last`` the two axes swap, cols (N, C*kh*kw, Ho*Wo), so that reducing over a window
    (pooling) adds whole rows instead of short runs. :meth:`col2im` is the adjoint: cols of the
    same layout -> (N, C, H, W), overlapping windows summed. Entries in the padding read the
    ``fill`` value given to :meth:`im2col` (zero by default).
    """

    def __init__(self, backend, channels, height, width, kernel, stride, padding, owner,
                 windows_last=False, dilation=(1, 1)):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
        self.xp, self.device = backend.xp, backend.device
        self.in_shape = (channels, height, width)
        self.out_hw = (output_size(height, kh, sh, ph, owner, dh),
                       output_size(width, kw, sw, pw, owner, dw))
        ho, wo = self.out_hw
        self.n_windows, self.window_size = ho * wo, channels * kh * kw
        self.size = channels * height * width
        # Image coordinates read by entry (oh, ow, c, i, j); outside the image: the fill at `size`.
        row = (sh * np.arange(ho)[:, None] + dh * np.arange(kh) - ph)[:, None, None, :, None]
        col = (sw * np.arange(wo)[:, None] + dw * np.arange(kw) - pw)[None, :, None, None, :]
        chan = np.arange(channels)[None, None, :, None, None]
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        shape5 = (ho, wo, channels, kh, kw)
        order = (2, 3, 4, 0, 1) if windows_last else (0, 1, 2, 3, 4)
        self.cols_shape = ((self.window_size, self.n_windows) if windows_last
                           else (self.n_windows, self.window_size))
        source = np.broadcast_to(np.where(inside, (chan * height + row) * width + col, self.size),
                                 shape5).transpose(order).ravel()
        self.padded = bool(np.any(source == self.size))
        #: Per window, how many of its entries lie inside the image (host array, (Ho*Wo,)).
        self.inside_counts = np.sum(inside, axis=(2, 3, 4)).ravel() * channels
        # Adjoint: for each pixel, the entries (one per kernel offset at most) that read it,
        # stored offset-major (fan, pixels) so that col2im sums whole rows.
        n_entries = source.size
        offset = np.broadcast_to(np.arange(kh * kw).reshape(kh, kw), shape5).transpose(order).ravel()
        readers = np.full((self.size + 1, kh * kw), n_entries, dtype=np.int64)
        readers[source, offset] = np.arange(n_entries)
        readers = np.sort(readers[:self.size], axis=1)  # real entries first, the zero last
        self.fan = max(1, int(np.max(np.sum(readers < n_entries, axis=1))))
        int64 = backend.xp.int64
        self.gather_index = backend.asarray(source, dtype=int64)
        self.scatter_index = backend.asarray(readers[:, :self.fan].T.ravel(), dtype=int64)

    def _append(self, flat, fill=0.0):
        column = self.xp.full((flat.shape[0], 1), fill, dtype=flat.dtype, device=self.device)
        return self.xp.concat([flat, column], axis=1)

    def im2col(self, x, fill=0.0):
        xp, n = self.xp, x.shape[0]
        flat = xp.reshape(x, (n, self.size))
        if self.padded:
            flat = self._append(flat, fill)
        cols = xp.take(flat, self.gather_index, axis=1)
        return xp.reshape(cols, (n,) + self.cols_shape)

    def col2im(self, cols):
        xp, n = self.xp, cols.shape[0]
        flat = self._append(xp.reshape(cols, (n, self.n_windows * self.window_size)))
        parts = xp.take(flat, self.scatter_index, axis=1)
        if self.fan == 1:
            return xp.reshape(parts, (n,) + self.in_shape)
        summed = xp.sum(xp.reshape(parts, (n, self.fan, self.size)), axis=1)
        return xp.reshape(summed, (n,) + self.in_shape)
