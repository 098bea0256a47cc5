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
import warnings
from typing import Any

import numpy as np

from ._progress import Progress
from ._schedules import Schedule
from ._snapshot import Snapshot
from ._validation import as_numeric, check_batch_size, check_bool, check_finite, check_positive_int, is_real_number
from .callbacks import CallbackList, LearningRateScheduler, ReduceLROnPlateau
from .distributed import DataParallel
from .errors import TrainingDivergedError
from .history import History
from .layers import BatchNorm, Layer
from .metrics import Accuracy, get_metric, metric_logs

__all__ = ["fit", "evaluate_arrays", "metric_list", "sample_weights", "validation_rows"]

#: Smallest chunk used to evaluate validation data (inference needs no small batches).
VALIDATION_CHUNK = 1024


def fit(net, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose=1,
        validation_split=None, metrics=None, callbacks=None, initial_epoch=None, distributed=None,
        sample_weight=None, class_weight=None, validation_strategy="tail"):
    """See :meth:`Network.fit <bpgpu.Network.fit>`. Everything is checked before any training
    step, so a rejected call changes nothing. With ``distributed`` (a
    :class:`~bpgpu.distributed.Communicator`) the ranks first agree that every one of them
    accepted its call with the same data, network and settings (:mod:`bpgpu.distributed`)."""
    parallel = None
    if distributed is not None:
        parallel = DataParallel(distributed, net)
    try:
        loop, span, fingerprint = _prepare(net, X, y, epochs, batch_size, shuffle,
                                           validation_data, verbose, validation_split, metrics,
                                           callbacks, initial_epoch, parallel, sample_weight,
                                           class_weight, validation_strategy)
    except Exception as exc:
        if parallel is not None:
            parallel.agree(exc, None)
        raise
    if parallel is None:
        if loop.weights is None:
            return loop.run(*span)
        # Weighted batches need the weighted loss: the reference engine, for this call only.
        added = "sample weights" not in net.engine_requirements
        net.engine_requirements.add("sample weights")
        try:
            return loop.run(*span)
        finally:
            if added:
                net.engine_requirements.discard("sample weights")
    parallel.agree(None, fingerprint)
    with parallel.abort_on_error(), parallel.attached():
        parallel.broadcast_state()
        if initial_epoch is None:  # the epoch counter is rank 0's now
            span = (net.epoch, net.epoch + span[1] - span[0], net.epoch)
        return loop.run(*span)


