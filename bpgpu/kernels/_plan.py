"""The fast training step: flat parameter and gradient buffers, a list of operations, one update.

:class:`TrainStep` serves one :class:`~bpgpu.Network` through its fast engine
(:class:`bpgpu._engine.FastEngine`, chosen by :func:`bpgpu._engine.select_engine`).
At construction every parameter is copied into one flat buffer and each layer's ``params`` entry
becomes a view into it; gradients get a second flat buffer laid out the same way. The layers then
become operations: ``Dense`` (with the activation after it fused in, where the kernels support
it) gets the backend's fast operation, every other layer runs its own reference
``forward``/``backward`` and has its gradients copied into the flat buffer. The loss is fast for
softmax cross-entropy and MSE, reference otherwise. The optimizer updates the flat buffer in
place through :meth:`~bpgpu.optimizers.Optimizer.step`.

Before each step the parameters are checked by identity: a parameter replaced from outside
(``set_weights``, a reference-path update, restoring a snapshot) is copied back into its view, and
optimizer state replaced from outside (``load_state_dict``) is copied into its flat buffer.

Row shards (kernel sets with ``shard_count``, i.e. NumPy; see :mod:`bpgpu.kernels._cpu_threads`):
when every layer and the loss have fast operations and the batch is large, the batch splits into
k blocks of rows. Block i runs forward, loss and backward through its own copies of the
operations (sharing the weights) in its own thread, writing its gradient into flat buffer i
(block 0 into the step's own); each block's loss and gradient are divided by the whole batch's
size, so the buffers sum to the batch's gradient and the blocks' losses to its loss. The sum and
the optimizer update then run over k ranges of the flat buffers, again one per thread.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

from ..layers.activations import LeakyReLU, ReLU, Sigmoid, Tanh
from ..layers.dense import Dense

__all__ = ["TrainStep", "FlatList", "KernelSet", "BufferedOp", "LossOp", "cached"]

#: Each parameter starts on a multiple of this many elements, so BLAS and SIMD loads see aligned
#: matrices; the gaps stay zero and every update rule maps zero state and gradient to zero.
ALIGN = 16


def cached(store, n, make):
    """``store[n]``, created with ``make(n)``; keeps the two most recently created sizes."""
    value = store.get(n)
    if value is None:
        if len(store) >= 2:
            del store[next(iter(store))]
        value = store[n] = make(n)
    return value


class BufferedOp:
    """Base of every kernel set's fast operations (Dense, losses): the buffers an operation
    writes are made by ``_make(key)`` once per key (a batch size, or a shape and dtype) and
    reused from step to step; the two most recently made keys are kept (a fit's full batches and
    its last, smaller one)."""

    def __init__(self) -> None:
        self.buffers: dict[Any, Any] = {}

    def buffers_for(self, key: Any) -> Any:
        """The buffers for ``key``, made on first use."""
        return cached(self.buffers, key, self._make)

    def _make(self, key: Any) -> Any:
        raise NotImplementedError


class LossOp(BufferedOp):
    """Base of the fast loss operations: ``forward(pred, target, total=None)`` returns the loss
    (0-d) and leaves dL/dpred in ``grad``; ``total``, where a kernel set runs row shards, is the
    whole batch's row count when ``pred`` holds a block of its rows."""

    def __init__(self) -> None:
        super().__init__()
        self.grad: Any = None


