"""Copies of what a training step changes, to rewind a network (divergence recovery in
:mod:`bpgpu._training`, ``EarlyStopping(restore_best_weights=True)``).

Copies stay on the device: one copy of every parameter, buffer and optimizer state array.
"""

import copy

__all__ = ["copy_weights", "restore_weights", "Snapshot"]


def _copy(xp, a):
    return xp.asarray(a, copy=True)


def copy_weights(net):
    """Device copies of every parameter and buffer (for :func:`restore_weights`)."""
    xp = net.backend.xp
    return ([_copy(xp, layer.params[key]) for layer, key in net.structure.slots],
            [{k: _copy(xp, v) for k, v in layer.buffers.items()} for layer in net.structure.all_layers])


def restore_weights(net, weights):
    """Put back parameters and buffers from :func:`copy_weights` (the copy stays usable)."""
    xp = net.backend.xp
    params, buffers = weights
    for (layer, key), value in zip(net.structure.slots, params, strict=True):
        layer.params[key] = _copy(xp, value)
    for layer, saved in zip(net.structure.all_layers, buffers, strict=True):
        layer.buffers = {k: _copy(xp, v) for k, v in saved.items()}


class Snapshot:
    """Everything a training step changes: weights, buffers, optimizer state, step counters and
    learning rate, the device RNG and the loss scaler (mixed precision); plus the epoch's batch
    order and how many steps it ran."""

    def __init__(self, net, order=None):
        xp = net.backend.xp
        self.weights = copy_weights(net)
        state = net.optimizer.state_dict()
        self.optimizer = {"step_count": state["step_count"],
                          "schedule_step": state.get("schedule_step", 0),
                          "state": {k: [_copy(xp, a) for a in v] for k, v in state["state"].items()}}
        self.lr = net.optimizer.lr
        self.rng = net.backend.rng_state(net.device_rng)
        self.precision = None if net.precision is None else net.precision.state_dict()
        self.order = order
        self.steps = 0

    def restore(self, net):
        xp = net.backend.xp
        restore_weights(net, self.weights)
        net.optimizer.load_state_dict({
            "step_count": self.optimizer["step_count"],
            "schedule_step": self.optimizer["schedule_step"],
            "state": {k: [_copy(xp, a) for a in v] for k, v in self.optimizer["state"].items()}})
        net.optimizer.lr = self.lr
        net.backend.set_rng_state(net.device_rng, copy.deepcopy(self.rng))
        if self.precision is not None:
            net.precision.load_state_dict(self.precision)
