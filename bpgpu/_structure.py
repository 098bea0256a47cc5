"""What the engines (and save, load, snapshots) may know about a Network's layers and loss.

A :class:`NetworkStructure` is built once per network, after its layers are built; it is the whole
internal interface between :class:`~bpgpu.Network` and the code that runs its steps
(:mod:`bpgpu._engine`, :mod:`bpgpu.kernels._plan`), saves and restores it
(:mod:`bpgpu._model_file`) or copies its state (:mod:`bpgpu._snapshot`). Nothing else of the
Network's is read by those modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .layers import Layer, Sigmoid
from .losses import BinaryCrossEntropy, Loss

__all__ = ["NetworkStructure"]


class NetworkStructure:
    """The layers of one network seen by an engine.

    Attributes:
        layers: the network's top-level layers, in order.
        all_layers: every layer, nested ones depth first (``layer.walk()``); buffers (batch
            statistics) are saved and copied in this order.
        slots: ``(layer, key)`` for every learnable parameter, in ``get_weights`` order; an
            engine reads ``layer.params[key]`` and ``layer.grads[key]`` through them.
        penalized: the layers that override :meth:`Layer.penalty` (L2); their terms are added
            to the loss by :meth:`penalized_loss`, the one place that does it.
        fused_sigmoid_bce: True when the last layer is ``Sigmoid`` and the loss is
            ``BinaryCrossEntropy`` on probabilities: the backward pass then starts from
            ``loss.backward_through_sigmoid()`` below the Sigmoid, which is more accurate.
        precision: the network's :class:`~bpgpu.precision.MixedPrecision` policy, or None; when
            set, :func:`~bpgpu._engine.run_forward` and :func:`~bpgpu._engine.run_backward`
            hand the passes to it.
    """

    def __init__(self, layers: Sequence[Layer], loss: Loss, precision: Any = None) -> None:
        self.layers = list(layers)
        self.precision = precision
        self.all_layers = [sub for layer in self.layers for sub in layer.walk()]
        self.slots = [(layer, key) for layer in self.all_layers for key in layer.params]
        self.penalized = [layer for layer in self.all_layers
                          if type(layer).penalty is not Layer.penalty]
        self.fused_sigmoid_bce = (isinstance(self.layers[-1], Sigmoid)
                                  and isinstance(loss, BinaryCrossEntropy)
                                  and not loss.from_logits)

    def penalized_loss(self, value: Any) -> Any:
        """``value`` plus every layer's penalty term (a 0-d array on the backend)."""
        for layer in self.penalized:
            term = layer.penalty()
            if term is not None:
                value = value + term
        return value

    def parameters(self) -> list[Any]:
        """The parameter arrays, in slot order."""
        return [layer.params[key] for layer, key in self.slots]

    def gradients(self) -> list[Any]:
        """The gradient arrays of the last backward pass, in slot order."""
        return [layer.grads[key] for layer, key in self.slots]
