"""bpgpu.sklearn: scikit-learn's own estimator checks in full, and the behaviour scikit-learn's
tools rely on: Pipeline, cross_val_score and GridSearchCV with two processes (pickling), labels
of any type, partial_fit, warm_start, early stopping, sample weights, reproducibility, and the
equivalence with a plain bpgpu Network trained the same way."""

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="scikit-learn is not installed (pip install bpgpu[sklearn])")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import bpgpu  # noqa: E402
from bpgpu.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# scikit-learn's own test configuration for its MLPs is max_iter=100; the same here keeps the
# checks that train (check_classifiers_train, check_regressors_train) meaningful and fast.
# In this process scikit-learn skips its array API checks (SCIPY_ARRAY_API must be set before
# scipy is imported, which pytest has done by now); test_array_api_checks_with_torch_and_array_
# api_strict below runs them in a fresh interpreter. The one other skip is scikit-learn's own
# "does not have a decision_function method" (these MLPs have none, like scikit-learn's).
CHECKED = [MLPClassifier(max_iter=100), MLPRegressor(max_iter=100)]


@parametrize_with_checks(CHECKED)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


IRIS_X, IRIS_Y = load_iris(return_X_y=True)
IRIS_NAMES = np.array(["setosa", "versicolor", "virginica"])[IRIS_Y]
REG_X, REG_Y = make_regression(n_samples=120, n_features=5, noise=0.1, random_state=0)
REG_Y = REG_Y / REG_Y.std()


def _quiet(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


def test_string_labels_in_and_out():
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(20,), max_iter=150, random_state=0,
                               learning_rate_init=0.01), IRIS_X, IRIS_NAMES)
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    predicted = clf.predict(IRIS_X)
    assert predicted.dtype == IRIS_NAMES.dtype and set(predicted) <= set(clf.classes_)
    assert clf.score(IRIS_X, IRIS_NAMES) > 0.9
    proba = clf.predict_proba(IRIS_X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], predicted)


def test_binary_and_multilabel_outputs():
    y = np.where(IRIS_Y == 0, "no", "yes")
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0), IRIS_X, y)
    assert clf.network_.output_shape == (1,) and clf.out_activation_ == "logistic"
    assert clf.predict_proba(IRIS_X).shape == (150, 2)
    indicator = np.stack([IRIS_Y == 0, IRIS_Y == 2, IRIS_X[:, 0] > 5.8], axis=1).astype(int)
    multi = _quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0), IRIS_X,
                   indicator)
    assert multi.predict(IRIS_X).shape == (150, 3) and multi.predict_proba(IRIS_X).shape == (150, 3)


def test_same_random_state_same_model_and_attributes():
    a = _quiet(MLPClassifier(hidden_layer_sizes=(10,), max_iter=20, random_state=3), IRIS_X,
               IRIS_Y)
    b = _quiet(MLPClassifier(hidden_layer_sizes=(10,), max_iter=20, random_state=3), IRIS_X,
               IRIS_Y)
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_, strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert a.loss_curve_ == b.loss_curve_ and a.n_iter_ == 20 and len(a.loss_curve_) == 20
    assert a.best_loss_ == min(a.loss_curve_) and a.validation_scores_ is None
    assert a.t_ == 20 * 150 and a.n_layers_ == 3 and a.n_outputs_ == 3
    assert [c.shape for c in a.coefs_] == [(4, 10), (10, 3)]
    c = _quiet(MLPClassifier(hidden_layer_sizes=(10,), max_iter=20, random_state=4), IRIS_X,
               IRIS_Y)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])


