"""NumPy fast path: the reference formulas with ``out=`` buffers, in place, float32 throughout.

Every operation below repeats a formula of the reference code (named in its docstring); results
agree to rounding. Where the order of floating-point operations differs: sums over the batch or
the classes are BLAS products (bias gradients, softmax denominators, the losses' totals).
The optimizer update: the C kernels of :mod:`bpgpu.kernels._c_kernels` where a C compiler is,
else the NumPy passes of :mod:`bpgpu.kernels._numpy_update` (bit-identical to each other).
Activations, their gradients and the losses run feature-major (see :class:`_Dense`). Products
go through ``np.dot``, which reaches BLAS with less per-call work than ``np.matmul`` (a quarter
less for the small shapes of small networks, ten times less where a layer has one input); in
row shards through MKL where it is installed (:func:`_product`). Buffers are allocated once per
batch size (the two most recent sizes are kept).
"""


import numpy as np

from ..losses import MSE, CrossEntropy
from . import _c_kernels, _denormals, _mkl_blas
from . import _cpu_threads as cpu_threads
from ._numpy_update import DeferredClip, blocked, passes
from ._plan import BufferedOp, KernelSet, LossOp
from ._update_rules import flat_rule_name

__all__ = ["NumPyKernels"]


def _product(a, b, out):
    """out = a b for the 2-D products of :class:`_Dense`: through MKL in row shards, where BLAS
    is pinned to the calling thread and MKL is chosen (:mod:`bpgpu.kernels._mkl_blas`), else
    (and as its reference twin) ``np.dot``."""
    if not (cpu_threads.pinned() and _mkl_blas.gemm(a, b, out)):
        np.dot(a, b, out=out)


