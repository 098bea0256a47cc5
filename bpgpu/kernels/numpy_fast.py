"""NumPy fast path: the reference formulas with ``out=`` buffers, in place, float32 throughout.

Every operation below repeats a formula of the reference code (named in its docstring) in the
same order of floating-point operations, so most results are bit-identical; the exceptions, all
within rounding, are the bias gradient (a BLAS matrix-vector product instead of ``sum``) and
Adam's denominator (``sqrt(v)/c + eps`` computed as ``(sqrt(v) + eps c) / c``, one pass fewer).
Buffers are allocated once per batch size (the two most recent sizes are kept).
"""

import functools
import math

import numpy as np

from ..losses import MSE, CrossEntropy
from ..optimizers import SGD, Adam, AdamW, RMSprop
from . import cpu_threads
from .plan import KernelSet, cached as _cached

__all__ = ["NumPyKernels"]


class _Dense:
    """``Dense`` and the activation after it. Reference: ``Dense.forward/backward``,
    ``ReLU``/``LeakyReLU``/``Tanh`` forward/backward.

    Forward: z = x @ W + b, y = act(z) in place. Backward: dz = dy * act'(y) (the ReLU mask
    y > 0 equals z > 0), dW = x^T dz (+ 2 l2 W), db = 1^T dz, dx = dz W^T.

    Chains (set up by :meth:`NumPyKernels.link`): a layer feeding another fast Dense with a bias
    keeps a column of ones after its output, and the next layer multiplies [x 1] by [W; b], so the
    bias and its gradient ride along in that layer's matrix products. The ReLU mask is taken in
    the forward pass, while y is in cache, and the gradient is masked in place when its buffer
    belongs to the step.

    Only a primary operation publishes its gradients in ``layer.grads`` and adds the L2 term; the
    copies serving row shards 1..k-1 write their partial gradients only.
    """

    def __init__(self, layer, act, W, dW, b, db, joint, primary):
        self.layer, self.W, self.dW, self.b, self.db, self.joint = layer, W, dW, b, db, joint
        self.act, self.slope = act if act is not None else (None, 0.0)
        self.primary = primary
        self.l2 = layer.l2 if primary else 0.0
        self.l2_term = np.empty_like(W) if self.l2 else None
        self.producer = None        # the _Dense whose [y 1] buffer is this layer's [x 1]
        self.ones_column = False    # keep [y 1] for the next layer
        self.owns_dy = False        # the incoming gradient's buffer may be overwritten
        self.buffers = {}
        self.x = self.y = self.full = self.buf = None

    def _make(self, n):
        out, dtype = self.W.shape[1], self.W.dtype
        full = y = None
        if self.ones_column:
            full = np.empty((n, out + 1), dtype)
            full[:, out] = 1.0
            y = full[:, :out]
        else:
            y = np.empty((n, out), dtype)
        masked = self.act in ("relu", "leaky_relu")
        whole = full if full is not None else y  # contiguous: element-wise passes run flat
        return {"y": y, "full": full, "whole": whole.reshape(-1),
                "zeros": np.zeros(whole.size, dtype) if self.act == "relu" else None,
                "mask": np.empty(whole.shape, bool) if masked else None,
                "dz": np.empty((n, out), dtype) if self.act and not (masked and self.owns_dy)
                else None,
                "ones": np.ones(n, dtype), "dx": None}

    def forward(self, x):
        buf = _cached(self.buffers, x.shape[0], self._make)
        y = buf["y"]
        if self.producer is not None:
            np.matmul(self.producer.full, self.joint[0], out=y)
        else:
            np.matmul(x, self.W, out=y)
            if self.b is not None:
                np.add(y, self.b, out=y)
        act = self.act
        if act == "relu":  # over [y 1] when it exists: max(1, 0) keeps the ones
            whole = buf["whole"]
            np.maximum(whole, buf["zeros"], out=whole)
            np.greater(whole, 0.0, out=buf["mask"].reshape(-1))
        elif act == "leaky_relu":  # where(z > 0, z, a z) = max(z, a z) for 0 <= a <= 1
            whole = buf["whole"]
            np.maximum(whole, np.multiply(whole, self.slope), out=whole)
            np.greater(whole, 0.0, out=buf["mask"].reshape(-1))
        elif act == "tanh":
            np.tanh(y, out=y)
        self.x, self.y, self.full, self.buf = x, y, buf["full"], buf
        return y

    def backward(self, dy):
        buf, act = self.buf, self.act
        dz = dy if act is None or (self.owns_dy and act != "tanh") else buf["dz"]
        if act in ("relu", "leaky_relu"):
            mask = buf["mask"][:, :dz.shape[1]]
            if act == "relu":
                np.multiply(dy, mask, out=dz)
            else:
                np.copyto(dz, np.where(mask, dy, self.slope * dy))
        elif act == "tanh":  # dy (1 - y^2)
            np.multiply(self.y, self.y, out=dz)
            np.subtract(1.0, dz, out=dz)
            np.multiply(dy, dz, out=dz)
        if self.producer is not None:
            np.matmul(self.producer.full.T, dz, out=self.joint[1])
        else:
            np.matmul(self.x.T, dz, out=self.dW)
            if self.b is not None:
                np.matmul(buf["ones"], dz, out=self.db)
        if self.primary:
            grads = self.layer.grads
            grads["W"] = self.dW
            if self.b is not None:
                grads["b"] = self.db
        if self.l2:
            np.multiply(self.W, 2.0 * self.l2, out=self.l2_term)
            np.add(self.dW, self.l2_term, out=self.dW)
        if not self.layer.input_grad:
            return None
        dx = buf["dx"]
        if dx is None:
            dx = buf["dx"] = np.empty((dz.shape[0], self.W.shape[0]), dz.dtype)
        np.matmul(dz, self.W.T, out=dx)
        return dx


