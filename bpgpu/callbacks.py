"""Callbacks: code that ``Network.fit`` runs at fixed points of training.

Subclass :class:`Callback` and override any of ``on_train_begin(logs)``, ``on_epoch_begin(epoch,
logs)``, ``on_batch_end(batch, logs)``, ``on_epoch_end(epoch, logs)``, ``on_train_end(logs)``;
``self.network`` is the network being trained. Setting ``self.network.stop_training = True``
stops training at the end of the current batch. Callbacks run in the order given to ``fit``.

``logs`` in ``on_epoch_end``: the epoch's values as Python floats (``loss``, metrics, ``val_*``,
and ``lr`` when the rate changes during training). ``epoch`` is the 0-based epoch counter of the
network (it continues across ``fit`` calls and checkpoints).

Exact resume: a callback whose decisions depend on earlier epochs keeps that memory in
:meth:`Callback.state_dict` (JSON values) and :meth:`Callback.weights_state` (a copy of the
weights, or None). :meth:`Network.save <bpgpu.Network.save>` stores the state of the callbacks of
the last ``fit``; after :func:`bpgpu.load`, the next ``fit`` hands each state back (through
:meth:`Callback.load_state_dict`, after ``on_train_begin``) to the callback at the same position
with the same class, so 5 epochs + save + load + 5 epochs equal 10 epochs in one go.

``logs`` in ``on_batch_end``: ``{"batch": i, "size": n, "loss": loss}`` where ``loss`` is a 0-d
array still on the device: ``float(logs["loss"])`` works but waits for the device, so a
callback that reads it every batch slows GPU training; callbacks that do not override
``on_batch_end`` cost nothing per batch.
"""

import csv
import inspect
import math
import os
import warnings
from typing import Any

from ._schedules import Schedule
from ._snapshot import copy_weights, restore_weights
from ._validation import check_bool, check_number, check_whole, is_real_number
from .registry import get_registry

__all__ = ["Callback", "CallbackList", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler",
           "ReduceLROnPlateau", "TerminateOnNaN", "CSVLogger"]

_CALLBACKS = get_registry("callback")


