"""The Network: layers, a loss and an optimizer on one backend, with a Keras-like API.

Data crosses between the host and the device only here, at the API boundary: ``fit`` moves its
data to the device once, gathers mini-batches there, and reads the loss back once per epoch.
"""

import math
import warnings

import numpy as np

from .backend import get_backend
from .history import History
from .kernels import reference_forced, train_step_for
from .layers import Dense, Layer, Sigmoid, Softmax, get_activation
from .losses import BinaryCrossEntropy, CrossEntropy, get_loss
from .optimizers import get_optimizer
from .precision import get_precision
from .validation import as_numeric, check_batch_size, check_finite, check_positive_int

__all__ = ["Network"]


class Network:
    """A feed-forward network trained by backpropagation.

    Args:
        layers: list of :class:`~bpgpu.layers.Layer` objects, applied in order.
        loss: a :class:`~bpgpu.losses.Loss` or its name (``"mse"``, ``"bce"``, ``"cross_entropy"``).
        optimizer: an :class:`~bpgpu.optimizers.Optimizer` or its name (``"sgd"``, ``"adam"``, ...).
        backend: ``"auto"``, ``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``, a
            :class:`~bpgpu.Backend`, or None for ``$BPGPU_BACKEND`` (default ``"auto"``).
        dtype: ``"float32"`` (default) or ``"float64"``.
        seed: seeds the initial weights (drawn on the host, so equal on every backend), the
            shuffling in :meth:`fit` and the device random numbers (dropout). None: a fresh seed,
            recorded in ``net.seed``.
        fast: use the backend's fast training step (:mod:`bpgpu.kernels`: flat parameter
            buffers, fused kernels) where it applies; False forces the reference path. None:
            fast unless the environment variable ``BPGPU_REFERENCE=1``. Same numbers either way,
            to rounding; the fast path updates parameter arrays in place.
        precision: None (default: everything in ``dtype``), ``"mixed_float16"`` or
            ``"mixed_bfloat16"`` (torch only), or a :class:`~bpgpu.precision.MixedPrecision`:
            float32 master weights and optimizer state, forward and backward passes in 16 bits,
            dynamic loss scaling for float16 (see :mod:`bpgpu.precision`). Needs
            ``dtype="float32"``; runs on the reference path.

    Attributes: ``backend`` (its ``name``, ``device`` and the ``reason`` it was chosen),
    ``layers``, ``loss``, ``optimizer``, ``precision`` (the policy, or None), ``input_shape`` and
    ``output_shape`` (per sample).
    """

    def __init__(self, layers, loss="mse", optimizer="adam", backend=None, dtype="float32",
                 seed=None, fast=None, precision=None):
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of bpgpu Layer objects, got "
                            f"{type(layers).__name__}")
        strangers = [type(layer).__name__ for layer in layers if not isinstance(layer, Layer)]
        if strangers:
            raise TypeError(f"layers must all be bpgpu Layer objects; got {', '.join(strangers)}")
        if not layers:
            raise ValueError("a Network needs at least one layer")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if fast is not None and not isinstance(fast, bool):
            raise TypeError(f"fast must be True, False or None, got {fast!r}")
        self.fast = not reference_forced() if fast is None else fast
        self.layers = list(layers)
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        self.backend = get_backend(backend)
        self.dtype = self.backend.dtype(dtype)
        self.dtype_name = dtype
        self.precision = get_precision(precision)
        if self.precision is not None:
            self.precision.bind(self.backend, dtype)
        self.seed = int(np.random.SeedSequence(seed).entropy) if seed is None else int(seed)
        self.loss.bind(self.backend)
        self.optimizer.bind(self.backend)
        seeds = np.random.SeedSequence(self.seed).spawn(2)
        self.shuffle_rng = np.random.default_rng(seeds[0])
        self.device_rng = self.backend.make_rng(seeds[1])
        weights_rng = np.random.default_rng(self.seed)
        for layer in self.layers:
            layer.build(self.backend, self.dtype, weights_rng, self.device_rng)
        self.layers[0].input_grad = False
        self._refresh_structure()
        self.input_shape = self.layers[0].input_shape()
        self.output_shape = self._output_shape(self.input_shape) if self.input_shape else None
        self._data_output_shape = None  # set by _input when the input shape comes from the data
        self._fuse_sigmoid_bce = (isinstance(self.layers[-1], Sigmoid)
                                  and isinstance(self.loss, BinaryCrossEntropy)
                                  and not self.loss.from_logits)
        if isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CrossEntropy):
            warnings.warn("CrossEntropy takes logits and applies softmax itself: a final Softmax "
                          "layer applies it twice. Drop the Softmax layer.", stacklevel=2)
        self.epoch = 0
        self.history = History()
        self.stop_training = False

    @classmethod
    def from_sizes(cls, layer_sizes, activation="relu", output_activation=None, init="he_normal",
                   **kwargs):
        """Dense layers of ``layer_sizes`` (e.g. ``[1, 64, 32, 1]``) with ``activation`` between
        them and ``output_activation`` (None: linear) after the last. Other keyword arguments go to
        :class:`Network` (``loss``, ``optimizer``, ``backend``, ``dtype``, ``seed``)."""
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__") \
                or len(layer_sizes) < 2:
            raise ValueError(f"layer_sizes must list at least two sizes (inputs and outputs), "
                             f"got {layer_sizes!r}")
        sizes = [check_positive_int(s, "every entry of layer_sizes") for s in layer_sizes]
        get_activation(activation), get_activation(output_activation)  # validate names early
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(Dense(n_in, n_out, init=init))
            last = i == len(sizes) - 2
            if not last:
                layers.append(get_activation(activation))
            elif output_activation is not None:
                layers.append(get_activation(output_activation))
        return cls(layers, **kwargs)

    # -- structure ---------------------------------------------------------------------------------
    def _refresh_structure(self):
        """Cache the flat parameter list and the layers adding a penalty (after building)."""
        self._all_layers = [sub for layer in self.layers for sub in layer.walk()]
        self._slots = [(layer, key) for layer in self._all_layers for key in layer.params]
        self._penalized = [layer for layer in self._all_layers
                           if type(layer).penalty is not Layer.penalty]

    def _output_shape(self, shape):
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return tuple(shape)

    @property
    def n_params(self):
        """Number of learnable scalars."""
        return sum(math.prod(layer.params[key].shape) for layer, key in self._slots)

    def summary(self):
        """A table of the layers, their output shapes and parameter counts, as a string."""
        rows = [("layer", "output shape", "params")]
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape) if shape is not None else None
            count = sum(math.prod(p.shape) for sub in layer.walk() for p in sub.params.values())
            rows.append((repr(layer), str(("N",) + tuple(shape)) if shape else "?", str(count)))
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, width)) for row in rows]
        lines.append(f"total: {self.n_params} parameters; loss {self.loss.name}, optimizer "
                     f"{self.optimizer!r}; backend {self.backend.name} ({self.backend.reason})")
        if self.precision is not None:
            lines.append(f"precision: {self.precision.name} ({self.precision.path_reason})")
        return "\n".join(lines)

    def __repr__(self):
        return (f"Network({len(self.layers)} layers, {self.n_params} params, "
                f"backend={self.backend.name!r}, dtype={self.dtype_name!r}"
                + (f", precision={self.precision.name!r})" if self.precision else ")"))

    # -- boundary: data in ---------------------------------------------------------------------------
    def _input(self, X, name="X"):
        """Validate features and move them to the device (a copy)."""
        X = as_numeric(X, name, self.backend)
        if X.ndim < 2:
            raise ValueError(f"{name} must have shape (n_samples, n_features), got shape "
                             f"{tuple(X.shape)}; for a single feature use X.reshape(-1, 1)")
        if self.input_shape is not None and tuple(X.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{name} has {tuple(X.shape[1:])} features per sample; the network "
                             f"expects {tuple(self.input_shape)}")
        check_finite(X, name, self.backend)
        if self.input_shape is None:  # e.g. Conv2D first: the data's shape fixes the output's
            self._data_output_shape = self._output_shape(tuple(X.shape[1:]))
        return self.backend.asarray(X, dtype=self.dtype)

    def _target(self, y, n_samples, name="y"):
        output_shape = self.output_shape or self._output_shape_from_data()
        y = self.loss.prepare_target(y, self.backend, self.dtype, output_shape)
        if y.shape[0] != n_samples:
            raise ValueError(f"X has {n_samples} samples but {name} has {y.shape[0]}; "
                             "expected one target per sample")
        return y

    def _output_shape_from_data(self):
        if self._data_output_shape is not None:
            return self._data_output_shape
        raise ValueError("the network's input shape is unknown (its first layer does not declare "
                         "one); start it with a Dense layer or another layer with input_shape()")

    def _data(self, X, y):
        Xd = self._input(X)
        return Xd, self._target(y, Xd.shape[0])

    # -- the backprop chain ----------------------------------------------------------------------------
    def _forward(self, x, training):
        if self.precision is not None:
            return self.precision.forward(self, x, training)
        for layer in self.layers:
            x = layer.forward(x, training=training)
        return x

    def _loss(self, out, y):
        value = self.loss.forward(out, y)
        for layer in self._penalized:
            term = layer.penalty()
            if term is not None:
                value = value + term
        return value

    def _backward(self):
        if self._fuse_sigmoid_bce:
            dy, layers = self.loss.backward_through_sigmoid(), self.layers[:-1]
        else:
            dy, layers = self.loss.backward(), self.layers
        if self.precision is not None:
            return self.precision.backward(dy, layers, self)
        for layer in reversed(layers):
            dy = layer.backward(dy)
        return dy

    def _apply_gradients(self):
        if self.precision is not None and not self.precision.finish_step():
            return  # non-finite gradients: the loss scaler skips this update
        step = train_step_for(self)
        if step is not None:
            step.apply_gradients()
            return
        slots = self._slots
        new = self.optimizer.step([layer.params[key] for layer, key in slots],
                                  [layer.grads[key] for layer, key in slots])
        for (layer, key), value in zip(slots, new):
            layer.params[key] = value

    def _train_batch(self, xb, yb):
        """One step on device arrays: forward, loss, backward, update. Returns the loss (0-d,
        on the device, before the update)."""
        step = train_step_for(self)
        if step is not None:
            return step(xb, yb)
        loss = self._loss(self._forward(xb, True), yb)
        self._backward()
        self._apply_gradients()
        return loss

    # -- public step-level API ---------------------------------------------------------------------------
    def forward(self, X, training=False):
        """The network's output for ``X`` (n_samples, n_features), as a backend array.
        ``training=True`` runs training-mode layers (dropout, batch statistics)."""
        return self._forward(self._input(X), training)

    def compute_loss(self, output, y):
        """The loss (0-d backend array) of ``output`` (from :meth:`forward`) against targets ``y``,
        penalties included; prepares :meth:`backward`."""
        return self._loss(output, self._target(y, output.shape[0]))

    def backward(self):
        """Backpropagate the gradient of the last :meth:`compute_loss` through every layer,
        filling each layer's ``grads``. Returns dL/dX, or None when the first layer skips it."""
        return self._backward()

    def apply_gradients(self):
        """Update the weights with the optimizer from the gradients of the last :meth:`backward`."""
        self._apply_gradients()

    def train_step(self, X, y):
        """One forward, backward and update on the batch ``(X, y)``; returns the loss before the
        update as a float."""
        Xd, yd = self._data(X, y)
        return self.backend.to_float(self._train_batch(Xd, yd))

    def compute_gradients(self, X, y):
        """``(loss, grads)`` for the batch ``(X, y)`` without changing any weight or buffer: grads
        is a list of host NumPy arrays in :meth:`get_weights` order."""
        Xd, yd = self._data(X, y)
        saved = [dict(layer.buffers) for layer in self._all_layers]
        try:
            loss = self._loss(self._forward(Xd, True), yd)
            self._backward()
        finally:
            for layer, buffers in zip(self._all_layers, saved):
                layer.buffers = buffers
        return self.backend.to_float(loss), self.gradients()

    def gradients(self):
        """The last computed gradients as host NumPy arrays, in :meth:`get_weights` order."""
        missing = [f"{type(layer).__name__}.{key}" for layer, key in self._slots
                   if key not in layer.grads]
        if missing:
            raise RuntimeError(f"no gradients computed yet for {', '.join(missing)}; call "
                               "compute_gradients(X, y), train_step(X, y) or fit(...) first")
        return [self.backend.to_numpy(layer.grads[key]) for layer, key in self._slots]

    # -- weights ---------------------------------------------------------------------------------------
    def get_weights(self):
        """Learnable parameters as host NumPy arrays: layer order, nested layers depth first,
        and within a layer its parameters in order (Dense: W then b)."""
        return [self.backend.to_numpy(layer.params[key]) for layer, key in self._slots]

    def set_weights(self, weights):
        """Replace every learnable parameter (same order and shapes as :meth:`get_weights`).
        All arrays are checked first: a rejected call changes nothing."""
        weights = list(weights)
        if len(weights) != len(self._slots):
            raise ValueError(f"set_weights got {len(weights)} arrays; the network has "
                             f"{len(self._slots)} parameters (see get_weights())")
        checked = []
        for i, ((layer, key), w) in enumerate(zip(self._slots, weights)):
            name = f"weights[{i}] ({type(layer).__name__}.{key})"
            w = as_numeric(w, name, self.backend)
            expected = tuple(layer.params[key].shape)
            if tuple(w.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(w.shape)}; expected {expected}")
            check_finite(w, name, self.backend)
            checked.append(w)
        for (layer, key), w in zip(self._slots, checked):
            layer.params[key] = self.backend.asarray(w, dtype=self.dtype)

    # -- training loop -----------------------------------------------------------------------------------
    def fit(self, X, y, epochs=1, batch_size=32, shuffle=True, validation_data=None, verbose=1,
            validation_split=None, metrics=None, callbacks=None, initial_epoch=None):
        """Train on ``(X, y)`` in mini-batches; returns a :class:`~bpgpu.History` of this call's
        epochs (``net.history`` keeps every epoch, across calls and checkpoints).

        Args:
            epochs: number of epochs to run, continuing from ``net.epoch``.
            batch_size: samples per update (None: the whole set at once); the last batch of an
                epoch may be smaller.
            shuffle: reshuffle the samples every epoch (a permutation drawn from
                ``net.shuffle_rng``, the same on every backend).
            validation_data: ``(X_val, y_val)``, evaluated in inference mode after every epoch.
            validation_split: instead of ``validation_data``, hold out this fraction of the
                samples, taken from the end of ``(X, y)`` before any shuffling (as Keras does).
            verbose: 0 silent; 1 a progress bar per epoch on a terminal, else one line per
                epoch; 2 one line per epoch.
            metrics: names (``"accuracy"``, ``"binary_accuracy"``, ``"mae"``, ``"rmse"``,
                ``"r2"``), :class:`~bpgpu.metrics.Metric` objects or functions, reported for the
                training batches and the validation data. None: only ``val_accuracy`` for
                classification losses.
            callbacks: list of :class:`~bpgpu.callbacks.Callback` objects.
            initial_epoch: Keras-style resume: set the epoch counter to ``initial_epoch`` and
                run until ``epochs`` (then the index to stop before). Without it, ``fit``
                continues from ``net.epoch``, so a loaded checkpoint continues with plain ``fit``.

        Per epoch the history records ``loss`` (the batch losses, each taken before its update,
        weighted by batch size; penalties included), the metrics, ``val_loss`` and ``val_*``,
        and ``lr`` when the learning rate is a schedule or set by a callback. The loss and
        metrics are read from the device once per epoch. A NaN or infinite loss raises
        :class:`~bpgpu.TrainingDivergedError` naming the epoch and step, with the network rewound
        to the weights of the last finite step (see :mod:`bpgpu.training`).
        """
        from .training import fit

        return fit(self, X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                   validation_data=validation_data, verbose=verbose,
                   validation_split=validation_split, metrics=metrics, callbacks=callbacks,
                   initial_epoch=initial_epoch)

    # -- inference ---------------------------------------------------------------------------------------
    def predict(self, X, batch_size=None):
        """Outputs for ``X`` as a host NumPy array (inference mode), computed ``batch_size`` rows
        at a time (None: all at once)."""
        batch_size = check_batch_size(batch_size)
        Xd = self._input(X)
        n = Xd.shape[0]
        bs = n if batch_size is None or n == 0 else batch_size
        parts = [self.backend.to_numpy(self._forward(Xd[s:min(s + bs, n), ...], False))
                 for s in range(0, max(n, 1), max(bs, 1))]
        return np.concatenate(parts, axis=0)

    def evaluate(self, X, y):
        """``{"loss": float}`` on ``(X, y)`` in inference mode, plus ``"accuracy"`` for
        classification losses (argmax for cross-entropy; threshold 0.5 or logit 0 for BCE)."""
        return self._evaluate(*self._data(X, y))

    def _evaluate(self, Xd, yd):
        out = self._forward(Xd, False)
        logs = {"loss": self.backend.to_float(self._loss(out, yd))}
        if self.loss.is_classification:
            logs["accuracy"] = self.backend.to_float(self.loss.accuracy(out, yd))
        return logs

    # -- persistence -----------------------------------------------------------------------------------------
    def save(self, path):
        """Write the network (architecture, weights, buffers, loss and optimizer settings) and
        its training state (optimizer moments and counters, schedule position, random generator
        states, epoch counter, history) to one ``.npz`` file, atomically; after
        :func:`bpgpu.load`, ``fit`` continues exactly where this network stopped."""
        from .io import save

        save(self, path)
