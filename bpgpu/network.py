"""The Network: layers, a loss and an optimizer on one backend, with a Keras-like API.

Data crosses between the host and the device only here, at the API boundary: ``fit`` moves its
data to the device once, gathers mini-batches there, and reads the loss back once per epoch.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from . import _model_file, _training, export
from ._architecture import check_input_shape, summary_table
from ._engine import reference_forced, run_backward, run_forward, select_engine
from ._structure import NetworkStructure
from .backend import get_backend
from .history import History
from .layers import Dense, Layer, Sigmoid, Softmax, get_activation
from .losses import BinaryCrossEntropy, CrossEntropy, get_loss
from .optimizers import get_optimizer
from .precision import get_precision
from .typing import Array, ArrayLike

if TYPE_CHECKING:
    from ._engine import Engine
from ._validation import as_numeric, cast_finite, check_batch_size, check_positive_int

__all__ = ["Network", "dtype_name"]


def dtype_name(dtype):
    """``"float32"`` or ``"float64"`` from a name or a dtype object (``np.float32``,
    ``np.dtype("float64")``, ``torch.float32``); other values are returned unchanged, for the
    backend to reject with its message."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    try:
        return np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rsplit(".", 1)[-1]
        return name if name in ("float32", "float64") else dtype

#: Most rows ``predict`` and ``evaluate`` send through one forward pass: bounds the buffers an
#: inference pass makes (and the fast engine keeps for the next call) whatever the data's size.
INFERENCE_CHUNK = 4096

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_device(method: Callable[Concatenate[Network, _P], _R]) -> Callable[Concatenate[Network, _P], _R]:
    """Run a Network method with its backend's device current (``backend.activate()``), so on
    ``"cupy:N"`` every array and kernel of the call lands on device N."""
    @functools.wraps(method)
    def run(self: Network, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.backend.activate():
            return method(self, *args, **kwargs)
    return run


def _locked(method: Callable[Concatenate[Network, _P], _R]) -> Callable[Concatenate[Network, _P], _R]:
    """Run a Network method holding the network's lock: layers and the engine keep per-call
    state (activations, reused buffers), so a predict from another thread must wait for a
    training step to finish (fit takes the lock once per step, see bpgpu._training)."""
    @functools.wraps(method)
    def run(self: Network, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)
    return run


#: Which live Network each built layer object belongs to (weak on both sides).
_OWNERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_layers_unshared(layers):
    """ValueError when a layer object appears twice in ``layers`` (nested ones included) or
    already belongs to another live Network: sharing would mix their gradients, and building
    this network would re-draw the other's weights."""
    seen = set()
    for layer in (sub for top in layers for sub in top.walk()):
        if id(layer) in seen:
            raise ValueError(f"the layer object {layer!r} appears twice in this network; create "
                             "a separate layer for each position")
        seen.add(id(layer))
        owner = _OWNERS.get(layer)
        if owner is not None and owner() is not None:
            raise ValueError(f"the layer object {layer!r} already belongs to another Network; "
                             "building it here would replace that network's weights. Create a "
                             "new layer with the same settings "
                             "(type(layer).from_config(layer.get_config()))")


def _warn_if_bce_mismatch(last, loss):
    """Warn when binary cross-entropy cannot fit the last layer: probabilities expected after a
    built-in layer that does not produce them, or logits expected after a Sigmoid."""
    if not isinstance(loss, BinaryCrossEntropy):
        return
    if loss.from_logits and isinstance(last, Sigmoid):
        warnings.warn("bce_with_logits (BinaryCrossEntropy(from_logits=True)) applies the sigmoid "
                      "itself: after a final Sigmoid layer it is applied twice. Drop the Sigmoid "
                      "layer, or use 'bce'.", stacklevel=3)
    elif not loss.from_logits and not isinstance(last, (Sigmoid, Softmax)) \
            and type(last).__module__.startswith("bpgpu."):
        warnings.warn(f"'bce' expects probabilities in [0, 1], but the last layer is "
                      f"{type(last).__name__}, whose outputs are not; end with a Sigmoid layer "
                      "or use 'bce_with_logits' on the raw outputs.", stacklevel=3)


class Network:
    """A feed-forward network trained by backpropagation.

    Args:
        layers: list of :class:`~bpgpu.layers.Layer` objects, applied in order.
        loss: a :class:`~bpgpu.losses.Loss` or its name (``"mse"``, ``"bce"``, ``"cross_entropy"``).
        optimizer: an :class:`~bpgpu.optimizers.Optimizer` or its name (``"sgd"``, ``"adam"``, ...).
        backend: ``"auto"``, ``"numpy"``, ``"cupy"`` (``"cupy:N"``: CUDA device N), ``"torch"``,
            ``"array_api_strict"``, a :class:`~bpgpu.Backend`, or None for ``$BPGPU_BACKEND`` (default ``"auto"``).
        dtype: ``"float32"`` (default) or ``"float64"``, as a name or a dtype (``np.float32``).
        seed: seeds the initial weights (drawn on the host, so equal on every backend), the
            shuffling in :meth:`fit` and the device random numbers (dropout). None: a fresh seed,
            recorded in ``net.seed``.
        fast: use the backend's fast training step (:mod:`bpgpu.kernels`: flat parameter
            buffers, fused kernels) where it applies; False forces the reference path. None:
            fast unless the environment variable ``BPGPU_REFERENCE=1``. Same numbers either way,
            to rounding; the fast path updates parameter arrays in place.
        input_shape: the per-sample input shape, e.g. ``(1, 8, 8)`` for a CNN on one-channel
            8x8 images: checked against every layer now (and against the data later), and shown
            with every output shape by :meth:`summary`. None: the first layer's own, if any.
        cuda_graphs: capture the fast training step as a CUDA graph and replay it (CuPy only;
            :mod:`bpgpu.kernels._cuda_graphs`): far fewer kernel launches per step for small
            networks; off by default until measured faster on your GPU.
        precision: None (default: everything in ``dtype``), ``"mixed_float16"`` or
            ``"mixed_bfloat16"`` (torch only), or a :class:`~bpgpu.precision.MixedPrecision`:
            float32 master weights and optimizer state, forward and backward passes in 16 bits,
            dynamic loss scaling for float16 (see :mod:`bpgpu.precision`). Needs
            ``dtype="float32"``; runs on the reference engine.

    Attributes: ``backend`` (its ``name``, ``device`` and the ``reason`` it was chosen),
    ``engine`` (what runs the steps: ``engine.fast`` and the ``engine.reason`` it was chosen, see
    :mod:`bpgpu._engine`), ``layers``, ``loss``, ``optimizer``, ``precision`` (the mixed
    precision policy, or None), ``input_shape`` and
    ``output_shape`` (per sample). Hooks for features built on the step (see
    :mod:`bpgpu._engine`): ``gradient_hooks``, a list of ``hook(flat_grads, rows)`` run between
    the backward pass and the update, and ``engine_requirements``, a set of feature names the
    chosen engine must serve.
    """

    def __init__(self, layers: Sequence[Layer], loss: Any = "mse", optimizer: Any = "adam",
                 backend: Any = None, dtype: Any = "float32", seed: int | None = None,
                 fast: bool | None = None, input_shape: Sequence[int] | None = None,
                 cuda_graphs: bool = False, precision: Any = None) -> None:
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of bpgpu Layer objects, got "
                            f"{type(layers).__name__}")
        strangers = [type(layer).__name__ for layer in layers if not isinstance(layer, Layer)]
        if strangers:
            raise TypeError(f"layers must all be bpgpu Layer objects; got {', '.join(strangers)}")
        if not layers:
            raise ValueError("a Network needs at least one layer")
        _check_layers_unshared(layers)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        if fast is not None and not isinstance(fast, bool):
            raise TypeError(f"fast must be True, False or None, got {fast!r}")
        self.fast = not reference_forced() if fast is None else fast
        if not isinstance(cuda_graphs, bool):
            raise TypeError(f"cuda_graphs must be True or False, got {cuda_graphs!r}")
        self.input_shape = check_input_shape(layers, input_shape)
        self.output_shape = self._output_shape(self.input_shape, layers) if self.input_shape \
            else None
        self.layers = list(layers)
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        self.backend = get_backend(backend)
        dtype = dtype_name(dtype)
        if cuda_graphs and not hasattr(self.backend.kernels, "device_scalars"):
            raise ValueError(f"cuda_graphs=True needs the CuPy backend (CUDA graphs); this "
                             f"network runs on the {self.backend.name} backend")
        self.cuda_graphs = cuda_graphs
        self.dtype = self.backend.dtype(dtype)
        self.dtype_name = dtype
        self.precision = get_precision(precision)
        if self.precision is not None:
            self.precision.bind(self.backend, dtype)
        self.seed = int(np.random.SeedSequence(seed).entropy) if seed is None else int(seed)  # type: ignore[arg-type]
        self.loss.bind(self.backend)
        self.optimizer.bind(self.backend)
        seeds = np.random.SeedSequence(self.seed).spawn(2)
        self.shuffle_rng = np.random.default_rng(seeds[0])
        self.device_rng = self.backend.make_rng(seeds[1])
        weights_rng = np.random.default_rng(self.seed)
        with self.backend.activate():
            for layer in self.layers:
                layer.build(self.backend, self.dtype, weights_rng, self.device_rng)
        self.layers[0].input_grad = False
        self._refresh_structure()
        self._data_output_shape = None  # set by _input when the input shape comes from the data
        self.gradient_hooks = []
        self.engine_requirements = set()
        if self.precision is not None:
            self.engine_requirements.add("mixed precision")
            self.gradient_hooks.append(self.precision.gradient_hook)
        if isinstance(self.layers[-1], Softmax) and isinstance(self.loss, CrossEntropy):
            warnings.warn("CrossEntropy takes logits and applies softmax itself: a final Softmax "
                          "layer applies it twice. Drop the Softmax layer.", stacklevel=2)
        _warn_if_bce_mismatch(self.layers[-1], self.loss)
        self.epoch = 0
        self.history = History()
        self.stop_training = False
        self._lock = threading.RLock()  # see _locked
        self._fit_callbacks = None  # the callbacks of the last fit (their state is saved)
        self._restored_callbacks: list[dict] | None = None  # a checkpoint's callback states
        for layer in self.structure.all_layers:
            _OWNERS[layer] = weakref.ref(self)

    @classmethod
    def from_sizes(cls, layer_sizes: Sequence[int], activation: str | None = "relu",
                   output_activation: str | None = None, init: str = "he_normal",
                   **kwargs: Any) -> Network:
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
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(Dense(n_in, n_out, init=init))
            last = i == len(sizes) - 2
            if not last:
                layers.append(get_activation(activation))
            elif output_activation is not None:
                layers.append(get_activation(output_activation))
        return cls(layers, **kwargs)

    # -- structure ---------------------------------------------------------------------------------
    def _refresh_structure(self):
        """Describe the built layers for the engines (:class:`~bpgpu._structure.NetworkStructure`)."""
        self.structure = NetworkStructure(self.layers, self.loss, self.precision)

    @property
    def engine(self) -> Engine:
        """The engine running this network's steps (:mod:`bpgpu._engine`): ``engine.fast`` and
        ``engine.reason`` say which one and why."""
        return select_engine(self)

    @property
    def _slots(self):  # the pre-0.2 name of ``structure.slots``, kept for code written against it
        return self.structure.slots

    @property
    def _all_layers(self):  # the pre-0.2 name of ``structure.all_layers``
        return self.structure.all_layers

    def _output_shape(self, shape, layers=None):
        for layer in self.layers if layers is None else layers:
            shape = layer.output_shape(shape)
        return tuple(shape)

    @property
    def n_params(self) -> int:
        """Number of learnable scalars."""
        return sum(math.prod(layer.params[key].shape) for layer, key in self.structure.slots)

    def summary(self) -> str:
        """A compact table of the layers (nested ones indented), their output shapes and
        parameter counts, and the totals. A string that displays as the table at an interactive
        prompt; ``print(net.summary())`` anywhere. Output shapes need a known input shape
        (``input_shape=`` or a first layer that implies one)."""
        return summary_table(self)

    def __repr__(self):
        return (f"Network({len(self.layers)} layers, {self.n_params} params, "
                f"backend={self.backend.name!r}, dtype={self.dtype_name!r}"
                + (f", precision={self.precision.name!r})" if self.precision else ")"))

    # -- boundary: data in ---------------------------------------------------------------------------
    def _input(self, X, name="X", borrow=False):
        """Validate features and move them to the device: a copy, unless ``borrow`` and the
        backend can read ``X`` in place (``Backend.borrow``; the caller then only reads it)."""
        X = as_numeric(X, name, self.backend)
        if X.ndim < 2:
            raise ValueError(f"{name} must have shape (n_samples, n_features), got shape "
                             f"{tuple(X.shape)}; for a single feature use X.reshape(-1, 1)")
        if self.input_shape is not None and tuple(X.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{name} has {tuple(X.shape[1:])} features per sample; the network "
                             f"expects {tuple(self.input_shape)}")
        if self.input_shape is None:  # e.g. Conv2D first: the data's shape fixes the output's
            self._data_output_shape = self._output_shape(tuple(X.shape[1:]))
        return cast_finite(X, name, self.backend, self.dtype, borrow=borrow)

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

    def _data(self, X, y, borrow=False, what="X", needs="training"):
        """Features and targets on the device; ValueError for zero samples (``what`` names the
        data, ``needs`` the call, in the message)."""
        Xd = self._input(X, borrow=borrow)
        if Xd.shape[0] == 0:
            raise ValueError(f"{what} holds no samples; {needs} needs at least one (got shape "
                             f"{tuple(Xd.shape)})")
        return Xd, self._target(y, Xd.shape[0])

    # -- the backprop chain (run by the engine, see bpgpu._engine) --------------------------------------
    def _train_batch(self, xb, yb):
        """One step on device arrays: forward, loss, backward, update. Returns the loss (0-d,
        on the device, before the update)."""
        return self.engine.train_step(xb, yb)

    # -- public step-level API ---------------------------------------------------------------------------
    @_on_device
    @_locked
    def forward(self, X: ArrayLike, training: bool = False) -> Array:
        """The network's output for ``X`` (n_samples, n_features), as a backend array.
        ``training=True`` runs training-mode layers (dropout, batch statistics)."""
        return run_forward(self.structure, self._input(X), training)

    @_on_device
    @_locked
    def compute_loss(self, output: Array, y: ArrayLike) -> Array:
        """The loss (0-d backend array) of ``output`` (from :meth:`forward`) against targets ``y``,
        penalties included; prepares :meth:`backward`."""
        target = self._target(y, output.shape[0])
        return self.structure.penalized_loss(self.loss.forward(output, target))

    @_on_device
    @_locked
    def backward(self) -> Array | None:
        """Backpropagate the gradient of the last :meth:`compute_loss` through every layer,
        filling each layer's ``grads``. Returns dL/dX, or None when the first layer skips it."""
        return run_backward(self.structure, self.loss)

    @_on_device
    @_locked
    def apply_gradients(self) -> None:
        """Update the weights with the optimizer from the gradients of the last :meth:`backward`
        (under mixed precision, unless the loss scaler finds them non-finite: then it skips)."""
        if self.precision is not None and \
                not self.precision.allow_update(self.structure.gradients()):
            return
        self.engine.apply_update()

    @_on_device
    @_locked
    def train_step(self, X: ArrayLike, y: ArrayLike) -> float:
        """One forward, backward and update on the batch ``(X, y)``; returns the loss before the
        update as a float."""
        Xd, yd = self._data(X, y)
        return self.backend.to_float(self._train_batch(Xd, yd))

    @_on_device
    @_locked
    def compute_gradients(self, X: ArrayLike, y: ArrayLike) -> tuple[float, list[np.ndarray]]:
        """``(loss, grads)`` for the batch ``(X, y)`` without changing any weight or buffer: grads
        is a list of host NumPy arrays in :meth:`get_weights` order."""
        Xd, yd = self._data(X, y, needs="compute_gradients")
        structure = self.structure
        saved = [dict(layer.buffers) for layer in structure.all_layers]
        rng_state = self.backend.rng_state(self.device_rng)  # dropout draws are put back too
        try:
            loss = structure.penalized_loss(self.loss.forward(run_forward(structure, Xd, True), yd))
            run_backward(structure, self.loss)
        finally:
            for layer, buffers in zip(structure.all_layers, saved, strict=True):
                layer.buffers = buffers
            if self.backend.rng_state(self.device_rng) != rng_state:
                self.backend.set_rng_state(self.device_rng, rng_state)
        return self.backend.to_float(loss), self.gradients()

    @_on_device
    def gradients(self) -> list[np.ndarray]:
        """The last computed gradients as host NumPy arrays, in :meth:`get_weights` order."""
        missing = [f"{type(layer).__name__}.{key}" for layer, key in self.structure.slots
                   if key not in layer.grads]
        if missing:
            raise RuntimeError(f"no gradients computed yet for {', '.join(missing)}; call "
                               "compute_gradients(X, y), train_step(X, y) or fit(...) first")
        return [self.backend.to_numpy(layer.grads[key]) for layer, key in self.structure.slots]

    # -- weights ---------------------------------------------------------------------------------------
    @_on_device
    @_locked
    def get_weights(self) -> list[np.ndarray]:
        """Learnable parameters as host NumPy arrays: layer order, nested layers depth first,
        and within a layer its parameters in order (Dense: W then b)."""
        return [self.backend.to_numpy(layer.params[key]) for layer, key in self.structure.slots]

    @_on_device
    @_locked
    def set_weights(self, weights: list[ArrayLike]) -> None:
        """Replace every learnable parameter (same order and shapes as :meth:`get_weights`).
        All arrays are checked first: a rejected call changes nothing."""
        weights = list(weights)
        if len(weights) != len(self.structure.slots):
            raise ValueError(f"set_weights got {len(weights)} arrays; the network has "
                             f"{len(self.structure.slots)} parameters (see get_weights())")
        checked = []
        for i, ((layer, key), w) in enumerate(zip(self.structure.slots, weights, strict=True)):
            name = f"weights[{i}] ({type(layer).__name__}.{key})"
            w = as_numeric(w, name, self.backend)
            expected = tuple(layer.params[key].shape)
            if tuple(w.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(w.shape)}; expected {expected}")
            checked.append(cast_finite(w, name, self.backend, self.dtype))
        for (layer, key), w in zip(self.structure.slots, checked, strict=True):
            layer.params[key] = w

    def state_dict(self, format: str = "torch") -> dict[str, np.ndarray]:
        """``{name: host NumPy array}`` of every parameter and buffer, named and laid out as the
        equivalent ``torch.nn`` modules expect (``Dense`` -> ``nn.Linear`` weight (out, in), ...);
        see :mod:`bpgpu.export` for the names of nested layers."""
        return export.state_dict(self, format=format)

    def load_state_dict(self, state: dict[str, Any], format: str = "torch") -> None:
        """Set every parameter and buffer from ``state`` in :meth:`state_dict`'s names and layouts
        (e.g. ``torch_model.state_dict()`` of the equivalent torch model, on the CPU); everything
        is checked first, so a refused state changes nothing."""
        export.load_state_dict(self, state, format=format)

    def save_safetensors(self, path: str | os.PathLike[str],
                         metadata: dict[str, str] | None = None) -> None:
        """Write :meth:`state_dict` to a safetensors file (see :mod:`bpgpu.export`); read it back
        with :func:`bpgpu.export.load_safetensors` or ``safetensors.torch.load_file``."""
        export.save_safetensors(self, path, metadata=metadata)

    # -- training loop -----------------------------------------------------------------------------------
    @_on_device
    def fit(self, X: ArrayLike, y: ArrayLike, epochs: int = 1, batch_size: int | None = 32,
            shuffle: bool = True, validation_data: tuple[ArrayLike, ...] | None = None,
            verbose: int = 1, validation_split: float | None = None,
            metrics: Sequence[Any] | None = None, callbacks: Iterable[Any] | None = None,
            initial_epoch: int | None = None, distributed: Any = None,
            sample_weight: ArrayLike | None = None,
            class_weight: Mapping[Any, float] | str | None = None,
            validation_strategy: str = "tail") -> History:
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
                samples, chosen by ``validation_strategy``.
            validation_strategy: ``"tail"`` (default) the last samples of ``(X, y)`` before any
                shuffling, as Keras does (a warning when they hold one class only);
                ``"shuffle"`` a random subset (from the network's seed); ``"stratified"`` a
                random subset holding each class in its share (classification losses).
            verbose: 0 silent; 1 a progress bar per epoch on a terminal, else one line per
                epoch; 2 one line per epoch.
            metrics: names (``"accuracy"``, ``"binary_accuracy"``, ``"precision"``, ``"recall"``,
                ``"f1"``, ``"roc_auc"``, ``"top_k_accuracy"``, ``"mae"``, ``"rmse"``, ``"r2"``,
                see :mod:`bpgpu.metrics`), :class:`~bpgpu.metrics.Metric` objects or functions,
                reported for the training batches and the validation data. None: only
                ``val_accuracy`` for classification losses.
            callbacks: list of :class:`~bpgpu.callbacks.Callback` objects.
            sample_weight: per-sample weights (n_samples,), >= 0: each batch's loss is the
                weighted mean sum(w l) / sum(w), so a weight of 2 counts a sample twice
                (scikit-learn's convention); the epoch loss is weighted the same way.
            class_weight: ``{class: weight}`` or ``"balanced"`` (n_samples / (n_classes *
                count of the class)), multiplied into the sample weights; classes are the
                cross-entropy class ids, or 0 and 1 for a one-output BCE. Weighted training
                runs on the reference engine (``"sample weights"`` has no fast version) and not
                with ``distributed``.
            initial_epoch: Keras-style resume: set the epoch counter to ``initial_epoch`` and
                run until ``epochs`` (then the index to stop before). Without it, ``fit``
                continues from ``net.epoch``, so a loaded checkpoint continues with plain ``fit``.
            distributed: a :class:`~bpgpu.distributed.Communicator` from
                :func:`bpgpu.distributed.init`: train data-parallel, every rank passing the same
                ``(X, y)``; ``batch_size`` is then per rank. N ranks with batch b train like one
                process with batch N b (see :mod:`bpgpu.distributed`).

        Per epoch the history records ``loss`` (the batch losses, each taken before its update,
        weighted by batch size; penalties included), the metrics, ``val_loss`` and ``val_*``,
        and ``lr`` when the learning rate is a schedule or set by a callback. The loss and
        metrics are read from the device once per epoch. A NaN or infinite loss raises
        :class:`~bpgpu.TrainingDivergedError` naming the epoch and step, with the network rewound
        to the weights of the last finite step (see :mod:`bpgpu._training`).
        """
        return _training.fit(self, X, y, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                             validation_data=validation_data, verbose=verbose,
                             validation_split=validation_split, metrics=metrics,
                             callbacks=callbacks, initial_epoch=initial_epoch,
                             distributed=distributed, sample_weight=sample_weight,
                             class_weight=class_weight, validation_strategy=validation_strategy)

    # -- inference ---------------------------------------------------------------------------------------
    @_on_device
    @_locked
    def predict(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Outputs for ``X`` as a host NumPy array (inference mode), computed ``batch_size`` rows
        at a time (None: all at once, in blocks of at most ``INFERENCE_CHUNK`` rows) by the
        engine's forward pass (the fast one reuses its buffers from call to call)."""
        batch_size = check_batch_size(batch_size)
        Xd = self._input(X, borrow=True)
        n = Xd.shape[0]
        bs = n if batch_size is None or n == 0 else batch_size
        bs = min(bs, INFERENCE_CHUNK) if n else bs
        engine, result = self.engine, None
        for s in range(0, max(n, 1), max(bs, 1)):
            out = self.backend.to_numpy(engine.forward(Xd[s:min(s + bs, n), ...], False))
            if bs >= n:
                return np.ascontiguousarray(out)
            if result is None:
                result = np.empty((n,) + out.shape[1:], out.dtype)
            result[s:s + out.shape[0], ...] = out
        assert result is not None  # n > bs >= 1: the loop filled it
        return result

    def predict_proba(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities for ``X`` as a host NumPy array: the loss's link applied to
        :meth:`predict`'s raw output. Cross-entropy: softmax of the logits, (N, C); BCE from
        logits: sigmoid; BCE on probabilities (a final Sigmoid): the output itself, (N, k).
        Regression losses have no probabilities (TypeError)."""
        if not self.loss.is_classification:
            raise TypeError(f"predict_proba needs a classification loss (cross_entropy or bce); "
                            f"this network's loss is {self.loss.name!r}: use predict()")
        out = self.predict(X, batch_size=batch_size)
        if isinstance(self.loss, CrossEntropy):
            z = out - out.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        if getattr(self.loss, "from_logits", False):
            return np.exp(-np.logaddexp(0.0, -out))  # sigmoid without overflow
        return out

    def predict_classes(self, X: ArrayLike, batch_size: int | None = None) -> np.ndarray:
        """Predicted classes for ``X``: cross-entropy, the argmax class ids (N,); BCE, 0/1 per
        output (threshold at probability 0.5), shape (N,) for one output, else (N, k)."""
        if not self.loss.is_classification:
            raise TypeError(f"predict_classes needs a classification loss (cross_entropy or "
                            f"bce); this network's loss is {self.loss.name!r}: use predict()")
        out = self.predict(X, batch_size=batch_size)
        if isinstance(self.loss, CrossEntropy):
            return out.argmax(axis=1)
        threshold = 0.0 if getattr(self.loss, "from_logits", False) else 0.5
        labels = (out > threshold).astype(np.int64)
        return labels.reshape(-1) if labels.ndim == 2 and labels.shape[1] == 1 else labels

    @_on_device
    @_locked
    def evaluate(self, X: ArrayLike, y: ArrayLike, metrics: Sequence[Any] | None = None,
                 batch_size: int | None = None,
                 sample_weight: ArrayLike | None = None) -> dict[str, float]:
        """``{"loss": float, metric: float, ...}`` on ``(X, y)`` in inference mode.

        Args:
            metrics: names, :class:`~bpgpu.metrics.Metric` objects or functions (as in
                :meth:`fit`). None: ``"accuracy"`` for classification losses, else nothing.
            batch_size: rows per forward pass (None: at most ``INFERENCE_CHUNK``, 4096); the
                result does not depend on it (to rounding).
            sample_weight: per-sample weights (n_samples,), >= 0: the loss and the built-in
                metrics become weighted means, as scikit-learn's metrics with ``sample_weight``.
        """
        batch_size = check_batch_size(batch_size)
        bound = _training.metric_list(metrics, self) if metrics is not None else \
            _training.metric_list(["accuracy"], self) if self.loss.is_classification else []
        Xd, yd = self._data(X, y, borrow=True, needs="evaluate")
        weights = _training.sample_weights(self, sample_weight, None, yd)
        wd = None if weights is None else self.backend.asarray(weights, dtype=self.dtype)
        return _training.evaluate_arrays(self, Xd, yd, bound, batch_size or INFERENCE_CHUNK,
                                         weights=wd)

    # -- persistence -----------------------------------------------------------------------------------------
    @_on_device
    @_locked
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the network (architecture, weights, buffers, loss and optimizer settings) and
        its training state (optimizer moments and counters, schedule position, random generator
        states, epoch counter, history) to one ``.npz`` file, atomically; after
        :func:`bpgpu.load`, ``fit`` continues exactly where this network stopped."""
        _model_file.save(self, path)
