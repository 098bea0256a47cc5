"""NumPy fast path: the reference formulas with ``out=`` buffers, in place, float32 throughout.

Every operation below repeats a formula of the reference code (named in its docstring); results
agree to rounding. Where the order of floating-point operations differs: sums over the batch or
the classes are BLAS products (bias gradients, softmax denominators, the losses' totals), and
Adam's denominator ``sqrt(v)/c + eps`` is computed as ``(sqrt(v) + eps c) / c``, one pass fewer.
Activations, their gradients and the losses run feature-major (see :class:`_Dense`). Products
go through ``np.dot``, which reaches BLAS with less per-call work than ``np.matmul`` (a quarter
less for the small shapes of small networks, ten times less where a layer has one input). Buffers
are allocated once per batch size (the two most recent sizes are kept).
"""

import functools
import math

import numpy as np

from ..losses import MSE, CrossEntropy
from . import _cpu_threads as cpu_threads
from . import _denormals
from ._plan import BufferedOp, KernelSet, LossOp
from ._update_rules import flat_rule_name

__all__ = ["NumPyKernels"]


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
            np.dot(self.joint[0].T, self.producer.buf["full"], out=y)
        else:
            np.dot(self.W.T, x.T, out=y)
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
            np.dot(self.producer.buf["full"], dz.T, out=self.joint[1])
        else:
            np.dot(self.x.T, dz.T, out=self.dW)
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
        np.dot(self.W, dz, out=dx)
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


# -- update rules on flat buffers (reference: the ``_update`` methods in bpgpu.optimizers) ----------
# Each rule updates ``params`` in place from ``grads``, the optimizer's flat ``state`` buffers and
# scratch buffers ``work(name)`` of the same size.
def _decayed(optimizer, params, grads, work):
    """grads + weight_decay params (L2 weight decay added to the gradient)."""
    decayed = work("decayed")
    np.multiply(params, optimizer.weight_decay, out=decayed)
    np.add(grads, decayed, out=decayed)
    return decayed


def _sgd(optimizer, lr, params, grads, state, work):
    scratch = work("t")
    if optimizer.weight_decay:
        grads = _decayed(optimizer, params, grads, work)
    if optimizer.momentum:
        velocity = state["momentum_buffer"]
        if optimizer.step_count == 1:
            np.copyto(velocity, grads)
        else:
            np.multiply(velocity, optimizer.momentum, out=velocity)
            np.multiply(grads, 1.0 - optimizer.dampening, out=scratch)
            np.add(velocity, scratch, out=velocity)
        if optimizer.nesterov:
            np.multiply(velocity, optimizer.momentum, out=scratch)
            np.add(grads, scratch, out=scratch)
            grads = scratch
        else:
            grads = velocity
    np.multiply(grads, lr, out=scratch)
    np.subtract(params, scratch, out=params)


def _rmsprop(optimizer, lr, params, grads, state, work):
    scratch, alpha = work("t"), optimizer.alpha
    if optimizer.weight_decay:
        grads = _decayed(optimizer, params, grads, work)
    square_avg = state["square_avg"]
    np.multiply(grads, grads, out=scratch)
    np.multiply(scratch, 1.0 - alpha, out=scratch)
    np.multiply(square_avg, alpha, out=square_avg)
    np.add(square_avg, scratch, out=square_avg)
    if optimizer.centered:
        grad_avg = state["grad_avg"]
        np.multiply(grad_avg, alpha, out=grad_avg)
        np.multiply(grads, 1.0 - alpha, out=scratch)
        np.add(grad_avg, scratch, out=grad_avg)
        np.multiply(grad_avg, grad_avg, out=scratch)
        np.subtract(square_avg, scratch, out=scratch)
        np.sqrt(scratch, out=scratch)
    else:
        np.sqrt(square_avg, out=scratch)
    np.add(scratch, optimizer.eps, out=scratch)
    np.divide(grads, scratch, out=scratch)
    if optimizer.momentum:
        velocity = state["momentum_buffer"]
        np.multiply(velocity, optimizer.momentum, out=velocity)
        np.add(velocity, scratch, out=velocity)
        np.multiply(velocity, lr, out=scratch)
    else:
        np.multiply(scratch, lr, out=scratch)
    np.subtract(params, scratch, out=params)