def test_matches_a_network_trained_the_same_way():
    """The estimator is a bpgpu Network with scikit-learn's conventions: same seed, layers,
    penalty and optimizer give the same loss curve and weights. 120 rows in batches of 40, so
    every batch has the same L2 (the smaller-last-batch case has a test of its own)."""
    from bpgpu.layers import Dense, ReLU
    from bpgpu.optimizers import Adam
    from bpgpu.sklearn import _AdamEpsilon

    est = _quiet(MLPRegressor(hidden_layer_sizes=(7,), max_iter=5, random_state=0, alpha=0.01,
                              batch_size=40, shuffle=False), REG_X, REG_Y)
    rng = np.random.RandomState(0)  # scikit-learn's initialisation, then the shuffling seed
    b1, b2 = np.sqrt(6 / (5 + 7)), np.sqrt(6 / (7 + 1))
    weights = [rng.uniform(-b1, b1, (5, 7)), rng.uniform(-b1, b1, 7),
               rng.uniform(-b2, b2, (7, 1)), rng.uniform(-b2, b2, 1)]
    seed = int(rng.randint(np.iinfo(np.int32).max))
    l2 = 0.01 / (2 * 40) / 0.5
    net = bpgpu.Network([Dense(5, 7, l2=l2), ReLU(), Dense(7, 1, l2=l2)], loss="mse",
                        optimizer=Adam(lr=1e-3, eps=2e-8), dtype="float64", seed=seed)
    net.set_weights(weights)
    # Adam's epsilon where scikit-learn puts it: 1e-8 / sqrt(1 - 0.999^t), doubled for the MSE
    history = net.fit(REG_X, REG_Y, epochs=5, batch_size=40, shuffle=False, verbose=0,
                      callbacks=[_AdamEpsilon(1e-8, 0.999, 0.5)])
    np.testing.assert_allclose(est.loss_curve_, np.array(history["loss"]) / 2, rtol=1e-12)
    for a, b in zip(est.network_.get_weights(), net.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_regression_loss_is_sklearns_half_squared_error():
    est = _quiet(MLPRegressor(hidden_layer_sizes=(6,), max_iter=3, random_state=0, alpha=0.0),
                 REG_X, REG_Y)
    # one more epoch at learning rate 0 reports the loss of the current weights
    est.set_params(learning_rate_init=1e-300, warm_start=True, max_iter=1)
    before = est.predict(REG_X)
    _quiet(est, REG_X, REG_Y)
    np.testing.assert_allclose(est.loss_curve_[-1], 0.5 * np.mean((before - REG_Y) ** 2),
                               rtol=1e-9)


def test_sgd_epoch_matches_sklearns_mlp_from_the_same_weights():
    """One full-batch SGD epoch (Nesterov momentum, L2) from the same weights: the same loss
    and the same new weights as scikit-learn's MLPRegressor."""
    from sklearn.neural_network import MLPRegressor as SkRegressor

    params = dict(hidden_layer_sizes=(4,), solver="sgd", max_iter=1, batch_size=120, alpha=0.1,
                  momentum=0.9, shuffle=False)
    start = _quiet(MLPRegressor(random_state=0, **{**params, "learning_rate_init": 1e-300}),
                   REG_X, REG_Y)
    ours = _quiet(MLPRegressor(random_state=0, learning_rate_init=0.05, **params), REG_X, REG_Y)
    sk = _quiet(SkRegressor(learning_rate_init=0.05, random_state=0, **params), REG_X, REG_Y)
    sk.coefs_ = [c.copy() for c in start.coefs_]
    sk.intercepts_ = [b.copy() for b in start.intercepts_]
    _quiet(sk.set_params(warm_start=True), REG_X, REG_Y)
    for a, b in zip(ours.coefs_ + ours.intercepts_, sk.coefs_ + sk.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    assert ours.loss_curve_[0] == pytest.approx(sk.loss_curve_[-1], rel=1e-9)


@pytest.mark.parametrize("batch_size", [40, 52], ids=["full_batches", "smaller_last_batch"])
@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_same_random_state_without_shuffling_trains_sklearns_model(task, batch_size):
    """The same random_state gives scikit-learn's initial weights; without shuffling (so the same
    batch order) Adam with L2 then gives scikit-learn's loss curve and weights, for the identity,
    logistic and softmax outputs: over full batches (3 x 40 rows, 2 x 50 for binary) and with a
    smaller last batch (52 + 52 + 16, 52 + 48), whose L2 term scikit-learn divides by its own
    rows."""
    from sklearn.neural_network import MLPClassifier as SkClassifier
    from sklearn.neural_network import MLPRegressor as SkRegressor

    params = dict(hidden_layer_sizes=(8,), max_iter=10, batch_size=batch_size, alpha=0.1,
                  shuffle=False, learning_rate_init=0.01, random_state=7)
    if task == "regression":
        ours, sk, X, y = MLPRegressor(**params), SkRegressor(**params), REG_X, REG_Y
    else:
        X, y = (IRIS_X[:120], IRIS_Y[:120]) if task == "multiclass" else \
            (IRIS_X[IRIS_Y > 0], IRIS_Y[IRIS_Y > 0])
        if task == "binary" and batch_size == 40:  # 100 rows
            params["batch_size"] = 50
        ours, sk = MLPClassifier(**params), SkClassifier(**params)
    _quiet(ours, X, y)
    _quiet(sk, X, y)
    np.testing.assert_allclose(ours.loss_curve_, sk.loss_curve_, rtol=1e-10)
    for a, b in zip(ours.coefs_ + ours.intercepts_, sk.coefs_ + sk.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_adam_matches_sklearns_mlp_from_the_same_weights_across_warm_starts(dtype):
    """Adam with L2 over batches from the same weights and batch order: scikit-learn's weights
    and losses, also after a second fit with warm_start (both restart the optimizer there).
    The epsilon is made to matter (1e-3): its placement is part of what is compared."""
    from sklearn.neural_network import MLPRegressor as SkRegressor

    params = dict(hidden_layer_sizes=(8,), solver="adam", max_iter=3, batch_size=40, alpha=0.1,
                  shuffle=False, epsilon=1e-3, learning_rate_init=0.01)
    start = _quiet(MLPRegressor(random_state=0, dtype=dtype, **{**params, "max_iter": 1,
                                                                 "learning_rate_init": 1e-300}),
                   REG_X, REG_Y)
    ours = MLPRegressor(random_state=0, warm_start=True, dtype=dtype, **params)
    sk = _quiet(SkRegressor(random_state=0, **params), REG_X, REG_Y)
    sk.coefs_ = [c.astype(np.float64) for c in start.coefs_]
    sk.intercepts_ = [b.astype(np.float64) for b in start.intercepts_]
    sk.set_params(warm_start=True)
    rtol = 1e-9 if dtype == "float64" else 1e-4
    for _ in range(2):
        _quiet(ours, REG_X, REG_Y)
        _quiet(sk, REG_X, REG_Y)
        for a, b in zip(ours.coefs_ + ours.intercepts_, sk.coefs_ + sk.intercepts_, strict=True):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2)
        np.testing.assert_allclose(ours.loss_curve_[-3:], sk.loss_curve_[-3:], rtol=rtol)


def test_pipeline_cross_val_and_grid_search_in_two_processes():
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=60,
                                                         random_state=0,
                                                         learning_rate_init=0.01))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, IRIS_X, IRIS_NAMES, cv=3, n_jobs=2)
        assert scores.mean() > 0.85
        grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2)
        grid.fit(IRIS_X, IRIS_NAMES)
    assert grid.best_estimator_.predict(IRIS_X[:5]).dtype == IRIS_NAMES.dtype
    assert set(grid.cv_results_["mean_test_score"]) and grid.best_score_ > 0.8


