"""scikit-learn estimators: :class:`MLPClassifier` and :class:`MLPRegressor` trained by bpgpu.

They take scikit-learn's ``sklearn.neural_network`` parameters with the same names and meanings
(solvers ``"adam"`` and ``"sgd"``; no ``"lbfgs"``), plus ``backend`` and ``dtype``, and run
in Pipeline, cross-validation and grid search like any estimator (scikit-learn is an optional
extra: ``pip install "bpgpu[sklearn]"``).

What the parameters become:

* ``hidden_layer_sizes``, ``activation``: Dense layers with ``"relu"``, ``"tanh"``,
  ``"logistic"`` (sigmoid) or ``"identity"`` between them, initialised as scikit-learn does
  (weights and biases uniform in +-sqrt(6 / (fan_in + fan_out)), 2 instead of 6 for
  ``"logistic"``: the very draws scikit-learn makes from the same ``random_state``). The
  output: a softmax cross-entropy over the classes, one logistic output for two classes, one per
  label for multilabel targets, the identity for regression.
* ``alpha``: the L2 penalty ``alpha / (2 n_batch) * sum ||W||^2`` added to every batch loss,
  as scikit-learn adds it, with ``n_batch`` the rows of that batch (so a smaller last batch of
  an epoch is penalised more) times the mean sample weight.
* ``solver="adam"``: ``learning_rate_init``, ``beta_1``, ``beta_2``, ``epsilon`` (added where
  scikit-learn adds it: ``sqrt(v) + epsilon`` before the bias correction of ``v``);
  ``solver="sgd"``: ``momentum``, ``nesterovs_momentum`` and the ``learning_rate`` schedule
  (``"constant"``, ``"invscaling"``: init / (t + 1)^power_t with t the samples seen,
  ``"adaptive"``: divided by 5 when the loss stops improving).
* ``max_iter`` epochs at most; training stops when the loss (or, with ``early_stopping``, the
  validation score on a ``validation_fraction`` split, stratified for classifiers) has not
  improved by ``tol`` for more than ``n_iter_no_change`` epochs; early stopping then keeps the
  best weights. Every ``fit`` starts a fresh optimizer (with ``warm_start`` too: only the
  weights carry over), ``partial_fit`` continues it.
* The regression loss is reported as scikit-learn's squared error, half the mean squared
  error; training on the mean squared error with ``alpha``, the SGD rate and Adam's
  ``epsilon`` rescaled to match takes the very same steps: from the same initial weights and
  batch order, scikit-learn's weights to rounding (tested). The same ``random_state`` gives
  scikit-learn's initial weights; the batch orders (and the early-stopping split) come from
  other draws, so the trained model differs from scikit-learn's as two batch orders do.
* ``backend``: a bpgpu backend name, or ``"auto"``: the library of ``X`` when it is a CuPy,
  torch or array-api-strict array, else bpgpu's default (CuPy when a GPU answers, else NumPy).
  ``dtype``: ``"float32"``/``"float64"`` (or a NumPy dtype); None follows ``X`` (float32 stays
  float32, everything else float64), as scikit-learn does.

Fitted attributes as in scikit-learn: ``classes_``, ``n_iter_``, ``t_``, ``loss_``,
``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``,
``n_features_in_``, ``n_outputs_``, ``n_layers_``, ``out_activation_``, ``coefs_`` and
``intercepts_`` (host copies), plus ``network_``, the trained :class:`~bpgpu.Network`.

Pickling (joblib, ``n_jobs``) never pickles a bpgpu object: the network travels as the bytes
of a bpgpu model file (``.npz`` + JSON, see :mod:`bpgpu.io`) and is rebuilt from them.

Arrays from other libraries: with ``sklearn.set_config(array_api_dispatch=True)``, ``X`` as a
CuPy (or torch, array-api-strict) array trains on that library without a host copy of ``X``,
and ``predict``/``predict_proba`` return arrays of ``X``'s library and device.
"""

import math
import os
import tempfile
import warnings
from numbers import Integral, Real

import numpy as np