def _adam(optimizer, lr, params, grads, state, work):
    scratch = work("t")
    beta1, beta2 = optimizer.betas
    one_minus_beta1, one_minus_beta2 = 1.0 - beta1, 1.0 - beta2
    if optimizer.weight_decay:
        if optimizer.decoupled:
            np.multiply(params, 1.0 - lr * optimizer.weight_decay, out=params)
        else:
            grads = _decayed(optimizer, params, grads, work)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    np.multiply(exp_avg, beta1, out=exp_avg)
    np.multiply(grads, one_minus_beta1, out=scratch)
    np.add(exp_avg, scratch, out=exp_avg)
    np.multiply(grads, grads, out=scratch)
    np.multiply(scratch, one_minus_beta2, out=scratch)
    np.multiply(exp_avg_sq, beta2, out=exp_avg_sq)
    np.add(exp_avg_sq, scratch, out=exp_avg_sq)
    sqrt_bias_correction2 = math.sqrt(1.0 - beta2 ** optimizer.step_count)
    step_size = lr / (1.0 - beta1 ** optimizer.step_count)
    np.sqrt(exp_avg_sq, out=scratch)
    np.add(scratch, optimizer.eps * sqrt_bias_correction2, out=scratch)
    np.divide(exp_avg, scratch, out=scratch)
    np.multiply(scratch, step_size * sqrt_bias_correction2, out=scratch)
    np.subtract(params, scratch, out=params)


#: The NumPy implementation of each rule named in :data:`~bpgpu.kernels._update_rules.FLAT_RULES`.
_RULES = {"sgd": _sgd, "rmsprop": _rmsprop, "adam": _adam}


def update_rule(optimizer):
    """The flat update rule for ``optimizer``, or None when it has none."""
    name = flat_rule_name(optimizer)
    return None if name is None else functools.partial(_in_blocks, _RULES[name])


#: Bytes per block of each flat buffer in the blocked update: 65536 float32 or 32768 float64
#: elements. Measured (benchmarks/bench_update.py, 2.6M parameters, 2-core AMD EPYC with 1 MiB of
#: L2 per core): Adam float32 0.80x the whole-buffer time at 256 KiB, 0.85x at 1 MiB, 0.91x at
#: 128 KiB (more blocks, more per-call overhead); float64 0.66x at 256 KiB.
BLOCK_BYTES = 1 << 18

#: Blocking starts at this many blocks of ``BLOCK_BYTES`` (1 MiB per buffer). Measured (float32,
#: 256 KiB blocks, blocked / whole-buffer time for Adam, RMSprop, SGD momentum): on a 2-core AMD
#: EPYC (1 MiB L2 per core, 32 MiB L3) 270K parameters 0.97x, 1.02x, 1.05x, 524K 0.96x, 0.98x,
#: 0.94x, 2.6M 0.80x, 0.81x, 0.77x; on a 2-vCPU Intel Xeon (2 MiB L2 per core) 270K 0.82x, 0.93x,
#: 0.67x, 524K 0.57x, 0.60x, 0.52x. Below 1 MiB (e.g. 128K parameters) the buffers stay in cache.
MIN_BLOCKS = 4

#: Bytes per block when several range jobs of a sharded update run at once (``jobs`` > 1). Each
#: NumPy call holds the GIL while it sets up, so two threads making many short calls queue for it:
#: measured on a 2-vCPU Intel Xeon (AVX-512), two 930K-parameter float32 Adam updates at once took
#: 2.82 ms in 256 KiB blocks, as long as one after the other (2.87 ms), against 2.68 ms in one
#: piece each, 2.22 ms in 512 KiB blocks and 2.07 ms in 1 MiB blocks.
PARALLEL_BLOCK_BYTES = 1 << 20