class KernelSet(Protocol):
    """What :class:`TrainStep` asks of one backend's kernels.

    Every kernel set gives ``name``, ``activations`` (the activation names its Dense operation
    fuses), ``features`` (engine requirements it serves, see :mod:`bpgpu._engine`), ``loss_ops``
    (loss class -> the class of its fast operation) and the methods below. Kernel sets that can
    run row shards also give ``shard_count(rows, parameters)``, ``one_blas_thread()``,
    ``run_parallel(jobs)`` and ``accumulate(dst, src)`` (dst += src), optionally
    ``shard_products()`` (what runs the shards' products, for the engine's reason), and loss
    operations taking the whole batch's row count as a third argument; the others leave
    ``shard_count`` None.
    Subclassing this Protocol inherits :meth:`view` and :meth:`loss_op`.
    """

    name: str
    activations: tuple[str, ...]
    features: frozenset[str] = frozenset()
    loss_ops: dict[type, type] = {}
    shard_count: Callable[[int, int], int] | None = None

    def zeros(self, n: int, dtype: Any) -> Any:
        """A zeroed 1-D buffer of ``n`` elements."""
        ...

    def copy(self, dst: Any, src: Any) -> None:
        """dst[...] = src."""
        ...

    def dense_op(self, layer: Any, act: tuple[str, float] | None, W: Any, dW: Any, b: Any,
                 db: Any, joint: tuple[Any, Any] | None, primary: bool) -> Any:
        """The fast operation of ``Dense`` ``layer`` followed by activation ``act``."""
        ...

    def link(self, ops: list[Any], loss_op: Any) -> None:
        """Chain adjacent operations once they are all built (``loss_op`` may be None)."""
        ...

    def update_rule(self, optimizer: Any) -> Callable[..., None] | None:
        """``rule(optimizer, lr, p, g, state, work)`` updating flat buffers in place, or None.
        Kernel sets that run row shards also take ``jobs=k`` (the rule runs on one range while
        k range jobs run at once) and ``partials``: the same range of each other shard's partial
        gradient, added into ``g`` before the rule reads it (g keeps the sum)."""
        ...

    def clip(self, optimizer: Any, g: Any, work: Callable[..., Any]) -> Any:
        """The flat gradient clipped as ``optimizer`` asks (``g`` itself without clipping)."""
        ...

    @staticmethod
    def view(flat: Any, offset: int, shape: tuple[int, ...]) -> Any:
        """The ``shape``-d view of the 1-D buffer ``flat`` starting at element ``offset``."""
        return flat[offset:offset + math.prod(shape)].reshape(shape)

    def step_context(self) -> contextlib.AbstractContextManager[Any]:
        """The context the training step runs in (the NumPy kernels flush subnormals to zero,
        :mod:`bpgpu.kernels._denormals`); by default none."""
        return contextlib.nullcontext()

    def loss_op(self, loss: Any) -> Any:
        """A fast operation for ``loss`` (exact class match), or None: the reference loss runs."""
        op = self.loss_ops.get(type(loss))
        return op() if op is not None else None


class FlatList(list):
    """Parameter (or gradient) views into one flat buffer, in ``Network._slots`` order.

    ``fast_update``: None, or ``f(optimizer, lr)`` that updates the whole buffer in place;
    :meth:`Optimizer.step <bpgpu.optimizers.Optimizer.step>` calls it instead of its reference rule.
    """

    fast_update = None


def _activation(layer, supported):
    """``(name, slope)`` of an activation layer the kernels can fuse into Dense, else None."""
    kind = type(layer)
    if kind is ReLU and "relu" in supported:
        return "relu", 0.0
    if kind is LeakyReLU and "leaky_relu" in supported and 0.0 <= layer.negative_slope <= 1.0:
        return "leaky_relu", layer.negative_slope
    if kind is Tanh and "tanh" in supported:
        return "tanh", 0.0
    if kind is Sigmoid and "sigmoid" in supported:
        return "sigmoid", 0.0
    return None


class _LayerOp:
    """A layer without a fast version: its own forward/backward, gradients copied to the flat
    buffer. ``training``: the mode its forward runs in (False in the inference operations)."""

    def __init__(self, kernels, layer, grad_views, training=True):
        self.kernels, self.layer, self.grad_views = kernels, layer, grad_views
        self.training = training

    def forward(self, x):
        return self.layer.forward(x, training=self.training)

    def backward(self, dy):
        dx = self.layer.backward(dy)
        copy = self.kernels.copy
        for sub, key, view in self.grad_views:
            copy(view, sub.grads[key])
        return dx


class _LossOp:
    """A loss without a fast version: its own forward/backward."""

    def __init__(self, loss):
        self.loss = loss
        self.grad = None

    def forward(self, out, target):
        value = self.loss.forward(out, target)
        self.grad = self.loss.backward()
        return value