class _NoBpgpuPickler(pickle.Pickler):
    def reducer_override(self, obj):
        module = getattr(type(obj), "__module__", "") or ""
        if module.startswith("bpgpu.") and not module.startswith("bpgpu.sklearn"):
            raise AssertionError(f"a bpgpu object was pickled: {type(obj).__name__}")
        return NotImplemented


def test_pickling_stores_the_network_as_a_bpgpu_file():
    import io

    clf = _quiet(MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, random_state=0), IRIS_X,
                 IRIS_NAMES)
    buffer = io.BytesIO()
    _NoBpgpuPickler(buffer).dump(clf)  # raises if any bpgpu object is pickled itself
    restored = pickle.loads(buffer.getvalue())
    np.testing.assert_array_equal(restored.predict_proba(IRIS_X), clf.predict_proba(IRIS_X))
    assert isinstance(restored.network_, bpgpu.Network)
    assert clf.__getstate__()["_network_file"][:2] == b"PK"  # a zip archive (.npz)
    # training state travels too: partial_fit continues identically
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.partial_fit(IRIS_X, IRIS_NAMES)
        restored.partial_fit(IRIS_X, IRIS_NAMES)
    np.testing.assert_array_equal(restored.coefs_[0], clf.coefs_[0])


def test_partial_fit_and_warm_start():
    clf = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        clf.partial_fit(IRIS_X, IRIS_Y)
    clf.partial_fit(IRIS_X[:50], IRIS_Y[:50], classes=[0, 1, 2])
    assert list(clf.classes_) == [0, 1, 2] and clf.n_iter_ == 1
    clf.partial_fit(IRIS_X[50:], IRIS_Y[50:])
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2
    with pytest.raises(ValueError, match="`y` has classes not in `self.classes_`"):
        clf.partial_fit(IRIS_X[:5], [0, 1, 2, 3, 3])
    warm = _quiet(MLPClassifier(hidden_layer_sizes=(6,), max_iter=3, random_state=0,
                                warm_start=True), IRIS_X, IRIS_Y)
    first = warm.coefs_[0].copy()
    _quiet(warm, IRIS_X, IRIS_Y)
    assert warm.n_iter_ == 6 and not np.array_equal(first, warm.coefs_[0])
    with pytest.raises(ValueError, match="warm_start can only be used where `y` has the same"):
        _quiet(warm, IRIS_X, IRIS_Y + 5)


