"""Engines run a Network's steps; :func:`select_engine` is the one place that chooses one.

An engine serves one :class:`~bpgpu.Network` through its :class:`~bpgpu._structure.NetworkStructure`
and its public ``loss``, ``optimizer``, ``backend``, ``dtype`` and ``gradient_hooks``. Two exist:

* :class:`ReferenceEngine`: the layer, loss and optimizer code written against the Array API
  standard; runs on every backend and defines the numbers.
* :class:`FastEngine`: the backend's kernel set (:mod:`bpgpu.kernels`) driving a
  :class:`~bpgpu.kernels._plan.TrainStep`: flat parameter and gradient buffers, fused operations,
  buffers reused from step to step. Same numbers to rounding.

``net.engine`` is the engine serving a network now; ``net.engine.fast`` and ``net.engine.reason``
say which and why (``summary()`` prints them). The choice is remade when the layers, the loss,
``net.fast`` or ``net.engine_requirements`` change.

Every engine offers:

* ``forward(x, training=False)``: the output for a device batch. A fast engine returns a buffer
  it reuses: read (or copy) it before the next call.
* ``loss(out, y, weight=None)``: the loss of ``out`` against targets ``y``, layer penalties
  included; ``weight``: per-sample weights (N,) for the weighted mean (:mod:`bpgpu.losses`).
* ``train_step(x, y, output=False, weight=None)``: forward, loss, backward, gradient hooks,
  update; returns the loss before the update (0-d, on the device), or ``(loss, out)`` with
  ``output=True`` so metrics can read the batch's output without a second forward pass.
  ``weight`` needs the ``"sample weights"`` requirement (the reference engine).
* ``apply_update()``: the optimizer update from the gradients in the layers' ``grads`` (after a
  reference ``backward``, the step-level public API).

Hooks for features built on top of the step:

* ``net.gradient_hooks``: a list of callables ``hook(flat_grads, rows) -> bool | None``, run in
  order after the backward pass and before the update. ``flat_grads`` is ONE 1-D backend array
  holding every gradient in slot order (on the fast path the step's own flat buffer, with zero
  gaps between layers; on the reference path the gradients packed into a fresh buffer and
  unpacked into the layers' ``grads`` afterwards), so a hook may rescale or all-reduce it in
  place in one call; ``rows`` is the batch's row count. A hook returning False skips this
  step's update (a mixed-precision skip-step on non-finite gradients); the optimizer's state and
  counters are then untouched.
* ``net.engine_requirements``: a set of feature names (e.g. ``"mixed precision"``,
  ``"sample weights"``) the network's steps need. A kernel set lists what it supports in
  ``features``; a requirement it lacks selects the reference engine with the reason
  ``"reference: <requirement> has no fast version"``.

Mixed precision is fast on CuPy (:mod:`bpgpu.kernels._mixed_step`) when every layer is a
``Dense`` (each optionally followed by an activation the kernels fuse) and the loss has a
float16 kernel; otherwise the reason reads "reference: mixed precision runs fast only on
float16 kernels, and <what is missing>". NumPy's kernel set has no mixed-precision step.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ._structure import NetworkStructure

__all__ = ["Engine", "ReferenceEngine", "FastEngine", "select_engine", "reference_forced",
           "run_forward", "run_backward", "GradientHook"]

#: ``hook(flat_grads, rows) -> bool | None``; False skips the update (module docstring).
GradientHook = Callable[[Any, int], "bool | None"]


def reference_forced() -> bool:
    """True when the environment variable ``BPGPU_REFERENCE`` asks for the reference path."""
    return os.environ.get("BPGPU_REFERENCE", "").strip() not in ("", "0")


def run_forward(structure: NetworkStructure, x: Any, training: bool) -> Any:
    """The reference forward pass through every top-level layer (in 16 bits under a mixed
    precision policy, which returns float32)."""
    if structure.precision is not None:
        return structure.precision.forward(structure, x, training)
    for layer in structure.layers:
        x = layer.forward(x, training=training)
    return x


def run_backward(structure: NetworkStructure, loss: Any) -> Any:
    """The reference backward pass from the loss's gradient, filling each layer's ``grads``;
    returns dL/dX (None when the first layer skips it). With a fused Sigmoid + BCE the chain
    starts below the Sigmoid. A mixed precision policy runs the chain with the loss scaled and
    leaves unscaled float32 gradients."""
    if structure.fused_sigmoid_bce:
        dy, layers = loss.backward_through_sigmoid(), structure.layers[:-1]
    else:
        dy, layers = loss.backward(), structure.layers
    if structure.precision is not None:
        return structure.precision.backward(structure, dy, layers)
    for layer in reversed(layers):
        dy = layer.backward(dy)
    return dy


class Engine:
    """What every engine offers (module docstring). ``fast``: True for a kernel-set engine;
    ``reason``: why this engine serves the network, as shown by ``summary()``."""

    fast = False

    def __init__(self, net: Any, structure: NetworkStructure, reason: str) -> None:
        self.net, self.structure = net, structure
        self._reason = reason

    @property
    def reason(self) -> str:
        return self._reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"

    def forward(self, x: Any, training: bool = False) -> Any:
        return run_forward(self.structure, x, training)

    def loss(self, out: Any, y: Any, weight: Any = None) -> Any:
        loss = self.net.loss
        return self.structure.penalized_loss(
            loss.forward(out, y) if weight is None else loss.forward(out, y, weight))

    def train_step(self, x: Any, y: Any, output: bool = False, weight: Any = None) -> Any:
        raise NotImplementedError

    def apply_update(self) -> None:
        raise NotImplementedError

    def _hooks_allow_update(self, flat_grads: Any, rows: int) -> bool:
        """Run ``net.gradient_hooks`` on the flat gradient; False when one asks to skip."""
        allow = True
        for hook in self.net.gradient_hooks:
            if hook(flat_grads, rows) is False:
                allow = False
        return allow


class ReferenceEngine(Engine):
    """The reference chain: layer by layer, then ``optimizer.step`` on lists of arrays."""

    def train_step(self, x: Any, y: Any, output: bool = False, weight: Any = None) -> Any:
        out = self.forward(x, True)
        value = self.loss(out, y, weight)
        run_backward(self.structure, self.net.loss)
        if not self.net.gradient_hooks or self._hooked_gradients(x.shape[0]):
            self.apply_update()
        return (value, out) if output else value

    def _hooked_gradients(self, rows: int) -> bool:
        """Pack the gradients into one buffer, run the hooks on it, unpack it into the layers'
        ``grads`` (as views); the hooks' verdict."""
        xp = self.net.backend.xp
        slots = self.structure.slots
        grads = self.structure.gradients()
        flat = xp.concat([xp.reshape(g, (-1,)) for g in grads])
        allow = self._hooks_allow_update(flat, rows)
        start = 0
        for (layer, key), g in zip(slots, grads, strict=True):
            size = 1
            for n in g.shape:
                size *= n
            layer.grads[key] = xp.reshape(flat[start:start + size], tuple(g.shape))
            start += size
        return allow

    def apply_update(self) -> None:
        slots = self.structure.slots
        new = self.net.optimizer.step(self.structure.parameters(), self.structure.gradients())
        for (layer, key), value in zip(slots, new, strict=True):
            layer.params[key] = value