class TrainStep:
    """Forward, loss, backward and update of one network on flat buffers (module docstring).

    Driven by :class:`~bpgpu._engine.FastEngine`: :meth:`compute` runs forward, loss and backward
    and leaves the gradient in the flat buffer(s); :meth:`summed_gradients` gives that gradient as
    one buffer (for gradient hooks); :meth:`finish` runs (or skips) the update. :meth:`forward`
    and :meth:`inference_loss` serve inference with operations and buffers of their own.
    """

    def __init__(self, net, structure, kernels):
        self.net, self.structure, self.kernels = net, structure, kernels
        slots = structure.slots
        self.shapes = [tuple(layer.params[key].shape) for layer, key in slots]
        self.offsets, total, previous = [], 0, None
        for (layer, _), shape in zip(slots, self.shapes, strict=True):
            if layer is not previous:  # a layer's parameters are adjacent, each layer aligned
                total = -(-total // ALIGN) * ALIGN
                previous = layer
            self.offsets.append(total)
            total += math.prod(shape)
        self.size = -(-total // ALIGN) * ALIGN
        self.flat_params = kernels.zeros(self.size, net.dtype)
        self.flat_grads = kernels.zeros(self.size, net.dtype)
        self.params = FlatList(self._views(self.flat_params))
        self.grads = FlatList(self._views(self.flat_grads))
        self.sync_params()
        self.ops = self._build_ops(self.flat_grads, primary=True)
        self.loss_op = kernels.loss_op(net.loss) or _LossOp(net.loss)
        kernels.link(self.ops, self.loss_op)
        self.shardable = kernels.shard_count is not None and not isinstance(
            self.loss_op, _LossOp) and not any(isinstance(op, _LayerOp) for op in self.ops)
        self.parameter_count = sum(math.prod(shape) for shape in self.shapes)
        self._shards = [(self.ops, self.loss_op, self.flat_grads)]  # block i's operations
        self._split = 1         # threads sharing the pending update (row shards of the step)
        self._unsummed = False  # shards 1.._split-1 still hold partial gradients
        self._inference = None  # (operations, loss operation) of forward/inference_loss
        self._owner = None      # the optimizer whose state lives in self._state
        self._state = {}        # state name -> (flat buffer, views)
        self._work = {}         # scratch buffers of the update rules, by name
        self._rule = (None, None)

    def describe(self):
        """What runs fast and what does not, in a few words (the fast engine's reason)."""
        slow = sorted({type(op.layer).__name__ for op in self.ops if isinstance(op, _LayerOp)})
        dense = [op for op in self.ops if not isinstance(op, _LayerOp)]
        fused = sum(op.act is not None for op in dense)
        loss = type(self.net.loss).__name__
        rule = self.kernels.update_rule(self.net.optimizer) is not None
        parts = [f"{self.kernels.name} kernels",
                 f"{len(dense)} Dense operation(s), {fused} with the activation fused"]
        if slow:
            parts.append(f"reference layers {', '.join(slow)}")
        parts.append(f"{'fast' if not isinstance(self.loss_op, _LossOp) else 'reference'} "
                     f"{loss}")
        update = f"{'flat' if rule else 'reference'} {type(self.net.optimizer).__name__} update"
        note = getattr(self.kernels, "update_note", None)
        parts.append(f"{update} ({note()})" if rule and note is not None else update)
        products = getattr(self.kernels, "shard_products", None)
        if self.shardable and products is not None:
            parts.append(f"row-shard products: {products()}")
        return "; ".join(parts)

    def _views(self, flat):
        view = self.kernels.view
        return [view(flat, o, s) for o, s in zip(self.offsets, self.shapes, strict=True)]

    def _build_ops(self, flat_grads, primary, training=True):
        """The operations of every layer, writing gradients into ``flat_grads``. Only the primary
        set publishes its gradients in the layers' ``grads`` and adds L2 terms; the others serve
        row shards 1..k-1 (networks of fast operations only) or inference (``training`` False:
        forward only)."""
        structure, kernels = self.structure, self.kernels
        grads = self._views(flat_grads)
        index = {(id(layer), key): i for i, (layer, key) in enumerate(structure.slots)}
        ops, layers, i = [], structure.layers, 0
        while i < len(layers):
            layer = layers[i]
            if type(layer) is Dense:
                act = _activation(layers[i + 1], kernels.activations) \
                    if i + 1 < len(layers) else None
                iw = index[(id(layer), "W")]
                ib = index.get((id(layer), "b"))
                joint = None  # W with b as one more row: (in + 1, out), when b follows W
                if ib is not None and self.offsets[ib] == self.offsets[iw] + layer.in_features \
                        * layer.out_features:
                    shape = (layer.in_features + 1, layer.out_features)
                    joint = (kernels.view(self.flat_params, self.offsets[iw], shape),
                             kernels.view(flat_grads, self.offsets[iw], shape))
                ops.append(kernels.dense_op(
                    layer, act, self.params[iw], grads[iw],
                    None if ib is None else self.params[ib], None if ib is None else grads[ib],
                    joint, primary))
                i += 2 if act is not None else 1
                continue
            grad_views = [(sub, key, grads[index[(id(sub), key)]])
                          for sub in layer.walk() for key in sub.params]
            ops.append(_LayerOp(kernels, layer, grad_views, training))
            i += 1
        return ops

    # -- keeping the views and the network in step -----------------------------------------------
    def sync_params(self):
        """Point every parameter slot at its view, copying in values replaced from outside."""
        copy = self.kernels.copy
        for (layer, key), view in zip(self.structure.slots, self.params, strict=True):
            value = layer.params[key]
            if value is not view:
                copy(view, value)
                layer.params[key] = view

    def _flat_state(self, optimizer, name):
        """The flat buffer holding ``optimizer.state[name]``, (re)packed when it was replaced."""
        current = optimizer.state[name]
        entry = self._state.get(name)
        if entry is None or len(current) != len(entry[1]) \
                or any(a is not b for a, b in zip(current, entry[1], strict=True)):
            flat = self.kernels.zeros(self.size, self.net.dtype) if entry is None else entry[0]
            views = self._views(flat)
            for view, value in zip(views, current, strict=True):
                if value is not view:
                    self.kernels.copy(view, value)
            optimizer.state[name] = list(views)
            entry = self._state[name] = (flat, views)
        return entry[0]

    def work(self, name, size=None):
        """A scratch buffer of ``size`` elements (default: the flat parameters' size), allocated
        on first use."""
        size = self.size if size is None else size
        buf = self._work.get(name)
        if buf is None or buf.shape[0] < size:
            buf = self._work[name] = self.kernels.zeros(size, self.net.dtype)
        return buf

    # -- inference ----------------------------------------------------------------------------------
    def _inference_ops(self):
        if self._inference is None:
            ops = self._build_ops(self.flat_grads, primary=False, training=False)
            self.kernels.link(ops, None)
            self._inference = (ops, self.kernels.loss_op(self.net.loss) or _LossOp(self.net.loss))
        return self._inference

    def forward(self, x, training=False):
        """The network's output for the device batch ``x`` through the fast operations (the
        inference set unless ``training``): a buffer reused by the next call of the same size."""
        self.sync_params()
        ops = self.ops if training else self._inference_ops()[0]
        for op in ops:
            x = op.forward(x)
        return x

    def inference_loss(self, out, y):
        """The loss of ``out`` against ``y`` (no penalties) through the inference loss operation."""
        return self._inference_ops()[1].forward(out, y)

    # -- the step ---------------------------------------------------------------------------------
    def compute(self, xb, yb, output=False):
        """Forward, loss (penalties included) and backward on device arrays, the gradient left in
        the flat buffer(s) for :meth:`finish`. Returns ``(loss, out)``: the loss 0-d on the
        device, ``out`` the batch's output when ``output`` (else None)."""
        self.sync_params()
        k = self.kernels.shard_count(xb.shape[0], self.parameter_count) if self.shardable else 1
        if k > 1:
            with self.kernels.one_blas_thread():
                return self._sharded_compute(xb, yb, k, output)
        x = xb
        for op in self.ops:
            x = op.forward(x)
        value = self.structure.penalized_loss(self.loss_op.forward(x, yb))
        dy = self.loss_op.grad
        for op in reversed(self.ops):
            dy = op.backward(dy)
        return value, (x if output else None)

    def summed_gradients(self):
        """The step's whole gradient in the flat gradient buffer (row shards summed into it)."""
        if self._unsummed:
            self._sum_shards(self._ranges(self._split))
        return self.flat_grads

    def finish(self, update=True):
        """The optimizer update after :meth:`compute` (skipped when ``update`` is False)."""
        try:
            if update:
                if self._split > 1:
                    with self.kernels.one_blas_thread():
                        self._update()
                else:
                    self._update()
        finally:
            self._split, self._unsummed = 1, False

    # -- row shards (module docstring) ------------------------------------------------------------
    def _sharded_compute(self, xb, yb, k, output):
        while len(self._shards) < k:
            flat_grads = self.kernels.zeros(self.size, self.net.dtype)
            ops = self._build_ops(flat_grads, primary=False)
            loss_op = self.kernels.loss_op(self.net.loss)
            self.kernels.link(ops, loss_op)
            self._shards.append((ops, loss_op, flat_grads))
        n = xb.shape[0]
        cuts = [n * i // k for i in range(k + 1)]
        results = self.kernels.run_parallel([
            functools.partial(_block_step, ops, loss_op, xb[a:b], yb[a:b], n)
            # the first k of the shards made so far (an earlier step may have made more)
            for (ops, loss_op, _), a, b in zip(self._shards, cuts, cuts[1:], strict=False)])
        values = [value for value, _ in results]
        value = self.structure.penalized_loss(sum(values[1:], values[0]))
        self._split, self._unsummed = k, True
        out = self.net.backend.xp.concat([out for _, out in results]) if output else None
        return value, out

    def _sum_shards(self, ranges):
        """Add the gradients of row shards 1..k-1 into the step's flat gradient, one range per
        thread."""
        partials = [flat for _, _, flat in self._shards[1:self._split]]
        self.kernels.run_parallel([
            functools.partial(_sum_into, self.kernels.accumulate, self.flat_grads[a:b],
                              [flat[a:b] for flat in partials]) for a, b in ranges])
        self._unsummed = False

    def _ranges(self, k):
        """About k consecutive ranges covering the flat buffers, cut at multiples of 4096."""
        length = -(-self.size // (4096 * k)) * 4096
        return [(a, min(a + length, self.size)) for a in range(0, self.size, length)]

    def _range_work(self, j, n):
        """``work`` for range j of n elements: scratch buffers of its own."""
        def work(name, size=None):
            size = n if size is None else size
            return self.work(f"{name} [range {j}]", size)[:size]
        return work

    def apply_gradients(self):
        """The update alone, from the gradients in the layers' ``grads`` (after a reference
        backward pass)."""
        self.sync_params()
        copy = self.kernels.copy
        for (layer, key), view in zip(self.structure.slots, self.grads, strict=True):
            value = layer.grads[key]
            if value is not view:
                copy(view, value)
        self._update()

    def _update(self):
        optimizer = self.net.optimizer
        if self._rule[0] is not optimizer:
            self._rule = (optimizer, self.kernels.update_rule(optimizer))
        if self._unsummed and self._rule[1] is None:
            self._sum_shards(self._ranges(self._split))  # the reference rule reads self.grads
        self.params.fast_update = None if self._rule[1] is None else self._fast_update
        new = optimizer.step(self.params, self.grads)
        if new is not self.params:  # reference rule: copy the new values into the views
            copy = self.kernels.copy
            for view, value in zip(self.params, new, strict=True):
                if value is not view:
                    copy(view, value)

    def _fast_update(self, optimizer, lr):
        if optimizer is not self._owner:
            self._owner, self._state = optimizer, {}
        state = {name: self._flat_state(optimizer, name) for name in list(optimizer.state)}
        rule = self._rule[1]
        if self._split == 1:
            grads = self.kernels.clip(optimizer, self.flat_grads, self.work)
            rule(optimizer, lr, self.flat_params, grads, state, self.work)
            return
        ranges = self._ranges(self._split)
        if self._unsummed and (optimizer.clip_value is not None
                               or optimizer.clip_norm is not None):
            self._sum_shards(ranges)  # the clip reads the whole summed gradient first
        # each range job sums its own range (when still unsummed) as part of updating it
        partials = [flat for _, _, flat in self._shards[1:self._split]] if self._unsummed else []
        grads = self.kernels.clip(optimizer, self.flat_grads, self.work)  # flat_grads if no clip
        self.kernels.run_parallel([
            functools.partial(rule, optimizer, lr, self.flat_params[a:b], grads[a:b],
                              {name: flat[a:b] for name, flat in state.items()},
                              self._range_work(j, b - a), jobs=len(ranges),
                              partials=[flat[a:b] for flat in partials])
            for j, (a, b) in enumerate(ranges)])
        self._unsummed = False


def _block_step(ops, loss_op, x, t, rows):
    """Forward, loss and backward of one block of ``rows`` rows; the block's share of the loss
    and the block's output."""
    for op in ops:
        x = op.forward(x)
    value = loss_op.forward(x, t, rows)
    dy = loss_op.grad
    for op in reversed(ops):
        dy = op.backward(dy)
    return value, x


def _sum_into(accumulate, g, partials):
    """g += every partial (one range of the flat gradient and the same range of each shard's)."""
    for partial in partials:
        accumulate(g, partial)