class Callback:
    """Base class; every hook does nothing. ``rank_zero_only``: in a distributed ``fit``, run on
    rank 0 alone (callbacks that write files); others run on every rank."""

    network: Any = None  # the Network being trained, set by fit before the first hook
    rank_zero_only = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _CALLBACKS.register(cls)  # found by name like every other component

    # -- state for exact resume (see the module docstring) ----------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What this callback remembers between epochs, as JSON values (numbers, strings, None,
        lists, dicts). The base class remembers nothing."""
        return {}

    def weights_state(self) -> Any:
        """A copy of the network's weights this callback holds (from
        ``bpgpu._snapshot.copy_weights``), or None."""
        return None

    def load_state_dict(self, state: dict[str, Any], weights: Any = None) -> None:
        """Take back a state from :meth:`state_dict` (and :meth:`weights_state`)."""

    @classmethod
    def check_state(cls, state: Any) -> None:
        """ValueError unless ``state`` is one :meth:`state_dict` of this class could return;
        run on every state read from a file."""
        if not isinstance(state, dict):
            raise ValueError(f"a callback state must be a dict, got {state!r}")

    def set_network(self, network: Any) -> None:
        self.network = network

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass

    def on_divergence(self, error: Exception) -> bool:
        """Called when the training loss became NaN or infinite (the network already holds the
        weights of the last finite step). Return True to end training cleanly instead of
        raising ``error`` (a :class:`~bpgpu.TrainingDivergedError`)."""
        return False


class CallbackList:
    """Dispatches each hook to every callback, in order."""

    def __init__(self, callbacks, network):
        if callbacks is None:
            callbacks = []
        try:
            items = None if isinstance(callbacks, (Callback, str, bytes)) else list(callbacks)
        except TypeError:
            items = None
        if items is None or not all(isinstance(c, Callback) for c in items):
            raise TypeError("callbacks must be a list of bpgpu.callbacks.Callback objects (or "
                            f"another iterable of them), got {callbacks!r}")
        self.callbacks = items
        for callback in self.callbacks:
            callback.set_network(network)
        self.batch_hooks = [c for c in self.callbacks
                            if type(c).on_batch_end is not Callback.on_batch_end]

    def on_train_begin(self, logs=None):
        for c in self.callbacks:
            c.on_train_begin(logs)

    def restore(self, saved):
        """Hand the states ``saved`` (from a loaded checkpoint: dicts with ``class``, ``state``
        and ``weights``) to the callbacks at the same positions with the same classes; warn
        about the ones that do not match (they start fresh). A fit without callbacks drops the
        states silently."""
        if not self.callbacks:
            return
        mismatched = []
        for i, item in enumerate(saved):
            if i >= len(self.callbacks) or type(self.callbacks[i]).__name__ != item["class"]:
                mismatched.append(f"{i}: {item['class']}")
                continue
            self.callbacks[i].load_state_dict(item["state"], item["weights"])
        if mismatched:
            warnings.warn("the checkpoint holds the state of callbacks this fit does not have at "
                          f"the same position ({', '.join(mismatched)}); they start fresh. Pass "
                          "the same callbacks, in the same order, to resume exactly.",
                          RuntimeWarning, stacklevel=4)

    def on_train_end(self, logs=None):
        for c in self.callbacks:
            c.on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for c in self.callbacks:
            c.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        for c in self.callbacks:
            c.on_epoch_end(epoch, logs)

    def on_batch_end(self, batch, logs=None):
        for c in self.batch_hooks:
            c.on_batch_end(batch, logs)

    def on_divergence(self, error):
        """True when some callback asked for a clean stop (every callback is told)."""
        answers = [bool(c.on_divergence(error)) for c in self.callbacks]
        return any(answers)


def _mode(mode, monitor):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        name = monitor.lower()
        return "max" if ("acc" in name or name.endswith("r2")) else "min"
    return mode


def _check_fields(state, fields):
    """ValueError unless ``state`` is a dict with exactly the keys of ``fields``, each value of
    its kind: ``"count"`` an integer >= 0, ``"epoch"`` an integer >= 0 or None, ``"value"`` a
    float (infinite while nothing was seen)."""
    if not isinstance(state, dict) or set(state) != set(fields):
        raise ValueError(f"expected a dict with the keys {sorted(fields)}, got {state!r}")
    for key, kind in fields.items():
        value = state[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        whole = number and isinstance(value, int) and value >= 0
        ok = {"count": whole, "epoch": whole or value is None, "value": number}[kind]
        if not ok:
            raise ValueError(f"{key} must be {'a number' if kind == 'value' else 'an integer >= 0'}"
                             f"{' or None' if kind == 'epoch' else ''}, got {value!r}")


def _monitored(logs, monitor, who):
    value = (logs or {}).get(monitor)
    if value is None:
        warnings.warn(f"{who}: the monitored value {monitor!r} is not in the logs (available: "
                      f"{', '.join(logs or {}) or 'none'}); pass validation data for 'val_*' "
                      "values or metrics=[...] for metrics", RuntimeWarning, stacklevel=3)
    return value


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Improvement: ``value < best - min_delta`` (mode ``"min"``) or ``value > best + min_delta``
    (``"max"``); ``"auto"`` picks max for accuracies and r2, min otherwise. With
    ``restore_best_weights``, the weights (and buffers) of the best epoch are put back at the end
    of training, whether it stopped early or ran out of epochs.

    Attributes after training: ``best``, ``best_epoch``, ``stopped_epoch`` (None if not stopped).
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, mode="auto",
                 restore_best_weights=False):
        self.monitor = monitor
        self.patience = check_whole(patience, "patience")
        self.min_delta = check_number(min_delta, "min_delta")
        self.mode = _mode(mode, monitor)
        self.restore_best_weights = check_bool(restore_best_weights, "restore_best_weights")

    def on_train_begin(self, logs=None):
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None
        self.best_weights = None
        self.stopped_epoch = None

    _STATE = {"wait": "count", "best": "value", "best_epoch": "epoch", "stopped_epoch": "epoch"}

    def state_dict(self):
        return {"wait": self.wait, "best": self.best, "best_epoch": self.best_epoch,
                "stopped_epoch": self.stopped_epoch}

    def weights_state(self):
        return self.best_weights

    def load_state_dict(self, state, weights=None):
        self.check_state(state)
        self.wait, self.best = state["wait"], float(state["best"])
        self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
        self.best_weights = weights

    @classmethod
    def check_state(cls, state):
        _check_fields(state, cls._STATE)

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if value is None:
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = copy_weights(self.network)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.network.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            restore_weights(self.network, self.best_weights)


class ModelCheckpoint(Callback):
    """Save the network (full training state, see :meth:`Network.save`) after every epoch, or
    only when ``monitor`` improved (``save_best_only``).

    ``path`` may hold ``str.format`` fields: ``{epoch}`` (epochs completed, so the file of the
    first epoch has epoch 1) and any log value, e.g. ``"ckpt-{epoch:03d}-{val_loss:.4f}.npz"``.
    In a distributed ``fit`` only rank 0 writes.
    """

    rank_zero_only = True

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path = os.fspath(path)
        self.monitor = monitor
        self.save_best_only = check_bool(save_best_only, "save_best_only")
        self.mode = _mode(mode, monitor)
        self.best = None

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state, weights=None):
        self.check_state(state)
        self.best = float(state["best"])

    @classmethod
    def check_state(cls, state):
        _check_fields(state, {"best": "value"})

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if value is None:
                return
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        self.network.save(path)


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch from ``schedule``: a
    :class:`~bpgpu.schedules.Schedule`, a function ``f(epoch) -> lr`` or ``f(epoch, lr) -> lr``
    (Keras' form; ``lr`` is the current rate). ``epoch`` is the network's epoch counter.

    The optimizer's ``lr`` must then be a number (use either this callback or a schedule as
    ``lr``, not both)."""

    def __init__(self, schedule):
        if not callable(schedule):
            raise TypeError(f"schedule must be a Schedule or a function, got {schedule!r}")
        self.schedule = schedule
        self._two_args = False
        if not isinstance(schedule, Schedule):
            try:
                params = inspect.signature(schedule).parameters.values()
                positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                               p.POSITIONAL_OR_KEYWORD)]
                self._two_args = len(positional) >= 2
            except (TypeError, ValueError):
                pass

    def on_train_begin(self, logs=None):
        if isinstance(self.network.optimizer.lr, Schedule):
            raise ValueError("LearningRateScheduler sets the optimizer's lr every epoch, but its lr "
                             f"is already a schedule ({self.network.optimizer.lr!r}); use one or "
                             "the other")

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.network.optimizer
        if self._two_args:
            lr = self.schedule(epoch, optimizer.lr)
        else:
            lr = self.schedule(epoch)
        if not is_real_number(lr) or not math.isfinite(lr) or lr < 0:
            raise ValueError(f"LearningRateScheduler: the schedule returned {lr!r} for epoch "
                             f"{epoch}; expected a finite number >= 0")
        optimizer.lr = float(lr)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` once ``monitor`` has not improved for more than
    ``patience`` epochs, as ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (same defaults and
    rules) called with the monitored value at the end of each epoch:

    improvement (mode min): value < best (1 - threshold) (``threshold_mode="rel"``) or
    value < best - threshold (``"abs"``); mode max mirrors it. After more than ``patience`` bad
    epochs: lr <- max(lr factor, min_lr) (skipped if that changes lr by eps or less), then
    ``cooldown`` epochs during which bad epochs are not counted.

    The optimizer's ``lr`` must be a number (not a schedule). ``mode="auto"`` picks max for
    accuracies and r2, min otherwise.
    """

    def __init__(self, factor=0.1, patience=10, monitor="val_loss", mode="auto", threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0.0, eps=1e-8):
        if not is_real_number(factor) or not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be a number in (0, 1), got {factor!r}")
        patience, cooldown = check_whole(patience, "patience"), check_whole(cooldown, "cooldown")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor, self.patience, self.monitor = float(factor), patience, monitor
        self.mode = _mode(mode, monitor)
        self.threshold = check_number(threshold, "threshold")
        self.threshold_mode, self.cooldown = threshold_mode, cooldown
        self.min_lr = check_number(min_lr, "min_lr")
        self.eps = check_number(eps, "eps")
        self.reset()

    def reset(self):
        """Forget the best value and the counters."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    _STATE = {"best": "value", "num_bad_epochs": "count", "cooldown_counter": "count"}

    def state_dict(self):
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state, weights=None):
        self.check_state(state)
        self.best = float(state["best"])
        self.num_bad_epochs, self.cooldown_counter = state["num_bad_epochs"], state["cooldown_counter"]

    @classmethod
    def check_state(cls, state):
        _check_fields(state, cls._STATE)

    def on_train_begin(self, logs=None):
        if isinstance(self.network.optimizer.lr, Schedule):
            raise ValueError("ReduceLROnPlateau changes the optimizer's lr, but its lr is a "
                             f"schedule ({self.network.optimizer.lr!r}); use a number as lr")

    def _improved(self, value):
        if self.mode == "min":
            limit = self.best * (1.0 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < limit
        limit = self.best * (1.0 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > limit

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if value is not None:
            self.step(value)

    def step(self, value):
        """Account for one epoch whose monitored value is ``value`` (a float)."""
        if self._improved(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            optimizer = self.network.optimizer
            new = max(optimizer.lr * self.factor, self.min_lr)
            if optimizer.lr - new > self.eps:
                optimizer.lr = new
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0


class TerminateOnNaN(Callback):
    """Turn a diverged loss (NaN or infinite) into a clean stop: ``fit`` returns the history so
    far instead of raising :class:`~bpgpu.TrainingDivergedError`, and the network keeps the
    weights of the last finite step. The error is kept in ``self.error``. (Detection happens at
    the end of each epoch, without reading the loss from the device every batch.)"""

    def __init__(self):
        self.error = None

    def on_divergence(self, error):
        self.error = error
        return True


class CSVLogger(Callback):
    """Write one row per epoch to ``path``: ``epoch`` then the logs (columns fixed by the first
    epoch), separated by ``separator``. ``append=True`` continues an existing file. In a
    distributed ``fit`` only rank 0 writes."""

    rank_zero_only = True

    def __init__(self, path, separator=",", append=False):
        self.path = os.fspath(path)
        self.separator = separator
        self.append = check_bool(append, "append")
        self._file: Any = None  # the open CSV file and its writer, while training
        self._writer: Any = None
        self._keys = None

    def on_train_begin(self, logs=None):
        resume = self.append and os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        self._keys = None
        if resume:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f, delimiter=self.separator), None)
            self._keys = header[1:] if header else None
        self._file = open(self.path, "a" if resume else "w", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self._keys is None:
            self._keys = list(logs)
            self._writer.writerow(["epoch", *self._keys])
        self._writer.writerow([epoch, *(repr(float(logs[k])) if k in logs else ""
                                        for k in self._keys)])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None