def test_early_stopping_keeps_the_best_validation_weights():
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(10,), max_iter=40, random_state=0,
                               early_stopping=True, n_iter_no_change=3,
                               learning_rate_init=0.05), IRIS_X, IRIS_Y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.n_iter_ < 40  # stopped: no improvement for more than 3 epochs


def test_stopping_on_the_training_loss_follows_tol():
    clf = MLPRegressor(hidden_layer_sizes=(4,), max_iter=500, random_state=0, tol=10.0,
                       n_iter_no_change=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converged: no warning
        clf.fit(REG_X, REG_Y)
    # the first epoch sets the best loss; three more without an improvement of 10 exceed 2
    # (scikit-learn's MLPRegressor stops after 4 epochs too)
    assert clf.n_iter_ == 4


def test_sample_weight_equals_repeated_rows():
    counts = np.random.default_rng(0).integers(0, 3, size=150)
    counts[:3] = 1
    kwargs = dict(hidden_layer_sizes=(5,), max_iter=10, random_state=1, batch_size=150)
    weighted = _quiet(MLPClassifier(**kwargs), IRIS_X, IRIS_Y, sample_weight=counts)
    kwargs["batch_size"] = int(counts.sum())  # one batch, as for the weighted rows
    repeated = _quiet(MLPClassifier(**kwargs), np.repeat(IRIS_X, counts, axis=0),
                      np.repeat(IRIS_Y, counts))
    np.testing.assert_allclose(weighted.predict_proba(IRIS_X), repeated.predict_proba(IRIS_X),
                               rtol=1e-9)
    with pytest.raises(ValueError, match="1 class only"):
        MLPClassifier().fit(IRIS_X, IRIS_Y, sample_weight=(IRIS_Y == 1).astype(float))


def test_dtype_follows_the_data_or_the_parameter():
    a = _quiet(MLPRegressor(hidden_layer_sizes=(3,), max_iter=2), REG_X.astype(np.float32),
               REG_Y)
    assert a.network_.dtype_name == "float32" and a.predict(REG_X).dtype == np.float32
    b = _quiet(MLPRegressor(hidden_layer_sizes=(3,), max_iter=2, dtype=np.float32), REG_X, REG_Y)
    assert b.network_.dtype_name == "float32"
    c = _quiet(MLPRegressor(hidden_layer_sizes=(3,), max_iter=2), REG_X.astype(int), REG_Y)
    assert c.network_.dtype_name == "float64"


def test_bad_parameters_are_reported_at_fit():
    for params, message in [({"solver": "lbfgs"}, "solver"), ({"activation": "gelu"}, "activation"),
                            ({"hidden_layer_sizes": (3, 0)}, "hidden_layer_sizes"),
                            ({"learning_rate_init": 0.0}, "learning_rate_init")]:
        est = MLPRegressor(**params)
        with pytest.raises(ValueError, match=message):
            est.fit(REG_X, REG_Y)
        assert not hasattr(est, "network_")
    with pytest.raises(TypeError, match=r"toarray\(\)"):
        import scipy.sparse

        MLPRegressor().fit(scipy.sparse.csr_matrix(REG_X), REG_Y)


def test_a_rejected_fit_leaves_the_fitted_estimator_as_it_was():
    clf = _quiet(MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0), IRIS_X,
                 IRIS_NAMES)
    before = clf.predict_proba(IRIS_X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(IRIS_X, np.full(150, "setosa"))
    with pytest.raises(ValueError, match="test_size|too few for early stopping"):
        clf.set_params(early_stopping=True, validation_fraction=0.01).fit(IRIS_X[::8],
                                                                           IRIS_NAMES[::8])
    assert list(clf.classes_) == ["setosa", "versicolor", "virginica"]
    np.testing.assert_array_equal(clf.predict_proba(IRIS_X), before)


def test_clone_is_unfitted():
    fitted = _quiet(MLPRegressor(hidden_layer_sizes=(3,), max_iter=2), REG_X, REG_Y)
    assert not hasattr(clone(fitted), "network_")


# scikit-learn's array API checks need SCIPY_ARRAY_API=1 before scipy is first imported, so they
# run in a fresh interpreter: torch (CPU) and array-api-strict (two devices) stand in for CuPy.
ARRAY_API_SCRIPT = textwrap.dedent("""
    import warnings
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils._testing import SkipTest
    from sklearn.utils.estimator_checks import (_yield_array_api_checks,
                                                check_array_api_input_and_values)
    from bpgpu.sklearn import MLPClassifier, MLPRegressor
    warnings.simplefilter("ignore", ConvergenceWarning)


    def same_probabilities(name, est):
        # fitted on torch tensors under dispatch: the same probabilities, as torch tensors
        import numpy as np, sklearn, torch
        from sklearn.base import clone
        from sklearn.datasets import make_classification
        X, y = make_classification(n_samples=30, n_features=10, random_state=42)
        on_numpy = clone(est).set_params(random_state=0).fit(X, y)
        with sklearn.config_context(array_api_dispatch=True):
            on_torch = clone(est).set_params(random_state=0).fit(torch.asarray(X),
                                                                  torch.asarray(y))
            proba = on_torch.predict_proba(torch.asarray(X))
        assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float64
        np.testing.assert_allclose(proba.numpy(), on_numpy.predict_proba(X), rtol=1e-12)


    for est in (MLPClassifier(hidden_layer_sizes=(8,), max_iter=5),
                MLPRegressor(hidden_layer_sizes=(8,), max_iter=5)):
        name = type(est).__name__
        checks = list(_yield_array_api_checks(est))
        if name == "MLPRegressor":  # values too (a classifier's score under dispatch is
            # computed by accuracy_score in torch's float32, so its values check cannot hold)
            for namespace in ("torch", "array_api_strict"):
                checks.append(lambda n, e, ns=namespace: check_array_api_input_and_values(
                    n, e, array_namespace=ns, device_name="cpu" if ns == "torch" else None))
        else:
            checks.append(same_probabilities)
        for check in checks:
            label = name + " " + getattr(check, "func", check).__name__ + " " + str(
                getattr(check, "keywords", ""))
            try:
                check(name, est)
                print("PASS", label)
            except SkipTest as skip:
                print("SKIP", label, skip)
""")


def test_array_api_checks_with_torch_and_array_api_strict():
    pytest.importorskip("torch", reason="PyTorch is not installed: it stands in for CuPy here")
    pytest.importorskip("array_api_strict", reason="array-api-strict is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(bpgpu.__file__)))
    env = dict(os.environ, SCIPY_ARRAY_API="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", ARRAY_API_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    passed = [line for line in run.stdout.splitlines() if line.startswith("PASS")]
    for estimator in ("MLPClassifier", "MLPRegressor"):
        ran = " ".join(line for line in passed if f" {estimator} " in f" {line} ")
        for needed in ("'torch', 'device_name': 'cpu', 'dtype_name': 'float64'",
                       "'torch', 'device_name': 'cpu', 'dtype_name': 'float32'",
                       "'array_api_strict', 'device_name': 'device1'",
                       "check_array_api_mixed_inputs", "check_array_api_same_namespace",
                       "<lambda>" if estimator == "MLPRegressor" else "same_probabilities"):
            assert needed in ran, (estimator, needed, run.stdout)


# CuPy arrays in, CuPy arrays out (on a GPU), with torch, array-api-strict and NumPy standing in
# here: tests/sklearn_native_cases.py, in a fresh pytest process because array API dispatch needs
# SCIPY_ARRAY_API=1 before SciPy is imported. One run per backend of the ``backend`` fixture, so
# the cupy one is part of the GPU check's selection and skips here with the reason.
def test_native_arrays_in_and_out(backend):
    pytest.importorskip("array_api_compat", reason="array-api-compat is not installed (scikit-"
                        "learn's array API dispatch needs it)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(bpgpu.__file__)))
    cases = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sklearn_native_cases.py")
    env = dict(os.environ, SCIPY_ARRAY_API="1",
               PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "--backend", backend.name, "--require-backend", backend.name, cases],
                         env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, \
        run.stdout[-4000:]