class _Dense(BufferedOp):
    """``Dense`` and the activation after it. Reference: ``Dense.forward/backward``,
    ``ReLU``/``LeakyReLU``/``Tanh`` forward/backward.

    Feature-major buffers: the output is kept as y^T, shape (out, n), and handed on as its
    transpose y (an (n, out) view), so every element-wise pass (bias, activation, its gradient,
    the loss) runs over rows of n contiguous samples, however few features a layer has.

    Forward: z^T = W^T x^T + b, y^T = act(z^T) in place. Backward: dz = dy * act'(y) (the ReLU
    mask y > 0 equals z > 0), dW = x^T dz (+ 2 l2 W), db = dz^T 1, dx^T = W dz^T.

    Chains (set up by :meth:`NumPyKernels.link`): a layer feeding another fast Dense with a bias
    keeps a row of ones under its output, [y^T; 1], and the next layer multiplies [W; b]^T by it,
    so the bias and its gradient ride along in that layer's matrix products. The activation mask
    is taken in the forward pass, while y is in cache, and the gradient is masked in place when
    its buffer belongs to the step.

    Only a primary operation publishes its gradients in ``layer.grads`` and adds the L2 term; the
    copies serving row shards 1..k-1 and inference write their partial gradients only (or none).
    """

    def __init__(self, layer, act, W, dW, b, db, joint, primary):
        super().__init__()
        self.layer, self.W, self.dW, self.b, self.db, self.joint = layer, W, dW, b, db, joint
        self.act, self.slope = act if act is not None else (None, 0.0)
        self.primary = primary
        # the L2 term (primary only); its factor is read from the layer at every step
        self.l2_term = np.empty_like(W) if primary and layer.l2 else None
        self.producer = None        # the _Dense whose [y^T; 1] buffer is this layer's [x^T; 1]
        self.ones_row = False       # keep [y^T; 1] for the next layer
        self.owns_dy = False        # the incoming gradient's buffer may be overwritten
        self.x = self.buf = None

    def _make(self, n):
        out, dtype = self.W.shape[1], self.W.dtype
        rows = out + 1 if self.ones_row else out
        full = np.empty((rows, n), dtype)
        if self.ones_row:
            full[out, :] = 1.0
        act = self.act
        mask = np.empty((rows, n), bool) if act in ("relu", "leaky_relu") else None
        return {"full": full, "y": full[:out], "whole": full.reshape(-1),
                "zeros": np.zeros(full.size, dtype) if act == "relu" else None,
                "scaled": np.empty(full.size, dtype) if act == "leaky_relu" else None,
                # relu: y > 0; leaky_relu: y <= 0 (the entries whose gradient is scaled)
                "mask": mask, "mask_flat": None if mask is None else mask.reshape(-1),
                "dz": np.empty((out, n), dtype), "ones": np.ones(n, dtype),
                "dx": np.empty((self.W.shape[0], n), dtype) if self.layer.input_grad else None}

    def forward(self, x):
        buf = self.buffers_for(x.shape[0])
        y = buf["y"]
        if self.producer is not None:
            _product(self.joint[0].T, self.producer.buf["full"], y)
        else:
            _product(self.W.T, x.T, y)
            if self.b is not None:
                np.add(y, self.b[:, None], out=y)
        act = self.act
        if act == "relu":  # over [y^T; 1] when it exists: max(1, 0) keeps the ones
            whole = buf["whole"]
            np.maximum(whole, buf["zeros"], out=whole)
            np.greater(whole, 0.0, out=buf["mask_flat"])
        elif act == "leaky_relu":  # where(z > 0, z, a z) = max(z, a z) for 0 <= a <= 1
            whole, scaled = buf["whole"], buf["scaled"]
            np.multiply(whole, self.slope, out=scaled)
            np.maximum(whole, scaled, out=whole)
            np.less_equal(whole, 0.0, out=buf["mask_flat"])
        elif act == "tanh":
            np.tanh(y, out=y)
        self.x, self.buf = x, buf
        return y.T

    def backward(self, dy):
        buf, act = self.buf, self.act
        dy_t = dy.T  # (out, n): contiguous when dy came from a fast operation
        in_place = self.owns_dy and act in ("relu", "leaky_relu")
        dz = dy_t if act is None or in_place else buf["dz"]
        if act == "relu":
            np.multiply(dy_t, buf["mask"][:dz.shape[0]], out=dz)
        elif act == "leaky_relu":
            if dz is not dy_t:
                np.copyto(dz, dy_t)
            np.multiply(dz, self.slope, out=dz, where=buf["mask"][:dz.shape[0]])
        elif act == "tanh":  # dy (1 - y^2)
            y = buf["y"]
            np.multiply(y, y, out=dz)
            np.subtract(1.0, dz, out=dz)
            np.multiply(dy_t, dz, out=dz)
        if self.producer is not None:
            _product(self.producer.buf["full"], dz.T, self.joint[1])
        else:
            _product(self.x.T, dz.T, self.dW)
            if self.b is not None:
                np.dot(dz, buf["ones"], out=self.db)
        if self.primary:
            grads = self.layer.grads
            grads["W"] = self.dW
            if self.b is not None:
                grads["b"] = self.db
        if self.l2_term is not None:
            np.multiply(self.W, 2.0 * self.layer.l2, out=self.l2_term)
            np.add(self.dW, self.l2_term, out=self.dW)
        if not self.layer.input_grad:
            return None
        dx = buf["dx"]
        _product(self.W, dz, dx)
        return dx.T


def _class_major(z, buf):
    """z (n, c) as a C-contiguous (c, n) array: z^T itself when a fast Dense made z, else a copy
    into ``buf``."""
    z_t = z.T
    if z_t.flags.c_contiguous:
        return z_t
    np.copyto(buf, z_t)
    return buf