try:
    import sklearn
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
except ImportError as exc:  # pragma: no cover - exercised only without scikit-learn
    raise ImportError("bpgpu.sklearn needs scikit-learn: pip install \"bpgpu[sklearn]\"") from exc
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from ._snapshot import copy_weights, restore_weights
from ._training import evaluate_arrays
from .backend import get_backend
from .callbacks import Callback
from .errors import BackendUnavailableError
from .io import load, save
from .layers import Dense, get_activation
from .metrics import R2, Accuracy
from .network import Network, dtype_name
from .optimizers import SGD, Adam

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_NATIVE_MODULES = {"cupy": "cupy", "torch": "torch", "array_api_strict": "array_api_strict"}


def _native_backend_name(X):
    """The bpgpu backend whose arrays ``X`` is (cupy, torch, array_api_strict), else None."""
    return _NATIVE_MODULES.get(type(X).__module__.split(".")[0])


def _network_to_bytes(net):
    """``net`` as the bytes of a bpgpu model file (written to a private temporary folder)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network.npz")
        save(net, path)
        with open(path, "rb") as f:
            return f.read()


def _network_from_bytes(data, backend):
    """The network stored in ``data`` (bytes of a bpgpu model file), on ``backend`` when it can
    run here, else on NumPy."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "network.npz")
        with open(path, "wb") as f:
            f.write(data)
        try:
            return load(path, backend=backend)
        except BackendUnavailableError:
            return load(path, backend="numpy")


class _Monitor(Callback):
    """scikit-learn's bookkeeping after every epoch: the loss curve, the validation score, the
    no-improvement count with its stopping rule, and the SGD learning-rate schedules."""

    def __init__(self, estimator, n_samples, validation, loss_factor):
        self.estimator, self.n_samples = estimator, n_samples
        self.validation, self.loss_factor = validation, loss_factor
        self.converged = False

    def on_epoch_end(self, epoch, logs=None):
        est, net = self.estimator, self.network
        loss = logs["loss"] * self.loss_factor
        est.loss_curve_.append(loss)
        est.loss_ = loss
        est.n_iter_ += 1
        est.t_ += self.n_samples
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.validation is not None:
            Xv, yv, wv, metric = self.validation
            score = evaluate_arrays(net, Xv, yv, [metric], weights=wv)[metric.name]
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            est._no_improvement_count = (est._no_improvement_count + 1
                                         if score < est.best_validation_score_ + est.tol else 0)
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = copy_weights(net)
        else:
            est._no_improvement_count = (est._no_improvement_count + 1
                                         if loss > est.best_loss_ - est.tol else 0)
            est.best_loss_ = min(est.best_loss_, loss)
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            net.optimizer.lr = est._sgd_rate(est.learning_rate_init / (est.t_ + 1) ** est.power_t)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            if est.solver == "sgd" and est.learning_rate == "adaptive" \
                    and est._learning_rate > 1e-6:
                est._learning_rate /= 5.0
                net.optimizer.lr = est._sgd_rate(est._learning_rate)
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{what} did not improve more than tol={est.tol} for "
                          f"{est.n_iter_no_change} consecutive epochs. Setting learning rate to "
                          f"{est._learning_rate:f}")
            else:
                if est.verbose:
                    print(f"{what} did not improve more than tol={est.tol} for "
                          f"{est.n_iter_no_change} consecutive epochs. Stopping.")
                self.converged = True
                net.stop_training = True


class _AdamEpsilon(Callback):
    """Adam's epsilon where scikit-learn puts it. scikit-learn steps by
    ``lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``, which is bpgpu's (PyTorch's) rule
    ``lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps_t)`` with
    ``eps_t = eps / sqrt(1 - b2^t)``; this sets ``eps_t`` (scaled like the loss) before every
    step t."""

    def __init__(self, epsilon, beta_2, loss_factor):
        self.epsilon, self.beta_2, self.loss_factor = epsilon, beta_2, loss_factor

    def _set_next(self):
        optimizer = self.network.optimizer
        t = optimizer.step_count + 1
        optimizer.eps = self.epsilon / math.sqrt(1.0 - self.beta_2 ** t) / self.loss_factor

    def on_train_begin(self, logs=None):
        self._set_next()

    def on_batch_end(self, batch, logs=None):
        self._set_next()


