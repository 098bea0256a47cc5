"""Optimizers with the update rules and defaults of the same-named ``torch.optim`` classes.

Every optimizer works on flat lists: ``step(params, grads) -> new_params``, where entry i of each
list is one parameter array. Its state (moments, step count) lives in ``self.state`` as lists of
arrays in the same order, created on the first step.

Gradient clipping, applied before the update rule, is shared by all optimizers:
``clip_value=c`` clamps each gradient element to [-c, c] (``torch.nn.utils.clip_grad_value_``);
``clip_norm=c`` rescales all gradients by ``min(1, c / (||g||_2 + 1e-6))``, the norm taken over
every parameter together (``torch.nn.utils.clip_grad_norm_``). With both, values are clamped first.

Learning-rate schedules: ``lr`` may be a :class:`~bpgpu.schedules.Schedule`
(``Adam(lr=CosineAnnealingLR(1e-3, T_max=100))``). The optimizer keeps the schedule's position
``schedule_step`` (starting at 0); :meth:`Optimizer.learning_rate` returns ``lr(schedule_step)``.
The position advances after every ``step`` when the schedule has ``per="batch"``, and at the end
of every epoch of ``Network.fit`` (through :meth:`Optimizer.advance_schedule`) when it has
``per="epoch"`` (the default).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

from ._schedules import Schedule, deserialize_schedule, serialize_schedule
from ._validation import check_bool, check_number
from .registry import get_registry
from .typing import Array, Namespace

__all__ = ["Optimizer", "SGD", "RMSprop", "Adam", "AdamW", "get_optimizer", "OPTIMIZERS",
           "serialize_optimizer", "deserialize_optimizer"]


_OPTIMIZERS = get_registry("optimizer")
_O = TypeVar("_O", bound="Optimizer")


def _check(condition, message):
    if not condition:
        raise ValueError(message)


class Optimizer:
    """Base class: hyperparameter checks, clipping, state bookkeeping.

    Subclasses implement ``_init_state(params)`` and ``_update(i, p, g, lr) -> new p``.
    """

    #: Names of state arrays that can never be negative (second moments); a loaded file whose
    #: values there are negative is refused.
    nonnegative_state: tuple[str, ...] = ()
    xp: Namespace

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _OPTIMIZERS.register(cls)  # every optimizer class can be rebuilt from a file by its name

    def __init__(self, lr: float | Schedule, clip_norm: float | None = None,
                 clip_value: float | None = None) -> None:
        self.lr = lr if isinstance(lr, Schedule) else check_number(lr, "lr", 0.0)
        self.clip_norm = None if clip_norm is None else check_number(clip_norm, "clip_norm", 0.0)
        self.clip_value = None if clip_value is None else check_number(clip_value, "clip_value", 0.0)
        self.xp = None
        self.step_count = 0
        self.schedule_step = 0
        self.state: dict[str, list[Array]] = {}

    def bind(self: _O, backend: Any) -> _O:
        """Compute with ``backend.xp`` (set by the Network that owns the optimizer)."""
        self.xp = backend.xp
        return self

    def learning_rate(self) -> float:
        """The learning rate the next step uses: ``lr``, or ``lr(schedule_step)`` for a schedule."""
        lr = self.lr
        return lr(self.schedule_step) if isinstance(lr, Schedule) else lr

    def advance_schedule(self, unit: str) -> None:
        """Move a schedule with ``per == unit`` (``"epoch"`` or ``"batch"``) one step on."""
        if isinstance(self.lr, Schedule) and self.lr.per == unit:
            self.schedule_step += 1

    def step(self, params: list[Array], grads: list[Array]) -> list[Array]:
        """One update. ``params`` and ``grads``: lists of arrays, same order every call.
        Returns the list of updated parameters.

        Fast path: when ``params`` are views into one flat buffer (a ``bpgpu.kernels`` FlatList
        with ``fast_update`` set), the same rule, clipping included, runs over the whole buffer in
        place and ``params`` itself is returned."""
        if not self.state:
            self.state = self._init_state(params)
        self.step_count += 1
        lr = self.learning_rate()
        self.advance_schedule("batch")
        fast_update = getattr(params, "fast_update", None)
        if fast_update is not None:
            fast_update(self, lr)
            return params
        grads = self.clip(grads)
        return [self._update(i, p, g, lr)
                for i, (p, g) in enumerate(zip(params, grads, strict=True))]

    def clip(self, grads: list[Array]) -> list[Array]:
        """Apply ``clip_value`` then ``clip_norm`` (see the module docstring)."""
        xp = self.xp
        if self.clip_value is not None:
            c = self.clip_value
            grads = [xp.minimum(xp.maximum(g, -c), c) for g in grads]
        if self.clip_norm is not None:
            total = xp.sqrt(sum(xp.sum(g * g) for g in grads))
            scale = xp.minimum(self.clip_norm / (total + 1e-6), 1.0)
            grads = [g * xp.astype(scale, g.dtype) for g in grads]
        return grads

    def _init_state(self, params):
        return {}

    def _zeros(self, params):
        return [self.xp.zeros_like(p) for p in params]

    def _update(self, i, p, g, lr):
        raise NotImplementedError

    # -- serialisation --------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serialisable dict (a schedule as its description)."""
        config = {"lr": serialize_schedule(self.lr) if isinstance(self.lr, Schedule) else self.lr}
        if self.clip_norm is not None:
            config["clip_norm"] = self.clip_norm
        if self.clip_value is not None:
            config["clip_value"] = self.clip_value
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Optimizer:
        """Rebuild from :meth:`get_config`'s output (a described schedule becomes a Schedule)."""
        config = dict(config)
        if isinstance(config.get("lr"), dict):
            config["lr"] = deserialize_schedule(config["lr"])
        return cls(**config)

    def state_dict(self) -> dict[str, Any]:
        """``{"step_count": int, "schedule_step": int, "state": {name: [arrays]}}`` (arrays on
        the backend)."""
        return {"step_count": self.step_count, "schedule_step": self.schedule_step,
                "state": {k: list(v) for k, v in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = int(state["step_count"])
        self.schedule_step = int(state.get("schedule_step", 0))
        self.state = {k: list(v) for k, v in state["state"].items()}

    def __repr__(self):
        config = {**self.get_config(), "lr": self.lr}
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum (``torch.optim.SGD``)::

        g <- g + weight_decay * p
        with momentum mu > 0:  b <- g on the first step, else b <- mu b + (1 - dampening) g;
                               g <- g + mu b (nesterov) or g <- b
        p <- p - lr g

    Defaults: lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False.
    """

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 **clipping):
        super().__init__(lr, **clipping)
        self.momentum = check_number(momentum, "momentum", 0.0)
        self.dampening = check_number(dampening, "dampening", 0.0)
        self.weight_decay = check_number(weight_decay, "weight_decay", 0.0)
        self.nesterov = check_bool(nesterov, "nesterov")
        _check(not nesterov or (self.momentum > 0 and self.dampening == 0),
               "nesterov momentum requires momentum > 0 and dampening = 0")

    def _init_state(self, params):
        return {"momentum_buffer": self._zeros(params)} if self.momentum else {}

    def _update(self, i, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            bufs = self.state["momentum_buffer"]
            if self.step_count == 1:
                buf = g
            else:
                buf = self.momentum * bufs[i] + (1.0 - self.dampening) * g
            bufs[i] = buf
            g = g + self.momentum * buf if self.nesterov else buf
        return p - lr * g

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "dampening": self.dampening,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}


class RMSprop(Optimizer):
    """RMSprop (``torch.optim.RMSprop``)::

        g <- g + weight_decay * p;  v <- alpha v + (1 - alpha) g^2
        centered: a <- alpha a + (1 - alpha) g;  d = sqrt(v - a^2) + eps, else d = sqrt(v) + eps
        momentum mu > 0:  b <- mu b + g / d;  p <- p - lr b,  else p <- p - lr g / d

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False.
    """

    nonnegative_state = ("square_avg",)

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, **clipping):
        super().__init__(lr, **clipping)
        self.alpha = check_number(alpha, "alpha", 0.0, 1.0)
        self.eps = check_number(eps, "eps", 0.0)
        self.weight_decay = check_number(weight_decay, "weight_decay", 0.0)
        self.momentum = check_number(momentum, "momentum", 0.0)
        self.centered = check_bool(centered, "centered")

    def _init_state(self, params):
        state = {"square_avg": self._zeros(params)}
        if self.momentum:
            state["momentum_buffer"] = self._zeros(params)
        if self.centered:
            state["grad_avg"] = self._zeros(params)
        return state

    def _update(self, i, p, g, lr):
        xp, a = self.xp, self.alpha
        if self.weight_decay:
            g = g + self.weight_decay * p
        v = a * self.state["square_avg"][i] + (1.0 - a) * (g * g)
        self.state["square_avg"][i] = v
        if self.centered:
            avg = a * self.state["grad_avg"][i] + (1.0 - a) * g
            self.state["grad_avg"][i] = avg
            denom = xp.sqrt(v - avg * avg) + self.eps
        else:
            denom = xp.sqrt(v) + self.eps
        if self.momentum:
            buf = self.momentum * self.state["momentum_buffer"][i] + g / denom
            self.state["momentum_buffer"][i] = buf
            return p - lr * buf
        return p - lr * (g / denom)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps,
                "weight_decay": self.weight_decay, "momentum": self.momentum,
                "centered": self.centered}


class Adam(Optimizer):
    """Adam (``torch.optim.Adam``), weight decay added to the gradient (L2 style)::

        g <- g + weight_decay * p
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.
    """

    decoupled = False
    nonnegative_state = ("exp_avg_sq",)

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **clipping):
        super().__init__(lr, **clipping)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (check_number(betas[0], "betas[0]", 0.0, 1.0, high_open=True),
                      check_number(betas[1], "betas[1]", 0.0, 1.0, high_open=True))
        self.eps = check_number(eps, "eps", 0.0)
        self.weight_decay = check_number(weight_decay, "weight_decay", 0.0)

    def _init_state(self, params):
        return {"exp_avg": self._zeros(params), "exp_avg_sq": self._zeros(params)}

    def _update(self, i, p, g, lr):
        xp = self.xp
        b1, b2 = self.betas
        t = self.step_count
        if self.weight_decay:
            if self.decoupled:
                p = p * (1.0 - lr * self.weight_decay)
            else:
                g = g + self.weight_decay * p
        m = b1 * self.state["exp_avg"][i] + (1.0 - b1) * g
        v = b2 * self.state["exp_avg_sq"][i] + (1.0 - b2) * (g * g)
        self.state["exp_avg"][i], self.state["exp_avg_sq"][i] = m, v
        step_size = lr / (1.0 - b1 ** t)
        denom = xp.sqrt(v) / math.sqrt(1.0 - b2 ** t) + self.eps
        return p - step_size * (m / denom)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps,
                "weight_decay": self.weight_decay}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "betas" in config:  # JSON stores the pair as a list
            config["betas"] = tuple(config["betas"])
        return super().from_config(config)


class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay.

    p <- p (1 - lr weight_decay), then the Adam update without weight decay in the gradient.

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2.
    """

    decoupled = True

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, **clipping):
        super().__init__(lr, betas, eps, weight_decay, **clipping)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}
_OPTIMIZERS.use_names(OPTIMIZERS)  # the names Network(optimizer=...) accepts; add yours with add_name


def get_optimizer(optimizer: Optimizer | str) -> Optimizer:
    """An optimizer from its name (``"sgd"``, ``"rmsprop"``, ``"adam"``, ``"adamw"``, with default
    hyperparameters) or an Optimizer instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    return _OPTIMIZERS.create(optimizer)


def serialize_optimizer(optimizer: Optimizer) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` describing ``optimizer`` (JSON-serialisable)."""
    return _OPTIMIZERS.serialize(optimizer)


def deserialize_optimizer(spec: dict[str, Any]) -> Optimizer:
    """Rebuild an optimizer from :func:`serialize_optimizer`'s output (any registered class)."""
    return _OPTIMIZERS.deserialize(spec)