class _SoftmaxCrossEntropy(LossOp):
    """Reference: ``CrossEntropy.forward/backward``. With s = z - max_c z and e = exp(s):
    loss = sum_n(t_sum log(sum_c e) - sum_c t s) / N, grad = (e / sum_c e * t_sum - t) / N;
    for class ids, t is one-hot and t_sum = 1.

    Class-major: the logits are read as z^T (c, n), so every pass runs over rows of n samples.
    Row maxima of up to 16 classes are taken class by class, the sums over classes by a BLAS
    matrix-vector product, sum_c t s over the whole batch by one dot product. ``total``: N when z
    holds a block of a batch's rows (a row shard); default z's rows."""

    def _make(self, key):
        (n, c), dtype = key
        s, target = np.empty((c, n), dtype), np.empty((c, n), dtype)
        return {"s": s, "s_flat": s.reshape(-1), "z": np.empty((c, n), dtype), "t": target,
                "t_flat": target.reshape(-1), "m": np.empty(n, dtype), "ones": np.ones(c, dtype),
                "classes": np.arange(c)[:, None]}

    def forward(self, z, t, total=None):
        n, c = z.shape
        buf = self.buffers_for((z.shape, z.dtype))
        s, m, ones = buf["s"], buf["m"], buf["ones"]
        z_t = _class_major(z, buf["z"])
        if c <= 16:
            np.copyto(m, z_t[0])
            for j in range(1, c):
                np.maximum(m, z_t[j], out=m)
        else:
            np.max(z_t, axis=0, out=m)
        np.subtract(z_t, m, out=s)
        target = buf["t"]
        if t.ndim == 1:  # one-hot rows of the class ids, t_sum = 1
            np.equal(buf["classes"], t, out=target)
            picked = np.dot(buf["t_flat"], buf["s_flat"])
            np.exp(s, out=s)
            np.dot(ones, s, out=m)
            np.divide(s, m, out=s)
            np.log(m, out=m)
            value = (np.add.reduce(m) - picked) / (total or n)
        else:
            np.copyto(target, t.T)
            t_sum = np.dot(t, ones)
            picked = np.dot(buf["t_flat"], buf["s_flat"])
            np.exp(s, out=s)
            np.dot(ones, s, out=m)
            np.divide(s, m, out=s)
            np.log(m, out=m)
            value = (np.dot(t_sum, m) - picked) / (total or n)
            np.multiply(s, t_sum, out=s)
        np.subtract(s, target, out=s)
        np.divide(s, total or n, out=s)
        self.grad = s.T
        return value


class _MeanSquaredError(LossOp):
    """Reference: ``MSE.forward/backward``: loss = sum(d^2) / size, grad = d (2 / size), d = p - t,
    with sum(d^2) one dot product. Class-major like :class:`_SoftmaxCrossEntropy`. ``total``: the
    batch's rows when pred holds a block of them (a row shard); size counts them."""

    def _make(self, key):
        (n, c), dtype = key
        d = np.empty((c, n), dtype)
        return {"d": d, "d_flat": d.reshape(-1)}

    def forward(self, pred, t, total=None):
        n, c = pred.shape
        buf = self.buffers_for((pred.shape, pred.dtype))
        d, flat = buf["d"], buf["d_flat"]
        size = c * (n if total is None else total)
        np.subtract(pred.T, t.T, out=d)
        value = np.dot(flat, flat) / size
        np.multiply(d, 2.0 / size, out=d)
        self.grad = d.T
        return value


def update_rule(optimizer):
    """The flat update rule for ``optimizer``, or None when it has none: the C kernels' rule
    (:mod:`bpgpu.kernels._c_kernels`, one pass, bit-identical) when they can be used, else the
    NumPy passes of :mod:`bpgpu.kernels._numpy_update`, run block by block."""
    name = flat_rule_name(optimizer)
    if name is None:
        return None
    numpy_rule = passes(name)
    return _c_kernels.update_rule(name, numpy_rule) or numpy_rule


