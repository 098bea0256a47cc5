"""The NumPy fast path's optimizer update rules over flat buffers, as NumPy passes.

Reference: the ``_update`` methods in :mod:`bpgpu.optimizers`. Each rule updates ``params`` in
place from ``grads``, the optimizer's flat ``state`` buffers and scratch buffers ``work(name)``
of the same size, with ``out=`` everywhere; :func:`in_blocks` runs a rule block by block so its
passes read the cache. Adam's denominator ``sqrt(v)/c + eps`` is computed as
``(sqrt(v) + eps c) / c``, one pass fewer. The C kernels (:mod:`bpgpu.kernels._c_kernels`)
repeat these passes element by element and are checked against them bit for bit.
"""

import functools
import math

import numpy as np

__all__ = ["RULES", "passes", "in_blocks", "DeferredClip", "blocked"]


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
RULES = {"sgd": _sgd, "rmsprop": _rmsprop, "adam": _adam}


def passes(name):
    """The NumPy rule ``name`` as the fast step calls it: :func:`in_blocks` over ``RULES[name]``."""
    return functools.partial(in_blocks, RULES[name])


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


def blocked(size, itemsize, jobs=1):
    """The block length (elements) of the blocked update for a buffer of ``size`` elements of
    ``itemsize`` bytes updated by one of ``jobs`` jobs running at once, or 0 when it runs in one
    piece (under ``MIN_BLOCKS`` blocks of ``BLOCK_BYTES``)."""
    if size * itemsize < MIN_BLOCKS * BLOCK_BYTES:
        return 0
    return max(1, (BLOCK_BYTES if jobs == 1 else PARALLEL_BLOCK_BYTES) // itemsize)


class DeferredClip:
    """A flat gradient whose clip by value or by norm is applied inside the update (block by
    block in :func:`in_blocks`, element by element in the C rules of
    :mod:`bpgpu.kernels._c_kernels`) instead of in a whole-buffer pass of its own:
    clipped = min(max(g, -clip_value), clip_value), or clipped = g scale with the scale
    min(clip_norm / (||g|| + 1e-6), 1) taken from the whole gradient beforehand. Sliced like the
    gradient (a range job of a sharded update takes its range)."""

    def __init__(self, g, clip_value, scale):
        self.g, self.clip_value, self.scale = g, clip_value, scale
        self.shape, self.dtype = g.shape, g.dtype

    def __getitem__(self, index):
        return DeferredClip(self.g[index], self.clip_value, self.scale)

    def into(self, out):
        """The clipped gradient, written into ``out`` (the operations of
        :meth:`bpgpu.kernels._numpy_fast.NumPyKernels.clip`, in its order)."""
        if self.clip_value is not None:
            c = self.clip_value
            np.maximum(self.g, -c, out=out)
            np.minimum(out, c, out=out)
        else:
            np.multiply(self.g, self.scale, out=out)
        return out


def in_blocks(rule, optimizer, lr, params, grads, state, work, jobs=1, partials=()):
    """Add the row shards' ``partials`` (partial gradients of the same range) into ``grads``,
    then run the element-wise ``rule`` block by block: params[a:b], grads[a:b], each state[k][a:b]
    for consecutive blocks [a, b) of ``BLOCK_BYTES`` bytes (``PARALLEL_BLOCK_BYTES`` when this is
    one of ``jobs`` > 1 range jobs running at once), all of the rule's passes over one block
    before the next block, so the passes read the cache instead of main memory. A
    :class:`DeferredClip` gradient is clipped block by block too, into a scratch block, just
    before the rule reads that block.

    Bit-identical to ``rule`` over the whole (clipped) buffers: every rule and every clip computes
    each element from the same elements of its inputs with the same operations in the same order
    (no reduction across elements; the norm of a clip by norm is taken from the whole gradient
    before). Scratch: one block per scratch name (``work(name, block)``), allocated once. Buffers
    under ``MIN_BLOCKS`` blocks run in one piece, and so does plain SGD (two passes, g lr then
    p - that, nothing to reuse from the cache: blocked 1.05-1.08x the whole-buffer time from
    524K to 2.6M float32 parameters)."""
    for partial in partials:
        np.add(grads, partial, out=grads)
    size = params.shape[0]
    block = blocked(size, params.dtype.itemsize, jobs)
    plain_sgd = rule is _sgd and not optimizer.momentum and not optimizer.weight_decay
    if not block or plain_sgd:
        if isinstance(grads, DeferredClip):
            grads = grads.into(work("clipped"))
        return rule(optimizer, lr, params, grads, state, work)
    scratch = {"t": work("block t", block)}
    if optimizer.weight_decay and not getattr(optimizer, "decoupled", False):
        scratch["decayed"] = work("block decayed", block)
    deferred = grads if isinstance(grads, DeferredClip) else None
    names = list(state)
    for lo in range(0, size, block):
        hi = min(lo + block, size)
        n = hi - lo
        g = grads[lo:hi] if deferred is None else \
            deferred[lo:hi].into(work("block clipped", block)[:n])
        rule(optimizer, lr, params[lo:hi], g, {k: state[k][lo:hi] for k in names},
             lambda name, n=n: scratch[name][:n])