def _blocked(size, itemsize, jobs=1):
    """The block length (elements) of the blocked update for a buffer of ``size`` elements of
    ``itemsize`` bytes updated by one of ``jobs`` jobs running at once, or 0 when it runs in one
    piece (under ``MIN_BLOCKS`` blocks of ``BLOCK_BYTES``)."""
    if size * itemsize < MIN_BLOCKS * BLOCK_BYTES:
        return 0
    return max(1, (BLOCK_BYTES if jobs == 1 else PARALLEL_BLOCK_BYTES) // itemsize)


class _DeferredClip:
    """A flat gradient whose clip by value or by norm is applied block by block inside the
    blocked update (see :func:`_in_blocks`) instead of in a whole-buffer pass of its own:
    clipped = min(max(g, -clip_value), clip_value), or clipped = g scale with the scale
    min(clip_norm / (||g|| + 1e-6), 1) taken from the whole gradient beforehand. Sliced like the
    gradient (a range job of a sharded update takes its range)."""

    def __init__(self, g, clip_value, scale):
        self.g, self.clip_value, self.scale = g, clip_value, scale
        self.shape, self.dtype = g.shape, g.dtype

    def __getitem__(self, index):
        return _DeferredClip(self.g[index], self.clip_value, self.scale)

    def into(self, out):
        """The clipped gradient, written into ``out`` (the operations of
        :meth:`NumPyKernels.clip`, in its order)."""
        if self.clip_value is not None:
            c = self.clip_value
            np.maximum(self.g, -c, out=out)
            np.minimum(out, c, out=out)
        else:
            np.multiply(self.g, self.scale, out=out)
        return out


def _in_blocks(rule, optimizer, lr, params, grads, state, work, jobs=1):
    """Run the element-wise ``rule`` block by block: params[a:b], grads[a:b], each state[k][a:b]
    for consecutive blocks [a, b) of ``BLOCK_BYTES`` bytes (``PARALLEL_BLOCK_BYTES`` when this is
    one of ``jobs`` > 1 range jobs running at once), all of the rule's passes over one block
    before the next block, so the passes read the cache instead of main memory. A
    :class:`_DeferredClip` gradient is clipped block by block too, into a scratch block, just
    before the rule reads that block.

    Bit-identical to ``rule`` over the whole (clipped) buffers: every rule and every clip computes
    each element from the same elements of its inputs with the same operations in the same order
    (no reduction across elements; the norm of a clip by norm is taken from the whole gradient
    before). Scratch: one block per scratch name (``work(name, block)``), allocated once. Buffers
    under ``MIN_BLOCKS`` blocks run in one piece, and so does plain SGD (two passes, g lr then
    p - that, nothing to reuse from the cache: blocked 1.05-1.08x the whole-buffer time from
    524K to 2.6M float32 parameters)."""
    size = params.shape[0]
    block = _blocked(size, params.dtype.itemsize, jobs)
    plain_sgd = rule is _sgd and not optimizer.momentum and not optimizer.weight_decay
    if not block or plain_sgd:
        if isinstance(grads, _DeferredClip):
            grads = grads.into(work("clipped"))
        return rule(optimizer, lr, params, grads, state, work)
    scratch = {"t": work("block t", block)}
    if optimizer.weight_decay and not getattr(optimizer, "decoupled", False):
        scratch["decayed"] = work("block decayed", block)
    deferred = grads if isinstance(grads, _DeferredClip) else None
    clipped = work("block clipped", block) if deferred is not None else None
    names = list(state)
    for lo in range(0, size, block):
        hi = min(lo + block, size)
        n = hi - lo
        g = grads[lo:hi] if deferred is None else deferred[lo:hi].into(clipped[:n])
        rule(optimizer, lr, params[lo:hi], g, {k: state[k][lo:hi] for k in names},
             lambda name, n=n: scratch[name][:n])


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
        block with one of the two clips comes back as a :class:`_DeferredClip` (``defer``; the
        norm taken here), clipped block by block inside the update, which only
        :func:`_in_blocks` (this kernel set's update rules) reads."""
        if optimizer.clip_value is None and optimizer.clip_norm is None:
            return g
        if (optimizer.clip_value is None or optimizer.clip_norm is None) and defer \
                and _blocked(g.shape[0], g.dtype.itemsize):
            # one clip: applied block by block inside the blocked update (bit-identical)
            if optimizer.clip_value is not None:
                return _DeferredClip(g, optimizer.clip_value, None)
            total = np.sqrt(np.dot(g, g))
            return _DeferredClip(g, None, np.minimum(optimizer.clip_norm / (total + 1e-6), 1.0))
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