class _BatchPenalty(Callback):
    """scikit-learn's L2 term of each batch, ``alpha / (2 n_b) * sum ||W||^2`` with n_b that
    batch's rows (a smaller last batch of an epoch is penalised more), counted as weights and
    scaled like the loss: ``unit = alpha / (2 mean_weight loss_factor)``, and every Dense's ``l2``
    is set to ``unit / n_b`` before the step on batch b (the engines read ``l2`` at each step).
    After training the layers keep a full batch's value."""

    def __init__(self, unit, batch_size, n_samples):
        self.unit, self.batch_size, self.n_samples = unit, batch_size, n_samples

    def _set(self, index):
        rows = min(self.batch_size, self.n_samples - index * self.batch_size)
        for layer in self.network.layers:
            if isinstance(layer, Dense):
                layer.l2 = self.unit / rows

    def on_train_begin(self, logs=None):
        self._set(0)

    def on_batch_end(self, batch, logs=None):
        following = batch + 1
        self._set(following if following * self.batch_size < self.n_samples else 0)

    def on_train_end(self, logs=None):
        self._set(0)


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, the network, the training run."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions(set(_ACTIVATIONS))],
        "solver": [StrOptions({"adam", "sgd"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"),
                             Options(Real, {np.inf})],
        "backend": [str],
        "dtype": [None, StrOptions({"float32", "float64"}), type, np.dtype],
    }

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant",
                 learning_rate_init=0.001, power_t=0.5, max_iter=200, shuffle=True,
                 random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, backend="auto",
                 dtype=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.backend = backend
        self.dtype = dtype

    # -- what subclasses define -----------------------------------------------------------------
    #: loss name -> the factor from bpgpu's loss to scikit-learn's (MSE -> squared error / 2)
    _LOSS_FACTOR = 1.0

    def _encode_targets(self, y, first, weights=None):
        """``(targets for the network, loss name, outputs)``; ``first`` on a fresh fit,
        ``weights`` the checked sample weights (or None)."""
        raise NotImplementedError

    def _validation_metric(self):
        raise NotImplementedError

    # -- the network ------------------------------------------------------------------------------
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if np.ndim(sizes) == 0 else list(sizes)
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                   for s in sizes):
            raise ValueError(f"hidden_layer_sizes must hold integers > 0, got "
                             f"{self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _batch(self, n_samples):
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going "
                          "to be clipped", stacklevel=3)
        return min(int(self.batch_size), n_samples)

    def _sgd_rate(self, rate):
        """The SGD rate for bpgpu's loss: scikit-learn's rate divided by the loss factor."""
        return rate * self._LOSS_FACTOR

    def _backend_name(self, X):
        if self.backend != "auto":
            return self.backend
        native = _native_backend_name(X)
        if native == "torch":
            return f"torch:{X.device.type}"  # the tensor's kind of device
        if native == "cupy":
            return f"cupy:{X.device.id}"  # the array's GPU
        return native or "auto"

    def _dtype_name(self, X):
        if self.dtype is not None:
            return dtype_name(self.dtype)
        return "float32" if str(X.dtype).endswith("float32") else "float64"

    def _build_network(self, X, n_outputs, loss, batch, random_state, mean_weight):
        """The network, its weights drawn from ``random_state`` (a NumPy RandomState) as
        scikit-learn draws them, then the seed of its batch orders."""
        sizes = [X.shape[1]] + self._hidden_sizes() + [n_outputs]
        # scikit-learn's initialisation, the same draws from the same RandomState: weights, then
        # biases, uniform in +-sqrt(f / (in + out)), f = 2 for logistic units, else 6
        factor = 2.0 if self.activation == "logistic" else 6.0
        weights = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = np.sqrt(factor / (n_in + n_out))
            weights += [random_state.uniform(-bound, bound, (n_in, n_out)),
                        random_state.uniform(-bound, bound, n_out)]
        seed = int(random_state.randint(np.iinfo(np.int32).max))  # bpgpu's shuffling
        # scikit-learn's penalty alpha/(2 n) ||W||^2 with n the batch's samples, counted as
        # weights (a weight of 2 is two samples), scaled like the loss (see the module doc)
        l2 = self.alpha / (2.0 * batch * mean_weight) / self._LOSS_FACTOR
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(Dense(n_in, n_out, init="zeros", l2=l2))  # set below
            if i < len(sizes) - 2:
                layers.append(get_activation(_ACTIVATIONS[self.activation]))
        optimizer: Adam | SGD
        if self.solver == "adam":
            optimizer = Adam(lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2),
                             eps=self.epsilon / math.sqrt(1.0 - self.beta_2) / self._LOSS_FACTOR)
        else:
            optimizer = SGD(lr=self._sgd_rate(self.learning_rate_init),
                            momentum=self.momentum,
                            nesterov=self.nesterovs_momentum and self.momentum > 0)
        net = Network(layers, loss=loss, optimizer=optimizer,
                      backend=get_backend(self._backend_name(X)), dtype=self._dtype_name(X),
                      seed=seed)
        net.set_weights(weights)
        return net

    # -- data -------------------------------------------------------------------------------------
    def _check_X(self, X, reset, y="no_validation"):
        """Validated features (and targets): NumPy (float32 kept, else float64), or the native
        array of a CuPy/torch/strict input under array API dispatch."""
        native = _native_backend_name(X) is not None and sklearn.get_config()["array_api_dispatch"]
        dtype = None if native else (np.float64, np.float32)
        if isinstance(y, str) and y == "no_validation":
            return validate_data(self, X, reset=reset, dtype=dtype)
        return validate_data(self, X, y, reset=reset, dtype=dtype, multi_output=True,
                             y_numeric=isinstance(self, RegressorMixin))

    def _to_network(self, X):
        """``X`` as something the network takes: its own native arrays on its device, else
        host NumPy."""
        return X if self._on_network(X) else _to_host(X)

    def _on_network(self, X):
        """True when ``X`` is a native array of the network's backend, on the same device."""
        net = self.network_
        return _native_backend_name(X) is not None and net.backend.is_native(X) \
            and _device_text(X) == _device_text_of(net.backend.device)

    # -- training ---------------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, incremental):
        """Train; a call that raises leaves the estimator's attributes as they were."""
        saved = {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}
        try:
            return self._train(X, y, sample_weight, incremental)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    def _train(self, X, y, sample_weight, incremental):
        fitted = hasattr(self, "network_")
        keep = fitted and (incremental or self.warm_start)
        X, y = self._check_X(X, reset=not keep, y=y)
        y = self._check_y(_to_host(y))
        if sample_weight is not None:
            sample_weight = _check_sample_weight(_to_host(sample_weight), np.empty((X.shape[0], 0)),
                                                 dtype=np.float64, ensure_non_negative=True)
            if not sample_weight.sum() > 0:
                raise ValueError("sample_weight sums to 0; at least one sample needs a positive "
                                 "weight")
        targets, loss, n_outputs = self._encode_targets(y, first=not keep, weights=sample_weight)
        n = X.shape[0]
        batch = self._batch(n)
        if not keep:
            library = _native_backend_name(X) or "numpy"
            self._fit_namespace = (library, _device_text(X) if library != "numpy" else "cpu")
            self._random_state = check_random_state(self.random_state)
            mean_weight = 1.0 if sample_weight is None else float(np.mean(sample_weight))
            self.network_ = self._build_network(X, n_outputs, loss, batch, self._random_state,
                                                mean_weight)
            self._learning_rate = float(self.learning_rate_init)
            self.n_iter_, self.t_, self.loss_curve_ = 0, 0, []
            self._no_improvement_count = 0
            self.validation_scores_: list[float] | None = [] if self.early_stopping else None
            self.best_validation_score_: float | None = -np.inf if self.early_stopping else None
            self.best_loss_: float | None = None if self.early_stopping else np.inf
        elif self.network_.output_shape != (n_outputs,):
            raise ValueError(f"the targets need {n_outputs} outputs but the fitted network has "
                             f"{self.network_.output_shape[0]}; fit without warm_start")
        net = self.network_
        early = self.early_stopping and not incremental
        validation = None
        rows = np.arange(n)
        if early:
            rows, val_rows = train_test_split(
                rows, random_state=self._random_state, test_size=self.validation_fraction,
                stratify=self._stratify(y))
            if val_rows.shape[0] < 2 or rows.shape[0] < 1:
                raise ValueError(f"validation_fraction={self.validation_fraction} of {n} samples "
                                 "leaves too few for early stopping; use more samples")
            Xv = net._input(_take(X, val_rows))
            yv = net._target(_take(targets, val_rows), val_rows.shape[0])
            wv = None if sample_weight is None else \
                net.backend.asarray(sample_weight[val_rows], dtype=net.dtype)
            metric = self._validation_metric().bind(net.backend, net.loss)
            validation = (Xv, yv, wv, metric)
            X, targets = _take(X, rows), _take(targets, rows)
            if sample_weight is not None:
                sample_weight = sample_weight[rows]
        if keep and not incremental:
            self._restart_optimizer()
        monitor = _Monitor(self, rows.shape[0], validation, self._LOSS_FACTOR)
        callbacks: list[Callback] = [monitor]
        if self.alpha > 0:
            mean_weight = 1.0 if sample_weight is None else float(np.mean(sample_weight))
            callbacks.append(_BatchPenalty(self.alpha / (2.0 * mean_weight) / self._LOSS_FACTOR,
                                           batch, rows.shape[0]))
        if self.solver == "adam":
            callbacks.append(_AdamEpsilon(self.epsilon, self.beta_2, self._LOSS_FACTOR))
        epochs = 1 if incremental else self.max_iter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # one-class tails etc. are ours to say
            net.fit(self._to_network(X), targets, epochs=epochs, batch_size=batch,
                    shuffle=self.shuffle, verbose=0, callbacks=callbacks,
                    sample_weight=sample_weight)
        if early:
            best = self.__dict__.pop("_best_weights", None)
            if best is not None:
                restore_weights(net, best)
        if not incremental and not monitor.converged:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                          "and the optimization hasn't converged yet.", ConvergenceWarning,
                          stacklevel=3)
        return self

    def _restart_optimizer(self):
        """A fresh optimizer state, as scikit-learn starts every ``fit`` (warm_start included;
        partial_fit continues): Adam's moments and step count, SGD's velocity and rate."""
        net = self.network_
        net.optimizer.load_state_dict({"step_count": 0, "schedule_step": 0, "state": {}})
        self._learning_rate = float(self.learning_rate_init)
        if self.solver == "sgd":
            net.optimizer.lr = self._sgd_rate(self._learning_rate)

    def _check_y(self, y):
        """Targets after validate_data, as host NumPy, in the form the subclass trains on."""
        raise NotImplementedError

    def _stratify(self, y):
        return None

    # -- fitted views -------------------------------------------------------------------------------
    @property
    def coefs_(self):
        """Weight matrices (n_in, n_out) per layer, as host NumPy arrays."""
        check_is_fitted(self, "network_")
        return self.network_.get_weights()[0::2]

    @property
    def intercepts_(self):
        """Bias vectors per layer, as host NumPy arrays."""
        check_is_fitted(self, "network_")
        return self.network_.get_weights()[1::2]

    @property
    def n_layers_(self):
        check_is_fitted(self, "network_")
        return len(self._hidden_sizes()) + 2

    @property
    def n_outputs_(self):
        check_is_fitted(self, "network_")
        return self.network_.output_shape[0]

    def _raw_output(self, X, method):
        """``(output, backend or None)``: the network output for ``X``, on the device of X (with
        its backend) when X is a native array of the network's backend, else host NumPy."""
        check_is_fitted(self, "network_")
        X = self._check_X(X, reset=False)
        self._check_namespace(X, method)
        net = self.network_
        if self._on_network(X):
            return net.forward(X), net.backend
        out = net.predict(_to_host(X))
        if _native_backend_name(X) is None:
            return out, None
        backend = get_backend(_native_backend_name(X))  # output follows the input's library
        return _on_device_of(X, out), backend

    def _check_namespace(self, X, method):
        """Under array API dispatch, ValueError when ``X`` is from another library (or device)
        than the ``X`` given to fit."""
        if not sklearn.get_config()["array_api_dispatch"]:
            return
        library = _native_backend_name(X) or "numpy"
        where = _device_text(X) if library != "numpy" else "cpu"
        if (library, where) != self._fit_namespace:
            raise ValueError(
                f"Inputs passed to {type(self).__name__}.{method}() must use the same namespace "
                f"and the same device as those passed to fit(): fit got {self._fit_namespace[0]} "
                f"arrays on {self._fit_namespace[1]}, {method}() got {library} arrays on {where}")

    # -- pickling: bpgpu's own file format, never pickled bpgpu objects --------------------------
    def __getstate__(self):
        state = dict(self.__dict__)
        net = state.pop("network_", None)
        state.pop("_best_weights", None)
        if net is not None:
            state["_network_file"] = _network_to_bytes(net)
            state["_network_backend"] = net.backend.name
        return state

    def __setstate__(self, state):
        state = dict(state)
        data = state.pop("_network_file", None)
        backend = state.pop("_network_backend", None)
        self.__dict__.update(state)
        if data is not None:
            self.network_ = _network_from_bytes(data, backend)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.array_api_support = True
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier (scikit-learn's ``MLPClassifier`` interface, trained by
    bpgpu). See the module docstring for the parameters; labels may be any values scikit-learn
    accepts (strings, integers, ...) and come back as given. Multilabel targets (an indicator
    matrix) train one logistic output per label."""

    def _check_y(self, y):
        if np.ndim(y) == 2 and np.shape(y)[1] == 1:
            warnings.warn("A column-vector y was passed when a 1d array was expected. Please "
                          "change the shape of y to (n_samples, ), for example using ravel().",
                          DataConversionWarning, stacklevel=4)
            y = np.ravel(y)
        return y

    def fit(self, X, y, sample_weight=None):
        """Train on ``X`` (n_samples, n_features) and labels ``y`` (n_samples,) or a label
        indicator matrix (n_samples, n_labels); ``sample_weight`` (n_samples,) weighs each
        sample's loss (a weight of 2 counts it twice)."""
        self.__dict__.pop("_partial_classes", None)  # left by a partial_fit that failed
        return self._fit_checked(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def _fit_checked(self, X, y, sample_weight, incremental):
        return self._fit(X, y, sample_weight, incremental)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over ``(X, y)``; ``classes`` (every label that will ever appear) is
        required on the first call."""
        if not hasattr(self, "network_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._partial_classes = np.asarray(classes)
        return self._fit_checked(X, y, sample_weight, incremental=True)

    def _encode_targets(self, y, first, weights=None):
        # validate_data already ran on X; y is checked here with the labels it may hold
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1 and type_of_target(y) == "multilabel-indicator":
            labels = y
        else:
            check_classification_targets(y)
            labels = y
        if first:
            binarizer = LabelBinarizer()
            classes = self.__dict__.pop("_partial_classes", None)
            binarizer.fit(classes if classes is not None else labels)
            self._label_binarizer = binarizer
            self.classes_ = binarizer.classes_
        if labels.ndim == 1 and not np.isin(np.unique(labels), self.classes_).all():
            if self.warm_start and not first:
                raise ValueError("warm_start can only be used where `y` has the same classes as "
                                 f"in the previous call to fit. Previously got {self.classes_}, "
                                 f"`y` has {np.unique(labels)}")
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has "
                             f"{self.classes_}. 'y' has {np.unique(labels)}.")
        multilabel = self._label_binarizer.y_type_ == "multilabel-indicator"
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"MLPClassifier needs samples of at least 2 classes; y holds 1 class "
                             f"({self.classes_[0]!r})")
        if first and weights is not None and not multilabel:
            kept = np.unique(labels[weights > 0])
            if kept.shape[0] < 2:
                raise ValueError(f"sample_weight leaves samples of 1 class only with a positive "
                                 f"weight ({kept!r}); a classifier needs at least 2 classes")
        if multilabel:
            return labels.astype(np.float64), "bce_with_logits", labels.shape[1]
        if n_classes == 2:
            return (labels == self.classes_[1]).astype(np.float64), "bce_with_logits", 1
        return np.searchsorted(self.classes_, labels), "cross_entropy", n_classes

    def _stratify(self, y):
        return y if np.ndim(y) == 1 else None

    def _validation_metric(self):
        return Accuracy()

    @property
    def out_activation_(self):
        check_is_fitted(self, "network_")
        return "softmax" if len(self.classes_) > 2 and \
            self._label_binarizer.y_type_ != "multilabel-indicator" else "logistic"

    def predict_proba(self, X):
        """Class probabilities, (n_samples, n_classes) in the order of ``classes_`` (for
        multilabel targets, each label's probability, (n_samples, n_labels))."""
        return self._proba(X, "predict_proba")

    def _proba(self, X, method):
        out, backend = self._raw_output(X, method)
        xp = backend.xp if backend is not None else np
        if self.out_activation_ == "softmax":
            z = out - xp.max(out, axis=1, keepdims=True)
            e = xp.exp(z)
            return e / xp.sum(e, axis=1, keepdims=True)
        p = 1.0 / (1.0 + xp.exp(-out))
        if self._label_binarizer.y_type_ == "multilabel-indicator":
            return p
        return xp.concat([1.0 - p, p], axis=1) if backend is not None else np.hstack([1 - p, p])

    def predict_log_proba(self, X):
        """Natural logarithm of :meth:`predict_proba`."""
        proba = self._proba(X, "predict_log_proba")
        name = _native_backend_name(proba)
        return np.log(proba) if name is None else get_backend(name).xp.log(proba)

    def predict(self, X):
        """Predicted labels (the values of ``classes_``), or an indicator matrix for
        multilabel targets."""
        out, backend = self._raw_output(X, "predict")
        if backend is not None:
            return self._native_labels(out, backend)
        if self._label_binarizer.y_type_ == "multilabel-indicator":
            return (out > 0).astype(self._label_binarizer.classes_.dtype
                                    if self._label_binarizer.classes_.dtype.kind in "iub"
                                    else np.int64)
        if len(self.classes_) == 2:
            return self.classes_[(out[:, 0] > 0).astype(np.int64)]
        return self.classes_[np.argmax(out, axis=1)]

    def _native_labels(self, out, backend):
        """Labels as arrays of the input's library, on the device of ``out`` (numeric classes;
        other classes come back as NumPy, like ``classes_``)."""
        xp = backend.xp
        if self._label_binarizer.y_type_ == "multilabel-indicator":
            return xp.astype(out > 0, xp.int64)
        index = xp.astype(out[:, 0] > 0, xp.int64) if len(self.classes_) == 2 \
            else xp.argmax(out, axis=1)
        if self.classes_.dtype.kind not in "iubf":
            return self.classes_[backend.to_numpy(index)]
        return xp.take(_on_device_of(out, self.classes_), index, axis=0)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor (scikit-learn's ``MLPRegressor`` interface, trained by
    bpgpu): identity output, squared error. See the module docstring for the parameters."""

    _LOSS_FACTOR = 0.5
    _y_1d: bool  # set by fit: whether y was 1-d (predict then returns (n_samples,))

    def _check_y(self, y):
        return y.astype(np.float64, copy=False)

    def fit(self, X, y, sample_weight=None):
        """Train on ``X`` (n_samples, n_features) and targets ``y`` (n_samples,) or
        (n_samples, n_outputs); ``sample_weight`` (n_samples,) weighs each sample's loss."""
        return self._fit_checked(X, y, sample_weight, incremental=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def _fit_checked(self, X, y, sample_weight, incremental):
        return self._fit(X, y, sample_weight, incremental)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over ``(X, y)``."""
        return self._fit_checked(X, y, sample_weight, incremental=True)

    def _encode_targets(self, y, first, weights=None):
        if y.ndim == 1:
            self._y_1d = True if first else self._y_1d
            return y.reshape(-1, 1), "mse", 1
        if first:
            self._y_1d = False
        return y, "mse", y.shape[1]

    def _validation_metric(self):
        return R2()

    @property
    def out_activation_(self):
        return "identity"

    def predict(self, X):
        """Predictions (n_samples,) for a 1-d target, else (n_samples, n_outputs)."""
        out, backend = self._raw_output(X, "predict")
        if self._y_1d:
            return backend.xp.reshape(out, (-1,)) if backend is not None else out.ravel()
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


def _to_host(a):
    """NumPy from NumPy, CuPy (``.get()``), torch, array-api-strict or anything array-like."""
    if isinstance(a, np.ndarray) or a is None:
        return a
    name = _native_backend_name(a)
    if name is not None:
        return get_backend(name).to_numpy(a)
    return np.asarray(a) if not hasattr(a, "to_numpy") else a.to_numpy()


def _device_text(X):
    """The device of a native array, as text (devices of some libraries are not comparable)."""
    from array_api_compat import device

    return _device_text_of(device(X))


def _device_text_of(device):
    """A device as text; torch's ``"cuda"`` (the current GPU, a backend's default) reads as
    ``"cuda:0"``, the device its tensors report."""
    text = str(device)
    return "cuda:0" if text == "cuda" else text


def _on_device_of(X, out):
    """Host array ``out`` as an array of ``X``'s library on ``X``'s device."""
    from array_api_compat import array_namespace, device

    return array_namespace(X).asarray(out, device=device(X))


def _take(a, rows):
    """Rows of a NumPy or native array."""
    if isinstance(a, np.ndarray):
        return a[rows]
    name = _native_backend_name(a)
    backend = get_backend(name)
    return backend.xp.take(a, backend.asarray(rows, dtype=backend.xp.int64), axis=0)