class _SoftmaxCrossEntropy:
    """Reference: ``CrossEntropy.forward/backward``. With s = z - max_c z and e = exp(s):
    loss = sum_n(t_sum log(sum_c e) - sum_c t s) / N, grad = (e / sum_c e * t_sum - t) / N;
    for class ids, t is one-hot and t_sum = 1. Row maxima of a few classes are taken column by
    column and row sums by a matrix-vector product: NumPy's axis reductions are slow on short
    rows. ``total``: N when z holds a block of a batch's rows (a row shard); default z's rows."""

    def __init__(self):
        self.buffers = {}
        self.grad = None

    @staticmethod
    def _make(key):
        (n, c), dtype = key
        return np.empty((n, c), dtype), np.empty(n, dtype), np.ones(c, dtype), np.arange(n)

    def forward(self, z, t, total=None):
        n, c = z.shape
        s, m, ones, rows = _cached(self.buffers, (z.shape, z.dtype), self._make)
        if c <= 16:
            np.copyto(m, z[:, 0])
            for j in range(1, c):
                np.maximum(m, z[:, j], out=m)
        else:
            np.max(z, axis=1, out=m)
        np.subtract(z, m[:, None], out=s)
        if t.ndim == 1:
            picked = s[rows, t]
            np.exp(s, out=s)
            np.matmul(s, ones, out=m)
            np.divide(s, m[:, None], out=s)
            np.log(m, out=m)
            np.subtract(m, picked, out=picked)
            value = np.add.reduce(picked) / (total or n)
            s[rows, t] -= 1.0
        else:
            t_sum = np.matmul(t, ones)
            dot = np.add.reduce(t * s, axis=1)
            np.exp(s, out=s)
            np.matmul(s, ones, out=m)
            np.divide(s, m[:, None], out=s)
            np.log(m, out=m)
            value = np.add.reduce(t_sum * m - dot) / (total or n)
            np.multiply(s, t_sum[:, None], out=s)
            np.subtract(s, t, out=s)
        np.divide(s, total or n, out=s)
        self.grad = s
        return value


class _MeanSquaredError:
    """Reference: ``MSE.forward/backward``: loss = sum(d^2) / size, grad = d (2 / size), d = p - t.
    ``total``: the batch's rows when pred holds a block of them (a row shard); size counts them."""

    def __init__(self):
        self.buffers = {}
        self.grad = None

    @staticmethod
    def _make(key):
        return np.empty(key[0], key[1]), np.empty(key[0], key[1])

    def forward(self, pred, t, total=None):
        d, sq = _cached(self.buffers, (pred.shape, pred.dtype), self._make)
        size = d.size if total is None else d.size // d.shape[0] * total
        np.subtract(pred, t, out=d)
        np.multiply(d, d, out=sq)
        value = np.add.reduce(sq, axis=None) / size
        np.multiply(d, 2.0 / size, out=d)
        self.grad = d
        return value


# -- update rules on flat buffers (reference: the ``_update`` methods in bpgpu.optimizers) ----------
def _decayed(optimizer, p, g, work):
    """g + weight_decay p (L2 weight decay added to the gradient)."""
    out = work("decayed")
    np.multiply(p, optimizer.weight_decay, out=out)
    np.add(g, out, out=out)
    return out


def _sgd(opt, lr, p, g, state, work):
    t = work("t")
    if opt.weight_decay:
        g = _decayed(opt, p, g, work)
    if opt.momentum:
        buf = state["momentum_buffer"]
        if opt.step_count == 1:
            np.copyto(buf, g)
        else:
            np.multiply(buf, opt.momentum, out=buf)
            np.multiply(g, 1.0 - opt.dampening, out=t)
            np.add(buf, t, out=buf)
        if opt.nesterov:
            np.multiply(buf, opt.momentum, out=t)
            np.add(g, t, out=t)
            g = t
        else:
            g = buf
    np.multiply(g, lr, out=t)
    np.subtract(p, t, out=p)


