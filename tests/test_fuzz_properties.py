"""Property-based fuzzing of the API boundary (hypothesis): for any shapes, dtypes, values and
hyper-parameters, a call either raises a clear error (ValueError or TypeError, with a message)
and leaves the network exactly as it was, or returns finite numbers.

"Finite" is promised for data of moderate magnitude (|x| <= 1e3); values that cannot be
represented in the network's dtype (NaN, inf, 1e39 in float32) must be refused. Training may
also end in TrainingDivergedError for extreme but legal hyper-parameters (lr = 1e30): the
network then holds the last finite weights, which the property checks.

The runs are derandomized (same examples every time) and bounded by ``max_examples``.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reliability_helpers import assert_same_state, network_state

import bpgpu
from bpgpu.callbacks import EarlyStopping, ReduceLROnPlateau
from bpgpu.layers import BatchNorm, Dense, Dropout, LeakyReLU, Sigmoid, Tanh
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop
from bpgpu.schedules import CosineAnnealingLR, StepLR

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- values -----------------------------------------------------------------------------------
SPECIAL = [math.nan, math.inf, -math.inf, 1e39, -1e39, 1e300]
moderate = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=True)
#: Anything a user might pass where a number is expected.
hostile_scalar = st.one_of(
    moderate, st.sampled_from(SPECIAL + [0.0, -0.0, 1.0, 0.5, 1e-300]),
    st.integers(-3, 10), st.booleans(), st.none(), st.text(max_size=3),
    st.sampled_from([np.float32(0.1), np.float64(0.9), np.int64(2), np.int32(0), np.float16(0.5),
                     np.bool_(True), np.array(0.5), [0.1], (0.9, 0.99), {"lr": 1}]))


def _clear_error(error):
    """The error is of a promised type and says something."""
    assert isinstance(error, (ValueError, TypeError)), repr(error)
    assert len(str(error)) > 15, repr(error)


def _finite(value):
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))


# -- hyper-parameters -------------------------------------------------------------------------
CONSTRUCTORS = {
    "SGD": lambda a, b, c: SGD(lr=a, momentum=b, weight_decay=c),
    "Adam": lambda a, b, c: Adam(lr=a, betas=(b, 0.999), eps=c),
    "AdamW": lambda a, b, c: AdamW(lr=a, weight_decay=b, clip_norm=c),
    "RMSprop": lambda a, b, c: RMSprop(lr=a, alpha=b, momentum=c),
    "Dense": lambda a, b, c: Dense(a, b, l2=c),
    "Dropout": lambda a, b, c: Dropout(a),
    "BatchNorm": lambda a, b, c: BatchNorm(a, momentum=b, eps=c),
    "LeakyReLU": lambda a, b, c: LeakyReLU(a),
    "EarlyStopping": lambda a, b, c: EarlyStopping(patience=a, min_delta=b),
    "ReduceLROnPlateau": lambda a, b, c: ReduceLROnPlateau(factor=a, patience=b, cooldown=c),
    "StepLR": lambda a, b, c: StepLR(a, b, gamma=c),
    "CosineAnnealingLR": lambda a, b, c: CosineAnnealingLR(a, b, eta_min=c),
}


def _settings_are_plain(obj):
    """Every public setting a constructor kept is a finite Python number, bool, string, tuple
    of those, or a nested bpgpu object (schedules)."""
    for key, value in vars(obj).items():
        if key.startswith("_") or key in ("params", "grads", "buffers", "state"):
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, float):
                assert math.isfinite(v), (key, value)
            else:
                assert v is None or isinstance(v, (bool, int, str)) or \
                    type(v).__module__.startswith("bpgpu"), (key, value)


@settings(FUZZ, max_examples=250)
@given(name=st.sampled_from(sorted(CONSTRUCTORS)), a=hostile_scalar, b=hostile_scalar,
       c=hostile_scalar)
def test_constructors_refuse_clearly_or_keep_plain_finite_settings(name, a, b, c):
    try:
        obj = CONSTRUCTORS[name](a, b, c)
    except Exception as error:  # noqa: BLE001 - the property is about which errors escape
        _clear_error(error)
        event("refused")
        return
    event("accepted")
    _settings_are_plain(obj)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # lr = 1e30 overflows, by design
@settings(FUZZ, max_examples=60)
@given(optimizer=st.sampled_from(["SGD", "Adam", "AdamW", "RMSprop"]),
       lr=st.one_of(st.floats(0, 10), st.sampled_from([0.0, 1e-30, 1e30])),
       b=st.floats(0, 0.99), c=st.floats(0, 1), dtype=st.sampled_from(["float32", "float64"]))
def test_legal_hyper_parameters_train_to_finite_weights(optimizer, lr, b, c, dtype):
    try:
        opt = CONSTRUCTORS[optimizer](lr, b, c)
    except (ValueError, TypeError) as error:
        _clear_error(error)
        return
    net = bpgpu.Network([Dense(3, 4), Tanh(), Dense(4, 1)], optimizer=opt, backend="numpy",
                        dtype=dtype, seed=0)
    X = np.linspace(-1, 1, 24).reshape(8, 3)
    try:
        history = net.fit(X, X[:, :1] ** 2, epochs=3, batch_size=3, verbose=0)
        assert _finite(history["loss"])
    except bpgpu.TrainingDivergedError:
        pass
    assert all(_finite(w) for w in net.get_weights())


# -- data ------------------------------------------------------------------------------------
NETWORKS = {
    "mse": lambda: ([Dense(3, 4), Tanh(), Dropout(0.2), Dense(4, 2)], "mse"),
    "bce": lambda: ([Dense(3, 4), BatchNorm(4), Tanh(), Dense(4, 1), Sigmoid()], "bce"),
    "logits": lambda: ([Dense(3, 1)], "bce_with_logits"),
    "cross_entropy": lambda: ([Dense(3, 5), Tanh(), Dense(5, 3)], "cross_entropy"),
}
DTYPES = ["float16", "float32", "float64", "int8", "int64", "uint8", "bool", "complex64", "U3",
          "object"]


@st.composite
def hostile_arrays(draw, rows, width):
    """An array of about ``rows`` x ``width`` with any dtype, rank and values."""
    shape = draw(st.sampled_from([(rows, width), (rows,), (rows, width, 1), (rows, width + 1),
                                  (rows, max(width - 1, 0)), (rows, 1), ()]))
    dtype = draw(st.sampled_from(DTYPES))
    size = int(np.prod(shape))
    values = draw(st.lists(st.one_of(moderate, st.sampled_from(SPECIAL + [0.0, 1.0, 2.0])),
                           min_size=size, max_size=size))
    with np.errstate(all="ignore"):
        data = np.array(values, dtype=np.float64).reshape(shape)
        if dtype == "object":
            return data.astype(object)
        if dtype == "U3":
            return data.astype(str).astype("U3")
        if dtype.startswith(("int", "uint")):
            return np.nan_to_num(data, posinf=0, neginf=0).clip(-100, 100).astype(dtype)
        return data.astype(dtype)


def valid_arrays(rows, width, elements=moderate, dtype=np.float64):
    return st.lists(elements, min_size=rows * width, max_size=rows * width).map(
        lambda v: np.array(v, dtype=dtype).reshape(rows, width))


def valid_targets(kind, rows):
    if kind == "mse":
        return valid_arrays(rows, 2)
    if kind in ("bce", "logits"):
        return st.one_of(valid_arrays(rows, 1, st.floats(0, 1)),
                         valid_arrays(rows, 1, st.sampled_from([0, 1]), np.int64),
                         valid_arrays(rows, 1, st.booleans(), bool))
    return st.one_of(valid_arrays(rows, 1, st.integers(0, 2), np.int64).map(np.ravel),
                     valid_arrays(rows, 3, st.floats(0.01, 1)).map(
                         lambda p: p / p.sum(axis=1, keepdims=True)))


def hostile_targets(kind, rows):
    return st.one_of(hostile_arrays(rows, 1 if kind in ("bce", "logits") else 2),
                     st.lists(st.integers(-1, 3), min_size=rows, max_size=rows).map(np.array))


CALLS = {
    "predict": lambda net, X, y: net.predict(X),
    "evaluate": lambda net, X, y: net.evaluate(X, y)["loss"],
    "compute_gradients": lambda net, X, y: net.compute_gradients(X, y)[0],
    "train_step": lambda net, X, y: net.train_step(X, y),
    "fit": lambda net, X, y: net.fit(X, y, epochs=2, batch_size=None, verbose=0)["loss"],
}


@settings(FUZZ, max_examples=120)
@given(kind=st.sampled_from(sorted(NETWORKS)), bad=st.sampled_from(["nothing", "X", "y", "both"]),
       rows=st.integers(2, 6), dtype=st.sampled_from(["float32", "float64"]), data=st.data())
def test_any_data_gives_a_clear_error_and_no_change_or_a_finite_result(kind, bad, rows, dtype,
                                                                        data):
    """Every entry point in turn on one network: with valid data each returns finite numbers;
    with hostile X and/or y each refuses clearly with nothing changed (or, when the hostile
    draw happens to be valid, returns finite numbers)."""
    layers, loss = NETWORKS[kind]()
    net = bpgpu.Network(layers, loss=loss, optimizer=Adam(lr=0.01), backend="numpy",
                        dtype=dtype, seed=1)
    if bad in ("X", "both"):
        X = data.draw(hostile_arrays(data.draw(st.integers(0, 6)), 3), label="X")
    else:
        X = data.draw(valid_arrays(rows, 3), label="X")
    if bad in ("y", "both"):
        y = data.draw(hostile_targets(kind, X.shape[0] if X.ndim else rows), label="y")
    else:
        y = data.draw(valid_targets(kind, X.shape[0] if X.ndim else rows), label="y")
    for call in CALLS:
        before = network_state(net)
        try:
            result = CALLS[call](net, X, y)
        except Exception as error:  # noqa: BLE001 - the property is about which errors escape
            assert bad != "nothing", f"{call} refused valid data: {error!r}"
            _clear_error(error)
            assert_same_state(network_state(net), before)
            event(f"{call}: refused ({type(error).__name__})")
            continue
        event(f"{call}: finite result")
        assert _finite(result)
        assert all(_finite(w) for w in net.get_weights())


# -- fit's own arguments ---------------------------------------------------------------------
VALID_FIT = {"epochs": [1, 2, np.int64(2)], "batch_size": [None, 2, 4, 5, np.int32(3)],
             "validation_split": [None, 0.2, np.float32(0.3)],
             "shuffle": [True, False, np.True_], "verbose": [0], "initial_epoch": [None],
             "callbacks": [None, [], ()]}


@settings(FUZZ, max_examples=150)
@given(arguments=st.fixed_dictionaries({k: st.sampled_from(v) for k, v in VALID_FIT.items()}),
       hostile=st.one_of(st.none(), st.tuples(st.sampled_from(sorted(VALID_FIT)),
                                              hostile_scalar)))
def test_fit_arguments_refuse_clearly_or_train(arguments, hostile):
    """Valid arguments train to finite numbers; one hostile argument is refused clearly with
    nothing changed (or, when it happens to be valid, trains)."""
    if hostile is not None:
        arguments = {**arguments, hostile[0]: hostile[1]}
    net = bpgpu.Network([Dense(3, 3), BatchNorm(3), Dense(3, 1)], backend="numpy", seed=0)
    X = np.linspace(-1, 1, 30).reshape(10, 3)
    before = network_state(net)
    try:
        history = net.fit(X, X[:, :1], **arguments)
    except Exception as error:  # noqa: BLE001 - the property is about which errors escape
        one_sample = "would hold 1 sample" in str(error)  # BatchNorm's documented refusal
        assert hostile is not None or one_sample, f"fit refused {arguments}: {error!r}"
        _clear_error(error)
        assert_same_state(network_state(net), before)
        event("refused: last batch of 1" if one_sample else f"refused {hostile[0]}")
        return
    event("trained" if hostile is None else f"accepted {hostile[0]}={hostile[1]!r}")
    assert _finite(history["loss"]) and all(_finite(w) for w in net.get_weights())


def test_the_property_can_fail():
    """The oracle is not vacuous: a call that returns a non-finite result is caught."""
    with pytest.raises(AssertionError):
        assert _finite(np.array([1.0, np.inf]))
    with pytest.raises(AssertionError):
        _clear_error(ZeroDivisionError("float division by zero"))
