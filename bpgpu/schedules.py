"""Learning-rate schedules: ``schedule(t)`` is the learning rate of step (or epoch) ``t >= 0``.

Each schedule gives the same sequence ``schedule(0), schedule(1), ...`` as the
``torch.optim.lr_scheduler`` class of the same name called once per step:

* ``StepLR(lr, step_size, gamma=0.1)``:           lr * gamma ** floor(t / step_size)
* ``ExponentialLR(lr, gamma)``:                     lr * gamma ** t
* ``CosineAnnealingLR(lr, T_max, eta_min=0)``:      eta_min + (lr - eta_min) (1 + cos(pi t / T_max)) / 2
* ``LinearWarmup(warmup_steps, then, start_factor=None)``, w = warmup_steps, f = start_factor
  (default 1 / (w + 1)):  then(0) * (f + (1 - f) t / w) for t < w, then(t - w) afterwards.
  With the default f the rate climbs then(0)/(w+1), 2 then(0)/(w+1), ... and reaches then(0)
  at t = w. Torch equivalent: ``SequentialLR([LinearLR(start_factor=f, total_iters=w), then],
  milestones=[w])``.

(CosineAnnealingLR continues past ``T_max`` along the same cosine, rising again, as torch's does.)

``ReduceLROnPlateau(factor, patience, monitor="val_loss")`` depends on measured values, not on
``t``: it is a callback (:class:`bpgpu.callbacks.ReduceLROnPlateau`, also importable from here).

Any optimizer accepts a schedule as its ``lr``: ``Adam(lr=CosineAnnealingLR(1e-3, T_max=100))``.
The optimizer keeps the position ``t``; ``per`` says what advances it: ``"epoch"`` (default, one
step per epoch of :meth:`Network.fit <bpgpu.Network.fit>`) or ``"batch"`` (one step per update).

A schedule of your own subclasses :class:`Schedule`, implements ``rate(t)`` and ``get_config()``,
and is then saved and loaded with the network like the built-in ones (classes register by name).
"""

from ._schedules import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearWarmup,
    Schedule,
    StepLR,
    deserialize_schedule,
    serialize_schedule,
)
from .callbacks import ReduceLROnPlateau

__all__ = ["Schedule", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearWarmup",
           "ReduceLROnPlateau", "serialize_schedule", "deserialize_schedule"]