def _prepare(net, X, y, epochs, batch_size, shuffle, validation_data, verbose, validation_split,
             metrics, callbacks, initial_epoch, parallel, sample_weight=None, class_weight=None,
             validation_strategy="tail"):
    """Check every argument of :func:`fit`; ``(loop, (start, end, shown_from), fingerprint)``."""
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_batch_size(batch_size)
    shuffle = check_bool(shuffle, "shuffle")
    if verbose not in (0, 1, 2, False, True):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        if not is_real_number(validation_split) or not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be a fraction in (0, 1), e.g. 0.2, got "
                             f"{validation_split!r}")
    if validation_strategy not in VALIDATION_STRATEGIES:
        raise ValueError(f"validation_strategy must be one of {VALIDATION_STRATEGIES}, got "
                         f"{validation_strategy!r}")
    if validation_strategy == "stratified" and not net.loss.is_classification:
        raise ValueError(f"validation_strategy='stratified' needs a classification loss; the "
                         f"network's loss is {net.loss.name!r}: use 'shuffle'")
    if parallel is not None and (sample_weight is not None or class_weight is not None):
        raise ValueError("sample_weight and class_weight are not supported with distributed "
                         "training yet; train without distributed=, or without weights")
    if initial_epoch is not None:
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) \
                or initial_epoch < 0:
            raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
        if epochs <= initial_epoch:
            raise ValueError(f"with initial_epoch={initial_epoch}, epochs is the epoch to stop "
                             f"before (Keras' convention) and must exceed it; got epochs={epochs}")
    train_metrics = metric_list(metrics, net)
    val_metrics = ([copy.copy(m) for m in train_metrics] if metrics is not None
                   else [Accuracy().bind(net.backend, net.loss)] if net.loss.is_classification
                   else [])
    callback_list = CallbackList(callbacks, net)
    Xd, yd = net._data(X, y, borrow=True, needs="fit")  # read in place (never written)
    weights = sample_weights(net, sample_weight, class_weight, yd)
    validation: tuple[Any, ...] | None = None
    if validation_split is not None:
        train_rows, val_rows = validation_rows(net, yd, validation_split, validation_strategy)
        validation = (_rows(net, Xd, val_rows), _rows(net, yd, val_rows))
        Xd, yd = _rows(net, Xd, train_rows), _rows(net, yd, train_rows)
        if weights is not None:
            validation += (net.backend.asarray(weights[val_rows], dtype=net.dtype),)
            weights = weights[train_rows]
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or a triple "
                             "(X_val, y_val, sample_weight_val)")
        validation = net._data(*validation_data[:2], borrow=True, what="validation_data",
                               needs="validation")
        if len(validation_data) == 3 and validation_data[2] is not None:
            val_weights = sample_weights(net, validation_data[2], None, validation[1])
            validation += (net.backend.asarray(val_weights, dtype=net.dtype),)
    # Progress counts this call's epochs ("epoch 1/5"), or absolute ones with initial_epoch.
    if initial_epoch is None:
        span = (net.epoch, net.epoch + epochs, net.epoch)
    else:
        span = (int(initial_epoch), epochs, 0)
    if parallel is None:  # a data-parallel fit synchronises BatchNorm over the global batch
        _check_last_batch(net, Xd, batch_size)
    fingerprint = None
    if parallel is not None:
        parallel.check(Xd.shape[0], train_metrics + val_metrics)
        settings = {"epochs": epochs, "batch_size": batch_size, "shuffle": bool(shuffle),
                    "validation_split": validation_split, "initial_epoch": initial_epoch,
                    "validation": None if validation is None
                    else [list(validation[0].shape), list(validation[1].shape)],
                    "metrics": [m.name for m in train_metrics + val_metrics]}
        fingerprint = parallel.fingerprint(X, y, Xd, yd, settings)
        if parallel.rank != 0:  # rank 0 alone prints and writes files
            verbose = 0
            callback_list = CallbackList([c for c in callback_list.callbacks
                                          if not c.rank_zero_only], net)
        if batch_size is not None:
            batch_size *= parallel.size  # the global batch
    loop = _Loop(net, Xd, yd, batch_size, shuffle, train_metrics, val_metrics, validation,
                 callback_list, verbose, parallel, weights)
    return loop, span, fingerprint