class FastEngine(Engine):
    """A kernel set's :class:`~bpgpu.kernels._plan.TrainStep` (``plan``) runs the step, the
    forward pass of ``predict``/``evaluate``/metrics and their loss in reused buffers."""

    fast = True

    def __init__(self, net: Any, structure: NetworkStructure, plan: Any) -> None:
        super().__init__(net, structure, "")
        self.plan = plan
        self._graphs: Any = None  # CUDA graphs of the step (net.cuda_graphs), made on first use

    @property
    def reason(self) -> str:
        graphs = self.graphs
        return f"fast: {self.plan.describe()}" + (f"; {graphs.status}" if graphs else "")

    @property
    def graphs(self) -> Any:
        """The :class:`~bpgpu.kernels._cuda_graphs.GraphedSteps` capturing the step when
        ``net.cuda_graphs`` is set (CuPy), else None."""
        if not getattr(self.net, "cuda_graphs", False):
            return None
        if self._graphs is None:
            from .kernels._cuda_graphs import GraphedSteps

            self._graphs = GraphedSteps(self.net, self.plan)
        return self._graphs

    def forward(self, x: Any, training: bool = False) -> Any:
        return self.plan.forward(x, training)

    def loss(self, out: Any, y: Any, weight: Any = None) -> Any:
        if weight is not None:  # the fused loss kernels are unweighted: the reference loss
            return super().loss(out, y, weight)
        return self.structure.penalized_loss(self.plan.inference_loss(out, y))

    def train_step(self, x: Any, y: Any, output: bool = False, weight: Any = None) -> Any:
        if weight is not None:
            raise RuntimeError("the fast engine has no weighted step; add 'sample weights' to "
                               "net.engine_requirements to select the reference engine")
        graphs = self.graphs
        if graphs is not None and not output and not self.net.gradient_hooks:
            return graphs.train_step(x, y)
        with self.plan.kernels.step_context():  # NumPy: subnormals flushed to zero
            value, out = self.plan.compute(x, y, output)
            if self.net.gradient_hooks:
                self._offer_kernel_check()
                allow = self._hooks_allow_update(self.plan.summed_gradients(), x.shape[0])
                self.plan.finish(update=allow)
            else:
                self.plan.finish(update=True)
        return (value, out) if output else value

    def apply_update(self) -> None:
        self.plan.apply_gradients()

    def _offer_kernel_check(self) -> None:
        """A mixed step's unscale kernel has already looked for inf/NaN (``plan.found_inf``):
        the policy's hook may read that flag instead of scanning the gradient, unless another
        hook runs before it (a distributed all-reduce changes the gradient first)."""
        found = getattr(self.plan, "found_inf", None)
        precision = self.net.precision
        if found is not None and self.net.gradient_hooks[0] == precision.gradient_hook:
            precision.use_kernel_check(found)