class NumPyKernels(KernelSet):
    """The NumPy kernel set used by :class:`~bpgpu.kernels._plan.TrainStep`."""

    name = "numpy"
    activations = ("relu", "leaky_relu", "tanh")
    loss_ops = {CrossEntropy: _SoftmaxCrossEntropy, MSE: _MeanSquaredError}

    @staticmethod
    def zeros(n, dtype):
        """A zeroed 1-D buffer whose first element is 64-byte aligned."""
        dtype = np.dtype(dtype)
        raw = np.zeros(n + 64 // dtype.itemsize, dtype)
        skip = (-raw.ctypes.data % 64) // dtype.itemsize
        return raw[skip:skip + n]

    @staticmethod
    def copy(dst, src):
        np.copyto(dst, src)

    @staticmethod
    def dense_op(layer, act, W, dW, b, db, joint, primary):
        return _Dense(layer, act, W, dW, b, db, joint, primary)

    @staticmethod
    def link(ops, loss_op):
        """Chain adjacent fast Dense operations (see :class:`_Dense`)."""
        for op, nxt in zip(ops, ops[1:] + [None], strict=True):
            if not isinstance(op, _Dense):
                continue
            if isinstance(nxt, _Dense) and nxt.joint is not None:
                op.ones_row, nxt.producer = True, op
            op.owns_dy = isinstance(nxt, _Dense) if nxt is not None else \
                isinstance(loss_op, (_SoftmaxCrossEntropy, _MeanSquaredError))

    update_rule = staticmethod(update_rule)

    @staticmethod
    def update_note():
        """What runs the flat update: the C kernels, or NumPy passes and why."""
        if _c_kernels.library() is not None:
            return "C kernels"
        return f"NumPy passes; C kernels {_c_kernels.support()}"

    @staticmethod
    def shard_products():
        """What runs the matrix products of row shards: MKL, or np.dot and why (a bad
        ``BPGPU_BLAS`` is reported here, and raised by the step itself)."""
        try:
            return _mkl_blas.support()
        except ValueError as exc:
            return f"not run: {exc}"

    step_context = staticmethod(_denormals.flushing)
    shard_count = staticmethod(cpu_threads.shard_count)
    one_blas_thread = staticmethod(cpu_threads.one_blas_thread)
    run_parallel = staticmethod(cpu_threads.run_parallel)

    @staticmethod
    def accumulate(dst, src):
        np.add(dst, src, out=dst)

    @staticmethod
    def clip(optimizer, g, work, defer=True):
        """Reference: ``Optimizer.clip`` on the flat gradient, into a scratch buffer (the layers'
        gradients stay unclipped, as on the reference path): min(max(g, -clip_value),
        clip_value), then g min(clip_norm / (||g|| + 1e-6), 1). A buffer the update runs block by
        block with one of the two clips comes back as a :class:`DeferredClip` (``defer``; the
        norm taken here), clipped block by block inside the update, which only
        :func:`~bpgpu.kernels._numpy_update.in_blocks` and the C rules read."""
        if optimizer.clip_value is None and optimizer.clip_norm is None:
            return g
        if (optimizer.clip_value is None or optimizer.clip_norm is None) and defer \
                and blocked(g.shape[0], g.dtype.itemsize):
            # one clip: applied block by block inside the blocked update (bit-identical)
            if optimizer.clip_value is not None:
                return DeferredClip(g, optimizer.clip_value, None)
            total = np.sqrt(np.dot(g, g))
            return DeferredClip(g, None, np.minimum(optimizer.clip_norm / (total + 1e-6), 1.0))
        out = work("clipped")
        if optimizer.clip_value is not None:
            c = optimizer.clip_value
            np.maximum(g, -c, out=out)
            np.minimum(out, c, out=out)
            g = out
        if optimizer.clip_norm is not None:
            total = np.sqrt(np.dot(g, g))
            scale = np.minimum(optimizer.clip_norm / (total + 1e-6), 1.0)
            np.multiply(g, scale, out=out)
        return out