def _check_last_batch(net, Xd, batch_size):
    """ValueError, before any step, when a batch of an epoch would hold a single sample and a
    BatchNorm would then see one value per channel (its batch statistics need two)."""
    n = Xd.shape[0]
    size = n if batch_size is None else min(batch_size, n)
    last = n - (-(-n // size) - 1) * size
    if last != 1:
        return
    if not _single_sample_values(net.layers, tuple(Xd.shape[1:])):
        return
    where = "the only batch" if size == 1 or n == 1 else "the last batch of every epoch"
    hint = (f"use a batch_size that leaves at least 2 samples in the last batch (e.g. "
            f"{size + 1} or {size - 1})" if n > 2 else "train on at least 2 samples")
    raise ValueError(f"{where} would hold 1 sample ({n} samples, batch_size={batch_size}); "
                     "BatchNorm needs at least 2 values per channel in training: " + hint)


def _single_sample_values(layers, shape):
    """True when some BatchNorm in ``layers`` (fed per-sample ``shape``) would see one value per
    channel from a one-sample batch, i.e. gets (N, C) inputs. Unknown shapes count as (N, C)."""
    for layer in layers:
        if isinstance(layer, BatchNorm):
            if len(shape) != 3 or shape[1] * shape[2] < 2:
                return True
        elif any(isinstance(sub, BatchNorm) for sub in layer.walk()):
            inner = getattr(layer, "layers", None)  # Sequential; Residual/Checkpoint hold a block
            if inner is None and isinstance(getattr(layer, "block", None), Layer):
                inner = [layer.block]
            if inner is None or _single_sample_values(inner, shape):
                return True
        try:
            shape = tuple(layer.output_shape(shape)) if shape else ()
        except ValueError:
            shape = ()
    return False


#: How ``validation_split`` picks the held-out samples (see Network.fit).
VALIDATION_STRATEGIES = ("tail", "shuffle", "stratified")


def _rows(net, a, rows):
    """``a`` restricted to ``rows``: a slice stays a view, an index array gathers on the device."""
    if isinstance(rows, slice):
        return a[rows, ...]
    return net.backend.xp.take(a, net.backend.asarray(rows, dtype=net.backend.xp.int64), axis=0)


def _class_ids(net, yd):
    """Host class ids (n,) of prepared targets: cross-entropy ids (or argmax of probability
    rows), 0/1 for a one-output BCE; None for other targets (multi-output BCE, regression)."""
    if not net.loss.is_classification:
        return None
    y = net.backend.to_numpy(yd)
    if y.ndim == 1:
        return y.astype(np.int64)
    if net.loss.name == "cross_entropy":
        return y.argmax(axis=1)
    if y.shape[1:] == (1,):
        return (y[:, 0] > 0.5).astype(np.int64)
    return None


def validation_rows(net, yd, fraction, strategy):
    """``(train rows, validation rows)`` for ``validation_split=fraction``: slices for
    ``"tail"``, sorted index arrays otherwise (the draws come from a generator seeded by the
    network's seed, so a seed gives the same split)."""
    n = yd.shape[0]
    n_val = n - int(math.floor(n * (1.0 - fraction)))
    if n_val < 1 or n_val >= n:
        raise ValueError(f"validation_split={fraction} of {n} samples leaves {n - n_val} for "
                         f"training and {n_val} for validation; both need at least one")
    classes = _class_ids(net, yd)
    if strategy == "tail":
        if classes is not None and np.unique(classes[n - n_val:]).size == 1 \
                and np.unique(classes).size > 1:
            warnings.warn(f"the validation split (the last {n_val} samples) holds class "
                          f"{classes[-1]} only; the data may be sorted by class: pass "
                          "validation_strategy='stratified' or 'shuffle'", stacklevel=3)
        return slice(0, n - n_val), slice(n - n_val, n)
    rng = np.random.default_rng(np.random.SeedSequence(net.seed).spawn(3)[2])
    if strategy == "shuffle" or classes is None:
        val = rng.permutation(n)[:n_val]
    else:
        val = _stratified_pick(rng, classes, n_val)
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _stratified_pick(rng, classes, n_val):
    """``n_val`` indices holding each class in proportion to its count (largest remainders get
    the leftover places), drawn at random within each class."""
    labels, counts = np.unique(classes, return_counts=True)
    share = counts * n_val / counts.sum()
    take = np.floor(share).astype(np.int64)
    for i in np.argsort(-(share - take), kind="stable")[:n_val - int(take.sum())]:
        take[i] += 1
    picked = [rng.permutation(np.flatnonzero(classes == label))[:k]
              for label, k in zip(labels, take, strict=True)]
    return np.concatenate(picked)


def sample_weights(net, sample_weight, class_weight, yd):
    """Host float64 weights (n,) from ``sample_weight`` times ``class_weight`` (see
    Network.fit), or None when neither is given. Checked: finite, >= 0, one per sample."""
    n = yd.shape[0]
    weights = None
    if sample_weight is not None:
        weights = as_numeric(sample_weight, "sample_weight", net.backend)
        check_finite(weights, "sample_weight", net.backend)
        if net.backend.is_native(weights):
            weights = net.backend.to_numpy(weights)
        weights = np.array(weights, dtype=np.float64).reshape(-1) if weights.ndim <= 1 else None
        if weights is None or weights.shape[0] != n:
            raise ValueError(f"sample_weight must have shape ({n},), one weight per sample; got "
                             f"shape {tuple(np.shape(sample_weight))}")
        if (weights < 0).any():
            raise ValueError("sample_weight must hold finite numbers >= 0")
    if class_weight is not None:
        classes = _class_ids(net, yd)
        if classes is None:
            raise ValueError("class_weight needs class targets: cross-entropy, or BCE with one "
                             f"output; the network's loss is {net.loss.name!r} with targets of "
                             f"shape {tuple(yd.shape)}")
        per_sample = _class_weights(class_weight, classes)
        weights = per_sample if weights is None else weights * per_sample
    return weights


def _class_weights(class_weight, classes):
    """Per-sample weights from ``{class: weight}`` (classes absent from it weigh 1) or
    ``"balanced"``: n / (n_classes * count), scikit-learn's ``compute_class_weight``."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', got "
                             f"{class_weight!r}")
        labels, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
        return (classes.shape[0] / (labels.shape[0] * counts))[inverse].astype(np.float64)
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class: weight}} or 'balanced', got "
                        f"{type(class_weight).__name__}")
    table = {}
    for label, value in class_weight.items():
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"class_weight keys must be integer class ids, got {label!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"class_weight[{label}] must be a finite number >= 0, got {value!r}")
        table[int(label)] = float(value)
    return np.array([table.get(int(c), 1.0) for c in classes], dtype=np.float64)


def metric_list(metrics, net):
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
                 callbacks, verbose, parallel=None, weights=None):
        self.net, self.Xd, self.yd = net, Xd, yd
        self.weights = weights  # host float64 (n,) or None
        self.wd = None if weights is None else net.backend.asarray(weights, dtype=net.dtype)
        self.parallel = parallel  # None, or the DataParallel of a distributed fit
        self.n = Xd.shape[0]
        self.bs = self.n if batch_size is None else min(batch_size, self.n)
        self.n_steps = -(-self.n // self.bs)
        self._gathered = None  # the reused batch buffers of shuffled epochs
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
        """``(xb, yb, rows, wb)``: the step's batch (this rank's share of it when distributed),
        how many of its rows count (a rank with an empty share gets one row that counts zero)
        and its sample weights (None without)."""
        start = step * self.bs
        stop = min(start + self.bs, self.n)
        rows = stop - start
        if self.parallel is not None:
            start, stop, rows = self.parallel.select(start, stop)
        if order is None:
            wb = None if self.wd is None else self.wd[start:stop]
            return self.Xd[start:stop, ...], self.yd[start:stop, ...], rows, wb
        backend = self.net.backend
        if self._gathered is None:  # one batch of each, reused by every step (Backend.take_rows)
            xp = backend.xp
            self._gathered = tuple(xp.empty((self.bs,) + tuple(a.shape[1:]), dtype=a.dtype,
                                            device=backend.device) for a in (self.Xd, self.yd))
        idx = order[start:stop]
        size = stop - start
        wb = None if self.wd is None else backend.xp.take(self.wd, idx, axis=0)
        return (backend.take_rows(self.Xd, idx, self._gathered[0][:size, ...]),
                backend.take_rows(self.yd, idx, self._gathered[1][:size, ...]), rows, wb)

    def _batch_total(self, host_order, step, rows):
        """What batch ``step``'s mean loss is multiplied by in the epoch sum: its ``rows``, or
        the sum of its weights (from the host copy, no device read)."""
        if self.weights is None:
            return float(rows)
        start = step * self.bs
        stop = min(start + self.bs, self.n)
        picked = slice(start, stop) if host_order is None else host_order[start:stop]
        return float(self.weights[picked].sum())

    def _global_loss(self, loss):
        """The loss of the step just run as a float (the global batch's, when distributed)."""
        if self.parallel is None:
            return self.net.backend.to_float(loss)
        return self.parallel.step_loss(loss, self.parallel.sync.weight)

    def _step(self, xb, yb, metric_sums=None, wb=None):
        """One update by the network's engine; the loss (0-d, on the device) before it. With
        metrics, the engine also hands back the batch's output to feed them; ``wb``: the
        batch's sample weights (None without). Holds the network's lock."""
        engine = self.net.engine
        weighted = {} if wb is None else {"weight": wb}
        with self.net._lock:  # a predict() from another thread waits for the step to finish
            if not self.train_metrics or metric_sums is None:
                return engine.train_step(xb, yb, **weighted)
            loss, out = engine.train_step(xb, yb, output=True, **weighted)
            for i, metric in enumerate(self.train_metrics):
                s = metric.update(out, yb) if wb is None else metric.update(out, yb, wb)
                metric_sums[i] = s if metric_sums[i] is None else metric_sums[i] + s
            return loss

    def _run_epoch(self, host_order, progress):
        net = self.net
        order = self._order(host_order)
        total, sums, seen, steps = None, [None] * len(self.train_metrics), 0, 0
        for metric in self.train_metrics:
            metric.begin()
        batch_hooks = self.callbacks.batch_hooks
        for step in range(self.n_steps):
            xb, yb, size, wb = self._batch(order, step)
            loss = self._step(xb, yb, sums if size else None, wb)
            share = self._batch_total(host_order, step, size)
            if size:
                weighted = loss * share
                total = weighted if total is None else total + weighted
            seen += share
            steps += 1
            if batch_hooks:
                logs = {"batch": step, "size": size, "loss": loss}
                if self.parallel is not None:
                    logs.update(size=min(self.bs, self.n - step * self.bs),
                                loss=self._global_loss(loss))
                self.callbacks.on_batch_end(step, logs)
                if self.parallel is not None:
                    net.stop_training = self.parallel.any(net.stop_training)
            progress.advance()
            if net.stop_training:
                break
        return total, sums, seen, steps

    def _read(self, total, sums):
        """One device read: [loss sum, number of non-finite weights, metric sums...]."""
        net = self.net
        xp, dtype = net.backend.xp, net.dtype
        bad = sum(xp.sum(xp.astype(xp.logical_not(xp.isfinite(layer.params[key])), dtype))
                  for layer, key in net.structure.slots)
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
            xb, yb, _, wb = self._batch(order, step)
            self._step(xb, yb, wb=wb)

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
            xb, yb, _, wb = self._batch(order, step)
            loss = self._global_loss(self._step(xb, yb, wb=wb))
            if not math.isfinite(loss):
                if before_previous is not None:
                    before_previous.restore(net)
                elif prev is not None:
                    self._replay(prev, prev.steps - 1)
                else:
                    snap.restore(net)
                return TrainingDivergedError(epoch, step, loss)
            before_previous, before = before, Snapshot(net)
            losses.append(loss)
        if not all(bool(net.backend.xp.all(net.backend.xp.isfinite(layer.params[key])))
                   for layer, key in net.structure.slots):
            (snap if before_previous is None else before_previous).restore(net)
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
        if net._restored_callbacks:
            callbacks.restore(net._restored_callbacks)
        net._restored_callbacks = None
        net._fit_callbacks = callbacks.callbacks
        try:
            while net.epoch < end and not net.stop_training:
                epoch = net.epoch
                callbacks.on_epoch_begin(epoch)
                if self.parallel is not None:
                    net.stop_training = self.parallel.any(net.stop_training)
                host_order = net.shuffle_rng.permutation(self.n) if self.shuffle else None
                snap = Snapshot(net, host_order)
                lr = net.optimizer.learning_rate()
                progress.begin(f"epoch {epoch - shown_from + 1}/{end - shown_from}", self.n_steps)
                total, sums, seen, steps = self._run_epoch(host_order, progress)
                snap.steps = steps
                host = self._read(total, sums)
                if self.parallel is not None:
                    host, seen = self.parallel.sum_sums(host, seen, self.train_metrics)
                loss_sum = float(host[0])
                if not math.isfinite(loss_sum) or host[1] > 0:
                    outcome = self._recover(epoch, snap, prev, steps)
                    if isinstance(outcome, TrainingDivergedError):
                        progress.close()
                        stop = callbacks.on_divergence(outcome)
                        if self.parallel is not None:
                            stop = self.parallel.any(stop)
                        if stop:
                            progress.message(f"stopped: {outcome}")
                            break
                        raise outcome
                    loss_sum = math.fsum(
                        loss * self._batch_total(snap.order, s, min(self.bs, self.n - s * self.bs))
                        for s, loss in enumerate(outcome))
                logs = {"loss": loss_sum / seen if seen else 0.0}
                offset = 2
                for metric, s in zip(self.train_metrics, sums, strict=True):
                    size = s.shape[0]
                    logs.update(metric_logs(metric, host[offset:offset + size]))
                    offset += size
                if self.validation is not None:
                    Xv, yv, *wv = self.validation
                    val = evaluate_arrays(net, Xv, yv, self.val_metrics, self.val_chunk,
                                          self.parallel, wv[0] if wv else None)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                if self.log_lr:
                    logs["lr"] = lr
                if net.precision is not None and snap.precision is not None:
                    logs.update(net.precision.epoch_logs(snap.precision.get("skipped_steps", 0)))
                history.append(epoch, logs)
                net.history.append(epoch, logs)
                net.epoch += 1
                net.optimizer.advance_schedule("epoch")
                progress.end(logs)
                callbacks.on_epoch_end(epoch, logs)
                if self.parallel is not None:
                    net.stop_training = self.parallel.any(net.stop_training)
                prev = snap
        finally:
            progress.close()
        callbacks.on_train_end(logs)
        return history


def evaluate_arrays(net, Xd, yd, metrics, chunk=None, parallel=None, weights=None):
    """``{"loss": float, metric name: float}`` on device arrays, in inference mode, ``chunk``
    rows at a time (None: all at once), with one device read. With ``parallel`` (a distributed
    fit) each rank evaluates its share of the rows and the sums are added across ranks (every
    rank evaluates all rows when there are fewer rows than ranks). ``weights``: optional device
    sample weights (n,); the loss is then sum(w l) / sum(w) and the built-in metrics are
    weighted (not with ``parallel``)."""
    xp, engine = net.backend.xp, net.engine
    n = Xd.shape[0]
    shared = parallel is not None and n >= parallel.size
    if shared:
        if weights is not None:
            raise ValueError("weighted evaluation is not supported with distributed training")
        a, b = parallel.share(0, n)
        Xd, yd, n = Xd[a:b, ...], yd[a:b, ...], b - a
    chunk = n if chunk is None else chunk
    for metric in metrics:
        metric.begin()
    total: Any = None
    sums: list[Any] = [None] * len(metrics)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        xb, yb = Xd[start:stop, ...], yd[start:stop, ...]
        wb = None if weights is None else weights[start:stop]
        with net._lock:  # the engine may reuse its output buffer for another thread's call
            out = engine.forward(xb, False)
            share = float(stop - start) if wb is None else xp.sum(wb)
            loss = engine.loss(out, yb, wb) * share
            total = loss if total is None else total + loss
            for i, metric in enumerate(metrics):
                s = metric.update(out, yb) if wb is None else metric.update(out, yb, wb)
                sums[i] = s if sums[i] is None else sums[i] + s
    parts = [xp.reshape(xp.astype(xp.asarray(total), net.dtype), (1,))]
    if weights is not None:
        parts.append(xp.reshape(xp.sum(weights), (1,)))
    parts += [xp.reshape(s, (-1,)) for s in sums]
    host = net.backend.to_numpy(xp.concat(parts)).astype(np.float64)
    if shared:
        host, n = parallel.sum_sums(host, n, metrics)
    offset = 1 if weights is None else 2
    denominator = n if weights is None else float(host[1])
    logs = {"loss": float(host[0]) / denominator if denominator else 0.0}
    for metric, s in zip(metrics, sums, strict=True):
        logs.update(metric_logs(metric, host[offset:offset + s.shape[0]]))
        offset += s.shape[0]
    return logs