def _reference_reason(net: Any, structure: NetworkStructure, kernels: Any) -> str | None:
    """Why ``net`` must run on the reference engine, or None when the fast one applies."""
    if not net.fast:
        return ("reference: BPGPU_REFERENCE is set" if reference_forced()
                else "reference: fast=False")
    if kernels is None:
        return f"reference: the {net.backend.name} backend has no fast kernels"
    missing = sorted(set(net.engine_requirements) - set(kernels.features))
    if missing:
        return f"reference: {', '.join(missing)} has no fast version"
    if structure.fused_sigmoid_bce:
        return ("reference: a final Sigmoid with BinaryCrossEntropy (its fused backward has no "
                "fast version; use from_logits=True without the Sigmoid)")
    if structure.precision is not None:
        from .kernels._mixed_step import unsupported

        why = unsupported(structure, net.loss, kernels)
        if why is not None:
            return f"reference: mixed precision runs fast only on float16 kernels, and {why}"
    return None


def select_engine(net: Any) -> Engine:
    """The engine serving ``net`` now, built on first use and cached on the network; rebuilt
    when its structure, loss, ``fast`` flag or ``engine_requirements`` change."""
    structure = net.structure
    cached = net.__dict__.get("_engine_cache")
    if cached is not None:  # checked every step: no allocation on this path
        known, current = cached
        if known[0] is structure and known[1] is net.loss and known[2] == net.fast \
                and known[3] == net.engine_requirements:
            return current
    key = (structure, net.loss, net.fast, frozenset(net.engine_requirements))
    kernels = net.backend.kernels if net.fast else None
    reason = _reference_reason(net, structure, kernels)
    if reason is None:
        from .kernels._mixed_step import MixedTrainStep
        from .kernels._plan import TrainStep

        step = MixedTrainStep if structure.precision is not None else TrainStep
        engine: Engine = FastEngine(net, structure, step(net, structure, kernels))
    else:
        engine = ReferenceEngine(net, structure, reason)
    net._engine_cache = (key, engine)
    return engine
