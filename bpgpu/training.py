"""The training loop behind :meth:`Network.fit <bpgpu.Network.fit>`.

One epoch: draw a permutation of the sample indices on the host (``net.shuffle_rng``), move it
to the device once, gather each mini-batch there with ``xp.take``, and run forward, loss,
backward and update. The batch losses (weighted by batch size) and the metrics' sums are added
up on the device and read back together once at the end of the epoch, with a count of
non-finite weights.

Divergence without a read per step: at the start of every epoch the loop copies what a step
changes (weights, buffers, optimizer state and counters, the device RNG state) and keeps the copy
of the previous epoch too. When the epoch's summed loss is NaN or infinite (or a weight is),
it rewinds to the copy and replays the epoch one step at a time, reading each loss, to find the
first step whose loss is not finite; it then puts back the state in which the step before it
ran, i.e. the weights of the last step whose loss was finite (rebuilt from the previous
epoch's copy when the very first step of an epoch fails), and raises
:class:`~bpgpu.TrainingDivergedError` naming that epoch and step. Only a failing epoch pays for
the replay; the price otherwise is one device copy of the state per epoch and memory for two.
Edge cases: if the very first step of a ``fit`` call fails, the weights the call started with
are kept (nothing earlier is held); if every replayed loss is finite (only the float sum
overflowed), training goes on with the sum taken on the host. The replay is exact on NumPy,
torch and array_api_strict; on CuPy, dropout masks drawn after a rewind differ, so the step
found may differ.
"""

import copy
import math
import sys
import time

import numpy as np

from .callbacks import CallbackList, LearningRateScheduler, ReduceLROnPlateau
from .errors import TrainingDivergedError
from .history import History
from .metrics import Accuracy, get_metric
from .schedules import Schedule
from .validation import check_batch_size, check_positive_int

__all__ = ["fit", "evaluate_arrays", "copy_weights", "restore_weights", "Progress"]

#: Smallest chunk used to evaluate validation data (inference needs no small batches).
VALIDATION_CHUNK = 1024


def fit(net, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose=1,
        validation_split=None, metrics=None, callbacks=None, initial_epoch=None):
    """See :meth:`Network.fit <bpgpu.Network.fit>`. Everything is checked before any training
    step, so a rejected call changes nothing."""
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_batch_size(batch_size)
    if verbose not in (0, 1, 2, False, True):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be a fraction in (0, 1), e.g. 0.2, got "
                             f"{validation_split!r}")
    if initial_epoch is not None:
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) \
                or initial_epoch < 0:
            raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
        if epochs <= initial_epoch:
            raise ValueError(f"with initial_epoch={initial_epoch}, epochs is the epoch to stop "
                             f"before (Keras' convention) and must exceed it; got epochs={epochs}")
    train_metrics = _metric_list(metrics, net)
    val_metrics = ([copy.copy(m) for m in train_metrics] if metrics is not None
                   else [Accuracy().bind(net.backend, net.loss)] if net.loss.is_classification
                   else [])
    callback_list = CallbackList(callbacks, net)
    Xd, yd = net._data(X, y)
    n = Xd.shape[0]
    if n == 0:
        raise ValueError("X holds no samples; fit needs at least one")
    validation = None
    if validation_split is not None:
        split = int(math.floor(n * (1.0 - validation_split)))
        if split < 1 or split >= n:
            raise ValueError(f"validation_split={validation_split} of {n} samples leaves {split} for "
                             f"training and {n - split} for validation; both need at least one")
        validation = (Xd[split:, ...], yd[split:, ...])
        Xd, yd = Xd[:split, ...], yd[:split, ...]
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, y_val)")
        validation = net._data(*validation_data)
        if validation[0].shape[0] == 0:
            raise ValueError("validation_data holds no samples")
    # Progress counts this call's epochs ("epoch 1/5"), or absolute ones with initial_epoch.
    if initial_epoch is None:
        start, end, shown_from = net.epoch, net.epoch + epochs, net.epoch
    else:
        start, end, shown_from = int(initial_epoch), epochs, 0
    loop = _Loop(net, Xd, yd, batch_size, shuffle, train_metrics, val_metrics, validation,
                 callback_list, verbose)
    return loop.run(start, end, shown_from)


