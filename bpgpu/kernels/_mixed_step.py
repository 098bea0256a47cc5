"""The fast mixed-precision step: :class:`~bpgpu.kernels._plan.TrainStep` on float16 data.

It follows :mod:`bpgpu.precision`'s policy place for place; only the way differs:

* **master weights** stay the step's flat float32 buffer, which the optimizer updates as usual.
  A second flat buffer holds their float16 compute copies, made by ONE cast kernel over the
  whole buffer when the masters have changed (after an update, or a value set from outside);
  a skipped step leaves them valid, as the reference's cache does;
* **compute**: the batch is cast to float16, each ``Dense`` (+ activation) runs its GEMMs on
  float16 data (cuBLAS with float32 accumulation) and its element-wise kernels read and write
  float16 while computing in float32 registers; bias gradients are float32 sums;
* **loss**: the fused loss kernel reads the float16 output as float32 (the reference's cast),
  computes the loss in float32 and writes dL/dout times the loss scale S, rounded to float16;
* **unscale and check**: the scaled gradients (float16 from the GEMMs, float32 from the bias
  sums, in two staging buffers laid out like the flat gradient) go through ONE kernel that
  writes the float32 gradient divided by S into the step's flat gradient and raises a device
  flag when any value is inf or NaN. The policy's gradient hook reads that flag (one device
  read) instead of scanning the gradient again, when no hook before it could have changed the
  gradient (:class:`bpgpu._engine.FastEngine`), and skips the update as the reference does;
* the float32 update rules are unchanged.

Only networks whose every layer is a ``Dense`` (each optionally followed by an activation the
kernels fuse) with a loss that has a float16 operation run here; :mod:`bpgpu._engine` sends the
others to the reference engine and says why (:func:`unsupported`).
"""

from __future__ import annotations

from typing import Any

from ..layers.dense import Dense
from ._plan import TrainStep, _activation, cached

__all__ = ["MixedTrainStep", "unsupported"]


def unsupported(structure: Any, loss: Any, kernels: Any) -> str | None:
    """Why the fast mixed step cannot serve this network, or None when it can."""
    if getattr(kernels, "half_loss_ops", None) is None:
        return f"the {kernels.name} kernels have no float16 operations"
    if type(loss) not in kernels.half_loss_ops:
        return f"{type(loss).__name__} has no float16 loss kernel"
    layers, i = structure.layers, 0
    while i < len(layers):
        if type(layers[i]) is not Dense:
            return f"{type(layers[i]).__name__} has no float16 kernel (only Dense + activation)"
        act = _activation(layers[i + 1], kernels.activations) if i + 1 < len(layers) else None
        i += 2 if act is not None else 1
    return None


class MixedTrainStep(TrainStep):
    """A :class:`TrainStep` whose forward and backward passes run on float16 copies (module
    docstring). ``found_inf``: the device flag (int32, shape (1,)) of the last step's check."""

    _half_stale = True  # the float16 copies no longer match the masters

    def __init__(self, net: Any, structure: Any, kernels: Any) -> None:
        self.policy = structure.precision
        self.half_dtype = kernels.cupy.float16
        super().__init__(net, structure, kernels)
        self.flat_half = kernels.zeros(self.size, self.half_dtype)      # compute copies
        self.scaled_half = kernels.zeros(self.size, self.half_dtype)    # GEMM gradients
        self.scaled_float = kernels.zeros(self.size, net.dtype)         # bias gradient sums
        self.found_inf = kernels.zeros(1, kernels.cupy.int32)
        self._inputs: dict[Any, Any] = {}   # batch size -> float16 copy of the batch
        self._outputs: dict[Any, Any] = {}  # output shape -> float32 copy of the output
        self.ops = self._half_ops(self.scaled_half, self.scaled_float)
        self.half_loss: Any = kernels.half_loss_ops[type(net.loss)]()
        self.loss_op = self.half_loss
        self.shardable = False

    def describe(self) -> str:
        return f"mixed float16 compute, float32 masters; {super().describe()}"

    def _half_ops(self, scaled_half: Any, scaled_float: Any) -> list[Any]:
        """One float16 Dense operation per Dense (+ fused activation), on the compute copies."""
        kernels, index = self.kernels, {(id(layer), key): i
                                        for i, (layer, key) in enumerate(self.structure.slots)}
        half, g16, g32 = (self._views(flat) for flat in (self.flat_half, scaled_half,
                                                           scaled_float))
        ops, layers, i = [], self.structure.layers, 0
        while i < len(layers):
            layer = layers[i]
            act = _activation(layers[i + 1], kernels.activations) if i + 1 < len(layers) else None
            iw, ib = index[(id(layer), "W")], index.get((id(layer), "b"))
            ops.append(kernels.half_dense_op(layer, act, half[iw], g16[iw],
                                             None if ib is None else half[ib],
                                             None if ib is None else g32[ib]))
            i += 2 if act is not None else 1
        return ops

    def _build_ops(self, flat_grads: Any, primary: bool, training: bool = True) -> list[Any]:
        # TrainStep.__init__ builds float32 operations; they are replaced by float16 ones above
        return [] if primary else super()._build_ops(flat_grads, primary, training)

    # -- the float16 compute copies ------------------------------------------------------------
    def sync_params(self) -> None:
        if any(layer.params[key] is not view
               for (layer, key), view in zip(self.structure.slots, self.params, strict=True)):
            self._half_stale = True
        super().sync_params()

    def _refresh_half(self) -> None:
        if self._half_stale:
            self.kernels.cast(self.flat_params, self.flat_half)
            self._half_stale = False

    def _update(self) -> None:
        self._half_stale = True
        super()._update()

    def _half_input(self, x: Any) -> Any:
        x16 = cached(self._inputs, x.shape, lambda shape: self.kernels.cupy.empty(
            shape, self.half_dtype))
        self.kernels.cast(x, x16)
        return x16

    def _float_output(self, out: Any) -> Any:
        out32 = cached(self._outputs, out.shape, lambda shape: self.kernels.cupy.empty(
            shape, self.net.dtype))
        self.kernels.cast(out, out32)
        return out32

    # -- inference ------------------------------------------------------------------------------
    def _inference_ops(self) -> Any:
        if self._inference is None:
            # forward only: the staging buffers they are given are never written
            ops = self._half_ops(self.scaled_half, self.scaled_float)
            self._inference = (ops, self.kernels.loss_op(self.net.loss))  # on float32 output
        return self._inference

    def forward(self, x: Any, training: bool = False) -> Any:
        """The float32 output for ``x``, computed in float16 (a reused buffer)."""
        self.sync_params()
        self._refresh_half()
        x = self._half_input(x)
        for op in (self.ops if training else self._inference_ops()[0]):
            x = op.forward(x)
        return self._float_output(x)

    # -- the step -------------------------------------------------------------------------------
    def compute(self, xb: Any, yb: Any, output: bool = False) -> Any:
        """Forward in float16, the loss in float32, the backward pass scaled by
        ``policy.backward_scale()`` (S, or S n_r / G in a data-parallel fit), then the
        unscale-and-check kernel: the float32 unscaled gradient in the flat buffer and the
        inf/NaN flag in ``found_inf``."""
        self.sync_params()
        self._refresh_half()
        scale = self.policy.backward_scale()  # S, times n_r / G in a data-parallel fit
        x = self._half_input(xb)
        for op in self.ops:
            x = op.forward(x)
        self.half_loss.scale = scale
        value = self.structure.penalized_loss(self.half_loss.forward(x, yb))
        dy = self.half_loss.grad
        for op in reversed(self.ops):
            op.scale = scale
            dy = op.backward(dy)
        self.kernels.unscale_check(self.scaled_half, self.scaled_float, self.flat_grads,
                                   1.0 / scale, self.found_inf)
        for (layer, key), view in zip(self.structure.slots, self.grads, strict=True):
            layer.grads[key] = view  # the unscaled float32 gradients
        return value, (self._float_output(x) if output else None)