def _rmsprop(opt, lr, p, g, state, work):
    t, a = work("t"), opt.alpha
    if opt.weight_decay:
        g = _decayed(opt, p, g, work)
    v = state["square_avg"]
    np.multiply(g, g, out=t)
    np.multiply(t, 1.0 - a, out=t)
    np.multiply(v, a, out=v)
    np.add(v, t, out=v)
    if opt.centered:
        avg = state["grad_avg"]
        np.multiply(avg, a, out=avg)
        np.multiply(g, 1.0 - a, out=t)
        np.add(avg, t, out=avg)
        np.multiply(avg, avg, out=t)
        np.subtract(v, t, out=t)
        np.sqrt(t, out=t)
    else:
        np.sqrt(v, out=t)
    np.add(t, opt.eps, out=t)
    np.divide(g, t, out=t)
    if opt.momentum:
        buf = state["momentum_buffer"]
        np.multiply(buf, opt.momentum, out=buf)
        np.add(buf, t, out=buf)
        np.multiply(buf, lr, out=t)
    else:
        np.multiply(t, lr, out=t)
    np.subtract(p, t, out=p)


def _adam(opt, lr, p, g, state, work):
    t = work("t")
    b1, b2 = opt.betas
    if opt.weight_decay:
        if opt.decoupled:
            np.multiply(p, 1.0 - lr * opt.weight_decay, out=p)
        else:
            g = _decayed(opt, p, g, work)
    m, v = state["exp_avg"], state["exp_avg_sq"]
    np.multiply(m, b1, out=m)
    np.multiply(g, 1.0 - b1, out=t)
    np.add(m, t, out=m)
    np.multiply(g, g, out=t)
    np.multiply(t, 1.0 - b2, out=t)
    np.multiply(v, b2, out=v)
    np.add(v, t, out=v)
    c = math.sqrt(1.0 - b2 ** opt.step_count)
    step_size = lr / (1.0 - b1 ** opt.step_count)
    np.sqrt(v, out=t)
    np.add(t, opt.eps * c, out=t)
    np.divide(m, t, out=t)
    np.multiply(t, step_size * c, out=t)
    np.subtract(p, t, out=p)


#: Exact optimizer classes with a flat rule, and the configuration keys the rule knows (an
#: optimizer grown new options falls back to its reference rule until its rule learns them).
_RULES = {
    SGD: (_sgd, {"lr", "clip_norm", "clip_value", "momentum", "dampening", "weight_decay",
                 "nesterov"}),
    RMSprop: (_rmsprop, {"lr", "clip_norm", "clip_value", "alpha", "eps", "weight_decay",
                         "momentum", "centered"}),
    Adam: (_adam, {"lr", "clip_norm", "clip_value", "betas", "eps", "weight_decay"}),
    AdamW: (_adam, {"lr", "clip_norm", "clip_value", "betas", "eps", "weight_decay"}),
}


def update_rule(optimizer):
    """The flat update rule for ``optimizer``, or None when it has none."""
    entry = _RULES.get(type(optimizer))
    if entry is None or not set(optimizer.get_config()) <= entry[1]:
        return None
    return functools.partial(_in_blocks, entry[0])


#: Elements per block of the update (1 MiB per float32 array).
BLOCK = 1 << 18


def _in_blocks(rule, opt, lr, p, g, state, work):
    """Run the element-wise ``rule`` block by block, so that its dozen passes over each block run
    from the CPU cache instead of main memory (large networks); one block for small ones."""
    size = p.shape[0]
    if size <= 2 * BLOCK:
        return rule(opt, lr, p, g, state, work)
    scratch = {"t": work("block t", BLOCK)}
    if opt.weight_decay and not getattr(opt, "decoupled", False):
        scratch["decayed"] = work("block decayed", BLOCK)
    names = list(state)
    for lo in range(0, size, BLOCK):
        hi = min(lo + BLOCK, size)
        n = hi - lo
        rule(opt, lr, p[lo:hi], g[lo:hi], {k: state[k][lo:hi] for k in names},
             lambda name, n=n: scratch[name][:n])


class NumPyKernels(KernelSet):
    """The NumPy kernel set used by :class:`~bpgpu.kernels.plan.TrainStep`."""

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
        for op, nxt in zip(ops, ops[1:] + [None]):
            if not isinstance(op, _Dense):
                continue
            if isinstance(nxt, _Dense) and nxt.joint is not None:
                op.ones_column, nxt.producer = True, op
            op.owns_dy = isinstance(nxt, _Dense) if nxt is not None else \
                isinstance(loss_op, (_SoftmaxCrossEntropy, _MeanSquaredError))

    update_rule = staticmethod(update_rule)
    shard_count = staticmethod(cpu_threads.shard_count)
    one_blas_thread = staticmethod(cpu_threads.one_blas_thread)
    run_parallel = staticmethod(cpu_threads.run_parallel)

    @staticmethod
    def accumulate(dst, src):
        np.add(dst, src, out=dst)

    @staticmethod
    def clip(optimizer, g, work):
        """Reference: ``Optimizer.clip`` on the flat gradient, into a scratch buffer (the layers'
        gradients stay unclipped, as on the reference path)."""
        if optimizer.clip_value is None and optimizer.clip_norm is None:
            return g
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