def _metric_list(metrics, net):
    if metrics is None:
        return []
    if isinstance(metrics, str) or callable(metrics):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)):
        raise TypeError(f"metrics must be a list of names, Metric objects or functions, got "
                        f"{metrics!r}")
    bound = [get_metric(m).bind(net.backend, net.loss) for m in metrics]
    names = [m.name for m in bound]
    clash = {name for name in names if names.count(name) > 1 or name == "loss"}
    if clash:
        raise ValueError(f"metric names must be unique and not 'loss'; repeated: {sorted(clash)}")
    return bound


class _Loop:
    def __init__(self, net, Xd, yd, batch_size, shuffle, train_metrics, val_metrics, validation,
                 callbacks, verbose):
        self.net, self.Xd, self.yd = net, Xd, yd
        self.n = Xd.shape[0]
        self.bs = self.n if batch_size is None else min(batch_size, self.n)
        self.n_steps = -(-self.n // self.bs)
        self.shuffle = bool(shuffle) and self.bs < self.n
        self.train_metrics, self.val_metrics = train_metrics, val_metrics
        self.validation = validation
        self.val_chunk = None
        if validation is not None:
            n_val = validation[0].shape[0]
            self.val_chunk = n_val if batch_size is None else max(batch_size, VALIDATION_CHUNK)
        self.callbacks = callbacks
        self.verbose = int(verbose)
        self.log_lr = isinstance(net.optimizer.lr, Schedule) or any(
            isinstance(c, (LearningRateScheduler, ReduceLROnPlateau)) for c in callbacks.callbacks)

    # -- one step, one epoch --------------------------------------------------------------------
    def _order(self, host_order):
        if host_order is None:
            return None
        return self.net.backend.asarray(host_order, dtype=self.net.backend.xp.int64)

    def _batch(self, order, step):
        start = step * self.bs
        stop = min(start + self.bs, self.n)
        if order is None:
            return self.Xd[start:stop, ...], self.yd[start:stop, ...]
        xp = self.net.backend.xp
        idx = order[start:stop]
        return xp.take(self.Xd, idx, axis=0), xp.take(self.yd, idx, axis=0)

    def _step(self, xb, yb, metric_sums=None):
        """One update; the loss (0-d, on the device) before it. With metrics, the chain is run
        explicitly so the batch output can feed them (same operations as ``_train_batch``)."""
        net = self.net
        if not self.train_metrics:
            return net._train_batch(xb, yb)
        out = net._forward(xb, True)
        loss = net._loss(out, yb)
        if metric_sums is not None:
            for i, metric in enumerate(self.train_metrics):
                s = metric.update(out, yb)
                metric_sums[i] = s if metric_sums[i] is None else metric_sums[i] + s
        net._backward()
        net._apply_gradients()
        return loss

    def _run_epoch(self, host_order, progress):
        net = self.net
        order = self._order(host_order)
        total, sums, seen, steps = None, [None] * len(self.train_metrics), 0, 0
        for metric in self.train_metrics:
            metric.begin()
        batch_hooks = self.callbacks.batch_hooks
        for step in range(self.n_steps):
            xb, yb = self._batch(order, step)
            size = xb.shape[0]
            loss = self._step(xb, yb, sums)
            weighted = loss * float(size)
            total = weighted if total is None else total + weighted
            seen += size
            steps += 1
            if batch_hooks:
                self.callbacks.on_batch_end(step, {"batch": step, "size": size, "loss": loss})
            progress.advance()
            if net.stop_training:
                break
        return total, sums, seen, steps

    def _read(self, total, sums):
        """One device read: [loss sum, number of non-finite weights, metric sums...]."""
        net = self.net
        xp, dtype = net.backend.xp, net.dtype
        bad = sum(xp.sum(xp.astype(xp.logical_not(xp.isfinite(layer.params[key])), dtype))
                  for layer, key in net._slots)
        parts = [xp.reshape(xp.astype(xp.asarray(total), dtype), (1,)),
                 xp.reshape(xp.asarray(bad, dtype=dtype), (1,))]
        parts += [xp.reshape(s, (-1,)) for s in sums]
        return net.backend.to_numpy(xp.concat(parts)).astype(np.float64)

    # -- divergence -------------------------------------------------------------------------------
    def _replay(self, snapshot, n_steps):
        """Rewind to ``snapshot`` and run its epoch's first ``n_steps`` steps again."""
        snapshot.restore(self.net)
        order = self._order(snapshot.order)
        for step in range(n_steps):
            self._step(*self._batch(order, step))

    def _recover(self, epoch, snap, prev, steps_run):
        """Replay the epoch step by step after a non-finite epoch sum. Returns the error (with
        the network rewound to the last finite step), or the list of step losses when every step
        was finite after all (the sum alone overflowed)."""
        net = self.net
        snap.restore(net)
        order = self._order(snap.order)
        before_previous, before = None, snap
        losses = []
        for step in range(steps_run):
            loss = net.backend.to_float(self._step(*self._batch(order, step)))
            if not math.isfinite(loss):
                if before_previous is not None:
                    before_previous.restore(net)
                elif prev is not None:
                    self._replay(prev, prev.steps - 1)
                else:
                    snap.restore(net)
                return TrainingDivergedError(epoch, step, loss)
            before_previous, before = before, _Snapshot(net)
            losses.append(loss)
        if not all(bool(net.backend.xp.all(net.backend.xp.isfinite(layer.params[key])))
                   for layer, key in net._slots):
            before_previous.restore(net)
            return TrainingDivergedError(epoch, steps_run - 1, float("nan"), weights=True)
        return losses

    # -- the loop -----------------------------------------------------------------------------------
    def run(self, start, end, shown_from=0):
        net, callbacks = self.net, self.callbacks
        net.stop_training = False
        net.epoch = start
        history = History()
        progress = Progress(self.verbose)
        logs = {}
        prev = None
        callbacks.on_train_begin()
        try:
            while net.epoch < end and not net.stop_training:
                epoch = net.epoch
                callbacks.on_epoch_begin(epoch)
                host_order = net.shuffle_rng.permutation(self.n) if self.shuffle else None
                snap = _Snapshot(net, host_order)
                lr = net.optimizer.learning_rate()
                progress.begin(f"epoch {epoch - shown_from + 1}/{end - shown_from}", self.n_steps)
                total, sums, seen, steps = self._run_epoch(host_order, progress)
                snap.steps = steps
                host = self._read(total, sums)
                loss_sum = float(host[0])
                if not math.isfinite(loss_sum) or host[1] > 0:
                    outcome = self._recover(epoch, snap, prev, steps)
                    if isinstance(outcome, TrainingDivergedError):
                        progress.close()
                        if callbacks.on_divergence(outcome):
                            progress.message(f"stopped: {outcome}")
                            break
                        raise outcome
                    loss_sum = math.fsum(loss * min(self.bs, self.n - s * self.bs)
                                         for s, loss in enumerate(outcome))
                logs = {"loss": loss_sum / seen}
                offset = 2
                for metric, s in zip(self.train_metrics, sums):
                    size = s.shape[0]
                    logs[metric.name] = metric.result(host[offset:offset + size])
                    offset += size
                if self.validation is not None:
                    val = evaluate_arrays(net, *self.validation, self.val_metrics, self.val_chunk)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                if self.log_lr:
                    logs["lr"] = lr
                if net.precision is not None:
                    logs.update(net.precision.epoch_logs(snap.precision.get("skipped_steps", 0)))
                history.append(epoch, logs)
                net.history.append(epoch, logs)
                net.epoch += 1
                net.optimizer.advance_schedule("epoch")
                progress.end(logs)
                callbacks.on_epoch_end(epoch, logs)
                prev = snap
        finally:
            progress.close()
        callbacks.on_train_end(logs)
        return history


def evaluate_arrays(net, Xd, yd, metrics, chunk=None):
    """``{"loss": float, metric name: float}`` on device arrays, in inference mode, ``chunk``
    rows at a time (None: all at once), with one device read."""
    xp = net.backend.xp
    n = Xd.shape[0]
    chunk = n if chunk is None else chunk
    for metric in metrics:
        metric.begin()
    total, sums = None, [None] * len(metrics)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        xb, yb = Xd[start:stop, ...], yd[start:stop, ...]
        out = net._forward(xb, False)
        loss = net._loss(out, yb) * float(stop - start)
        total = loss if total is None else total + loss
        for i, metric in enumerate(metrics):
            s = metric.update(out, yb)
            sums[i] = s if sums[i] is None else sums[i] + s
    parts = [xp.reshape(xp.astype(xp.asarray(total), net.dtype), (1,))]
    parts += [xp.reshape(s, (-1,)) for s in sums]
    host = net.backend.to_numpy(xp.concat(parts)).astype(np.float64)
    logs = {"loss": float(host[0]) / n}
    offset = 1
    for metric, s in zip(metrics, sums):
        logs[metric.name] = metric.result(host[offset:offset + s.shape[0]])
        offset += s.shape[0]
    return logs


# -- copies of the training state ------------------------------------------------------------------
def _copy(xp, a):
    return xp.asarray(a, copy=True)


def copy_weights(net):
    """Device copies of every parameter and buffer (for :func:`restore_weights`)."""
    xp = net.backend.xp
    return ([_copy(xp, layer.params[key]) for layer, key in net._slots],
            [{k: _copy(xp, v) for k, v in layer.buffers.items()} for layer in net._all_layers])


def restore_weights(net, weights):
    """Put back parameters and buffers from :func:`copy_weights` (the copy stays usable)."""
    xp = net.backend.xp
    params, buffers = weights
    for (layer, key), value in zip(net._slots, params):
        layer.params[key] = _copy(xp, value)
    for layer, saved in zip(net._all_layers, buffers):
        layer.buffers = {k: _copy(xp, v) for k, v in saved.items()}


class _Snapshot:
    """Everything a training step changes: weights, buffers, optimizer state, step counters and
    learning rate, and the device RNG; plus the epoch's batch order and how many steps it ran."""

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


# -- progress display ----------------------------------------------------------------------------------
def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_logs(logs):
    return "  ".join(f"{k} {v:.6g}" for k, v in logs.items())


class Progress:
    """What ``fit`` prints. ``verbose=0``: nothing. ``verbose=1`` on a terminal: a progress bar per
    epoch (tqdm when installed, else a plain one) that shows the epoch's loss and metrics when it
    completes. ``verbose=2``, or 1 when not writing to a terminal: one line per epoch."""

    BAR_WIDTH = 30
    REDRAW_SECONDS = 0.1

    def __init__(self, verbose, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.verbose = int(verbose)
        self.bar = self.verbose == 1 and _isatty(self.stream)
        self._tqdm_class = _tqdm() if self.bar else None
        self._tqdm = None

    def begin(self, label, n_steps):
        self.label, self.n, self.i = label, n_steps, 0
        self._open = True
        self.t0 = self._drawn = time.perf_counter()
        if self.bar and self._tqdm_class is not None:
            self._tqdm = self._tqdm_class(total=n_steps, desc=label, unit="batch", leave=True,
                                          file=self.stream, dynamic_ncols=True, mininterval=0.1)
        elif self.bar:
            self._draw()

    def advance(self):
        if not self.bar:
            return
        self.i += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
            return
        now = time.perf_counter()
        if now - self._drawn >= self.REDRAW_SECONDS:
            self._drawn = now
            self._draw()

    def _draw(self, tail=""):
        filled = self.BAR_WIDTH * self.i // max(self.n, 1)
        bar = "=" * filled + "." * (self.BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.i}/{self.n}{tail}")
        self.stream.flush()

    def end(self, logs):
        if not self.verbose:
            return
        text = format_logs(logs)
        seconds = time.perf_counter() - self.t0
        self._open = False
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
            self._tqdm.close()
            self._tqdm = None
        elif self.bar:
            self._draw(f"  {text}  ({seconds:.2f}s)\n")
        else:
            print(f"{self.label}  {text}  ({seconds:.2f}s)", file=self.stream, flush=True)

    def message(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def close(self):
        """Close an unfinished bar (after an error or a clean stop)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.bar and getattr(self, "_open", False):
            self.stream.write("\n")
            self.stream.flush()
        self._open = False


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm
