"""bpgpu.sklearn on arrays of the backend's own library (CuPy on a GPU; torch, array-api-strict
or NumPy elsewhere) under ``sklearn.set_config(array_api_dispatch=True)``.

Not collected by itself (the name does not start with ``test_``): scikit-learn's array API
dispatch needs ``SCIPY_ARRAY_API=1`` before SciPy is first imported, so
``tests/test_sklearn.py::test_native_arrays_in_and_out`` runs this file in a fresh pytest
process with that variable set, once per backend of the ``backend`` fixture (``--backend NAME``).

Each case fits on native arrays with ``backend=<the backend>``, checks that the outputs are
arrays of the input's library on the input's device, and compares them with the same model
trained on NumPy arrays by the NumPy backend (same random_state: the same initial weights and
batch order, so only floating-point rounding differs).
"""

import inspect
import warnings

import numpy as np
import pytest
import sklearn
from array_api_compat import array_namespace, device
from sklearn.datasets import load_iris, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_array_api_input

from bpgpu.sklearn import MLPClassifier, MLPRegressor

IRIS_X, IRIS_Y = load_iris(return_X_y=True)
REG_X, REG_Y = make_regression(n_samples=120, n_features=5, noise=0.1, random_state=0)
REG_Y = REG_Y / REG_Y.std()


@pytest.fixture(autouse=True)
def dispatch():
    """Array API dispatch on, convergence warnings off (the runs are short on purpose)."""
    with sklearn.config_context(array_api_dispatch=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _native(backend, a, dtype=None):
    xp = backend.xp
    if dtype is None:
        dtype = xp.int64 if a.dtype.kind in "iu" else xp.float64
    return backend.asarray(a, dtype=dtype)


def _assert_follows(out, X):
    """``out`` is an array of ``X``'s library on ``X``'s device."""
    assert array_namespace(out) is array_namespace(X), (type(out), type(X))
    assert device(out) == device(X), (device(out), device(X))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_classifier_fit_predict_proba_score(backend, dtype):
    X = _native(backend, IRIS_X, getattr(backend.xp, dtype))
    y = _native(backend, IRIS_Y)
    params = dict(hidden_layer_sizes=(8,), max_iter=20, random_state=0, learning_rate_init=0.01)
    est = MLPClassifier(backend=backend.name, **params).fit(X, y)
    ref = MLPClassifier(backend="numpy", **params).fit(IRIS_X.astype(dtype), IRIS_Y)
    assert est.network_.backend.name == backend.name
    assert est.network_.dtype_name == dtype  # dtype follows X
    proba, labels = est.predict_proba(X), est.predict(X)
    for out in (proba, labels, est.predict_log_proba(X)):
        _assert_follows(out, X)
    assert proba.shape == (150, 3) and proba.dtype == getattr(backend.xp, dtype)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(backend.to_numpy(proba), ref.predict_proba(IRIS_X.astype(dtype)),
                               rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_array_equal(backend.to_numpy(labels), ref.predict(IRIS_X))
    np.testing.assert_array_equal(est.classes_, ref.classes_)
    assert est.score(X, y) == pytest.approx(ref.score(IRIS_X, IRIS_Y), abs=1e-6)
    np.testing.assert_allclose(est.loss_curve_, ref.loss_curve_, rtol=rtol)
    assert est.n_iter_ == ref.n_iter_ == 20


def test_classifier_on_the_inputs_library_by_default(backend):
    """``backend="auto"``: the network runs on the library (and device) of X."""
    X, y = _native(backend, IRIS_X), _native(backend, IRIS_Y)
    est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    if backend.name != "numpy":  # "auto" on NumPy input is bpgpu's default backend
        assert est.network_.backend.name == backend.name
    _assert_follows(est.predict(X), X)


def test_regressor_fit_predict_score(backend):
    X, y = _native(backend, REG_X), _native(backend, REG_Y)
    params = dict(hidden_layer_sizes=(16,), max_iter=30, random_state=0, learning_rate_init=0.01)
    est = MLPRegressor(backend=backend.name, **params).fit(X, y)
    ref = MLPRegressor(backend="numpy", **params).fit(REG_X, REG_Y)
    pred = est.predict(X)
    _assert_follows(pred, X)
    assert pred.shape == (120,)
    np.testing.assert_allclose(backend.to_numpy(pred), ref.predict(REG_X), rtol=1e-9, atol=1e-12)
    assert est.score(X, y) == pytest.approx(ref.score(REG_X, REG_Y), rel=1e-9)
    Y2 = backend.xp.stack([y, -y], axis=1)  # two outputs
    two = MLPRegressor(backend=backend.name, **params).fit(X, Y2)
    assert two.predict(X).shape == (120, 2)
    _assert_follows(two.predict(X), X)


# scikit-learn's StandardScaler divides 0 by 0 on its first batch of statistics (its NumPy path
# hides that under np.errstate; array-api-strict says it)
_SCALER_WARNING = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")


@_SCALER_WARNING
def test_cross_val_score_in_a_pipeline(backend):
    X, y = _native(backend, REG_X), _native(backend, REG_Y)
    folds = KFold(3, shuffle=True, random_state=0)

    def pipe(name):
        return make_pipeline(StandardScaler(), MLPRegressor(
            hidden_layer_sizes=(16,), max_iter=30, random_state=0, learning_rate_init=0.01,
            backend=name))

    scores = cross_val_score(pipe(backend.name), X, y, cv=folds)
    with sklearn.config_context(array_api_dispatch=False):
        ref = cross_val_score(pipe("numpy"), REG_X, REG_Y, cv=folds)
    np.testing.assert_allclose([float(v) for v in scores], ref, rtol=1e-8)
    assert ref.mean() > 0.5  # it learned something


@_SCALER_WARNING
def test_grid_search(backend):
    X, y = _native(backend, IRIS_X), _native(backend, IRIS_Y)
    grid = {"mlpclassifier__alpha": [1e-4, 1.0], "mlpclassifier__hidden_layer_sizes": [(4,), (16,)]}

    def search(name, X, y):
        pipe = make_pipeline(StandardScaler(), MLPClassifier(
            max_iter=30, random_state=0, learning_rate_init=0.01, backend=name))
        return GridSearchCV(pipe, grid, cv=KFold(3, shuffle=True, random_state=0)).fit(X, y)

    found = search(backend.name, X, y)
    with sklearn.config_context(array_api_dispatch=False):
        ref = search("numpy", IRIS_X, IRIS_Y)
    assert found.best_params_ == ref.best_params_
    np.testing.assert_allclose([float(v) for v in found.cv_results_["mean_test_score"]],
                               ref.cv_results_["mean_test_score"], atol=1e-6)
    assert ref.best_score_ > 0.8
    _assert_follows(found.predict(X), X)
    _assert_follows(found.predict_proba(X), X)


def test_other_namespace_at_predict_is_refused(backend):
    """Fitted on one library, predict on another: ValueError (NumPy vs array-api-strict for the
    NumPy backend)."""
    X, y = _native(backend, REG_X), _native(backend, REG_Y)
    est = MLPRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0,
                       backend=backend.name).fit(X, y)
    other = REG_X if backend.name != "numpy" else pytest.importorskip(
        "array_api_strict", reason="array-api-strict is not installed").asarray(REG_X)
    with pytest.raises(ValueError, match="same namespace"):
        est.predict(other)


@pytest.mark.parametrize("estimator", [MLPClassifier(hidden_layer_sizes=(8,), max_iter=5),
                                       MLPRegressor(hidden_layer_sizes=(8,), max_iter=5)],
                         ids=["classifier", "regressor"])
def test_sklearns_array_api_check(backend, estimator):
    """scikit-learn's own check: fitted on the library's arrays, every output (and fitted array)
    of that library and device, values as with NumPy (the regressor's; a classifier's score under
    dispatch is computed in the library's default float, so its values check cannot hold)."""
    name = backend.name.split(":")[0]
    keyword = "device_name" if "device_name" in inspect.signature(
        check_array_api_input).parameters else "device"  # scikit-learn < 1.8 calls it device
    where = {"torch": str(backend.device).split(":")[0], "cupy": None,
             "array_api_strict": None, "numpy": None}[name]
    check_array_api_input(type(estimator).__name__, estimator, array_namespace=name,
                          dtype_name="float64", check_values=isinstance(estimator, MLPRegressor),
                          **{keyword: where})
