"""The learning-rate schedules themselves (documented, and imported by users, as
:mod:`bpgpu.schedules`): this module sits below the callbacks, which use :class:`Schedule`,
while ``bpgpu.schedules`` also re-exports the callback
:class:`~bpgpu.callbacks.ReduceLROnPlateau`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._validation import check_number, check_positive_int, is_real_number
from .registry import get_registry

__all__ = ["Schedule", "StepLR", "ExponentialLR", "CosineAnnealingLR", "LinearWarmup",
           "serialize_schedule", "deserialize_schedule"]

_SCHEDULES = get_registry("schedule")
_UNITS = ("epoch", "batch")


def _positive(value, name, integer=False):
    """``value`` as a float > 0, or with ``integer`` as an int >= 1 (a Python int)."""
    if not integer:
        return check_number(value, name, 0, low_open=True)
    return check_positive_int(value, name)


class Schedule:
    """Base class: ``schedule(t)`` checks ``t`` and returns ``float(self.rate(t))``.

    Args:
        per: ``"epoch"`` (the optimizer's position advances once per epoch of ``fit``) or
            ``"batch"`` (once per optimizer step).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _SCHEDULES.register(cls)  # every schedule class can be rebuilt from a file by its name

    def __init__(self, per: str = "epoch") -> None:
        if per not in _UNITS:
            raise ValueError(f"per must be 'epoch' or 'batch', got {per!r}")
        self.per = per

    def __call__(self, t: int) -> float:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"a schedule is evaluated at integer steps t >= 0, got {t!r}")
        return float(self.rate(int(t)))

    def rate(self, t: int) -> float:
        """The learning rate at step ``t`` (an int >= 0)."""
        raise NotImplementedError(f"{type(self).__name__} must implement rate(t)")

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict."""
        return {"per": self.per}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Schedule:
        """Rebuild from :meth:`get_config`'s output."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None  # type: ignore[assignment]  # equal by configuration, so unhashable


class StepLR(Schedule):
    """lr * gamma ** floor(t / step_size) (``torch.optim.lr_scheduler.StepLR``)."""

    def __init__(self, lr, step_size, gamma=0.1, per="epoch"):
        super().__init__(per)
        self.lr = _positive(lr, "lr")
        self.step_size = _positive(step_size, "step_size", integer=True)
        self.gamma = _positive(gamma, "gamma")

    def rate(self, t):
        return self.lr * self.gamma ** (t // self.step_size)

    def get_config(self):
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma, "per": self.per}


class ExponentialLR(Schedule):
    """lr * gamma ** t (``torch.optim.lr_scheduler.ExponentialLR``)."""

    def __init__(self, lr, gamma, per="epoch"):
        super().__init__(per)
        self.lr = _positive(lr, "lr")
        self.gamma = _positive(gamma, "gamma")

    def rate(self, t):
        return self.lr * self.gamma ** t

    def get_config(self):
        return {"lr": self.lr, "gamma": self.gamma, "per": self.per}


class CosineAnnealingLR(Schedule):
    """eta_min + (lr - eta_min) (1 + cos(pi t / T_max)) / 2
    (``torch.optim.lr_scheduler.CosineAnnealingLR``): lr at t = 0, eta_min at t = T_max."""

    def __init__(self, lr, T_max, eta_min=0.0, per="epoch"):
        super().__init__(per)
        self.lr = _positive(lr, "lr")
        self.T_max = _positive(T_max, "T_max", integer=True)
        if not is_real_number(eta_min) or not 0.0 <= eta_min <= self.lr:
            raise ValueError(f"eta_min must be a number in [0, lr={self.lr}], got {eta_min!r}")
        self.eta_min = float(eta_min)

    def rate(self, t):
        return self.eta_min + (self.lr - self.eta_min) * (1.0 + math.cos(math.pi * t / self.T_max)) / 2.0

    def get_config(self):
        return {"lr": self.lr, "T_max": self.T_max, "eta_min": self.eta_min, "per": self.per}


class LinearWarmup(Schedule):
    """Linear warm-up for ``warmup_steps`` steps, then the schedule ``then`` (or a constant rate).

    With w = warmup_steps, f = start_factor (default 1 / (w + 1)) and base = then(0):
    rate(t) = base (f + (1 - f) t / w) for t < w;  rate(t) = then(t - w) for t >= w.

    ``per`` defaults to ``then.per`` (``"epoch"`` when ``then`` is a number).
    """

    def __init__(self, warmup_steps, then, start_factor=None, per=None):
        self.warmup_steps = _positive(warmup_steps, "warmup_steps", integer=True)
        if isinstance(then, Schedule):
            self.then = then
        else:
            self.then = _Constant(_positive(then, "then (a schedule or a learning rate)"))
        super().__init__(self.then.per if per is None else per)
        if start_factor is None:
            start_factor = 1.0 / (self.warmup_steps + 1)
        if not is_real_number(start_factor) or not 0.0 < start_factor <= 1.0:
            raise ValueError(f"start_factor must be a number in (0, 1], got {start_factor!r}")
        self.start_factor = float(start_factor)

    def rate(self, t):
        w = self.warmup_steps
        if t >= w:
            return self.then(t - w)
        f = self.start_factor
        return self.then(0) * (f + (1.0 - f) * t / w)

    def get_config(self):
        then = self.then.value if isinstance(self.then, _Constant) else serialize_schedule(self.then)
        return {"warmup_steps": self.warmup_steps, "then": then,
                "start_factor": self.start_factor, "per": self.per}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("then"), dict):
            config["then"] = deserialize_schedule(config["then"])
        return cls(**config)


class _Constant(Schedule):
    """A constant rate: what :class:`LinearWarmup` warms up to when ``then`` is a number."""

    def __init__(self, value, per="epoch"):
        super().__init__(per)
        self.value = value

    def rate(self, t):
        return self.value

    def get_config(self):
        return {"value": self.value, "per": self.per}


def serialize_schedule(schedule: Schedule) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` (JSON-serialisable)."""
    return _SCHEDULES.serialize(schedule)


def deserialize_schedule(spec: dict[str, Any]) -> Schedule:
    """Rebuild a schedule from :func:`serialize_schedule`'s output; runs no code from it."""
    return _SCHEDULES.deserialize(spec)

