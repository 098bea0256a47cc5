"""evaluate(metrics, batch_size, sample_weight) against scikit-learn's metrics, predict_proba and
predict_classes against PyTorch's softmax/sigmoid, the validation strategies, and the input forms
the boundary accepts (dtype objects, (n, 1) class ids, pandas nullable columns) or rejects
with a pointer (strings, scipy sparse)."""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

import bpgpu
from bpgpu.layers import Dense, Sigmoid
from bpgpu.metrics import F1, ROCAUC, Precision, Recall, TopKAccuracy
from bpgpu.optimizers import SGD

RNG = np.random.default_rng(11)
X = RNG.normal(size=(60, 5))
Y_MULTI = np.argmax(X[:, :4] + 0.8 * RNG.normal(size=(60, 4)), axis=1)
Y_BIN = (X[:, 0] + 0.5 * RNG.normal(size=60) > 0).astype(np.float64)
WEIGHTS = RNG.uniform(0.0, 3.0, size=60)


def _net(backend, outputs=4, loss="cross_entropy", layers=None, seed=2):
    layers = layers or [Dense(5, outputs)]
    return bpgpu.Network(layers, loss=loss, optimizer=SGD(lr=0.1), backend=backend,
                         dtype="float64", seed=seed)


@pytest.mark.parametrize("weighted", [False, True])
def test_multiclass_metrics_match_sklearn(backend, weighted):
    net = _net(backend)
    net.fit(X, Y_MULTI, epochs=3, batch_size=16, verbose=0)
    guess = net.predict(X).argmax(axis=1)
    w = WEIGHTS if weighted else None
    names = ["accuracy", "precision", "recall_micro", "f1_weighted", "f1_per_class",
             "precision_macro", "top_k_accuracy", TopKAccuracy(2)]
    logs = net.evaluate(X, Y_MULTI, metrics=names, batch_size=7, sample_weight=w)
    assert logs["accuracy"] == pytest.approx(skm.accuracy_score(Y_MULTI, guess, sample_weight=w))
    assert logs["precision"] == pytest.approx(skm.precision_score(
        Y_MULTI, guess, average="macro", sample_weight=w, zero_division=0))
    assert logs["precision_macro"] == logs["precision"]
    assert logs["recall_micro"] == pytest.approx(skm.recall_score(
        Y_MULTI, guess, average="micro", sample_weight=w, zero_division=0))
    assert logs["f1_weighted"] == pytest.approx(skm.f1_score(
        Y_MULTI, guess, average="weighted", sample_weight=w, zero_division=0))
    per_class = skm.f1_score(Y_MULTI, guess, average=None, labels=range(4), sample_weight=w,
                             zero_division=0)
    assert [logs[f"f1_per_class_{i}"] for i in range(4)] == pytest.approx(per_class)
    scores = net.predict(X)
    assert logs["top_2_accuracy"] == pytest.approx(skm.top_k_accuracy_score(
        Y_MULTI, scores, k=2, labels=range(4), sample_weight=w))
    assert logs["top_5_accuracy"] == 1.0


@pytest.mark.parametrize("weighted", [False, True])
def test_binary_metrics_match_sklearn(backend, weighted):
    net = _net(backend, outputs=1, loss="bce_with_logits")
    net.fit(X, Y_BIN, epochs=3, batch_size=16, verbose=0)
    z = net.predict(X)[:, 0]
    guess = (z > 0).astype(np.float64)
    w = WEIGHTS if weighted else None
    logs = net.evaluate(X, Y_BIN, metrics=["precision", "recall", "f1", "f1_macro", "roc_auc",
                                           "precision_per_class"], sample_weight=w, batch_size=9)
    assert logs["precision"] == pytest.approx(skm.precision_score(Y_BIN, guess, sample_weight=w))
    assert logs["recall"] == pytest.approx(skm.recall_score(Y_BIN, guess, sample_weight=w))
    assert logs["f1"] == pytest.approx(skm.f1_score(Y_BIN, guess, sample_weight=w))
    assert logs["f1_macro"] == pytest.approx(skm.f1_score(Y_BIN, guess, average="macro",
                                                          sample_weight=w))
    assert [logs["precision_per_class_0"], logs["precision_per_class_1"]] == pytest.approx(
        skm.precision_score(Y_BIN, guess, average=None, sample_weight=w))
    assert logs["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_BIN, z, sample_weight=w),
                                            rel=1e-12)


def test_roc_auc_on_probabilities_and_two_class_cross_entropy(backend):
    sig = _net(backend, outputs=1, loss="bce", layers=[Dense(5, 1), Sigmoid()])
    sig.fit(X, Y_BIN, epochs=2, verbose=0)
    auc = sig.evaluate(X, Y_BIN, metrics=[ROCAUC()])["roc_auc"]
    assert auc == pytest.approx(skm.roc_auc_score(Y_BIN, sig.predict(X)[:, 0]), rel=1e-12)
    ce = _net(backend, outputs=2)
    ce.fit(X, Y_BIN.astype(np.int64), epochs=2, verbose=0)
    out = ce.predict(X)
    auc = ce.evaluate(X, Y_BIN.astype(np.int64), metrics=["roc_auc"])["roc_auc"]
    assert auc == pytest.approx(skm.roc_auc_score(Y_BIN, out[:, 1] - out[:, 0]), rel=1e-12)


def test_roc_auc_counts_ties_half_and_spans_batches(backend):
    """Scores with many exact ties, spread over several batches, weighted."""
    from bpgpu.losses import BinaryCrossEntropy

    t = (RNG.random(300) > 0.4).astype(np.float64)
    z = np.round(np.where(t > 0, 1.0, -1.0) + RNG.normal(scale=1.5, size=300))  # integer ties
    w = RNG.uniform(0.0, 2.0, size=300)
    metric = ROCAUC().bind(backend, BinaryCrossEntropy(from_logits=True))
    metric.begin()
    f64 = backend.dtype("float64")
    for a in range(0, 300, 64):
        metric.update(backend.asarray(z[a:a + 64, None], dtype=f64),
                      backend.asarray(t[a:a + 64, None], dtype=f64),
                      backend.asarray(w[a:a + 64], dtype=f64))
    assert metric.result(None) == pytest.approx(skm.roc_auc_score(t, z, sample_weight=w),
                                                rel=1e-12)


def test_multilabel_f1_matches_sklearn(backend):
    Y = (X[:, :3] + 0.3 * RNG.normal(size=(60, 3)) > 0).astype(np.float64)
    net = _net(backend, outputs=3, loss="bce_with_logits")
    net.fit(X, Y, epochs=3, verbose=0)
    guess = (net.predict(X) > 0).astype(np.float64)
    logs = net.evaluate(X, Y, metrics=["f1", "f1_micro", "recall_per_class"])
    assert logs["f1"] == pytest.approx(skm.f1_score(Y, guess, average="macro", zero_division=0))
    assert logs["f1_micro"] == pytest.approx(skm.f1_score(Y, guess, average="micro"))
    assert [logs[f"recall_per_class_{i}"] for i in range(3)] == pytest.approx(
        skm.recall_score(Y, guess, average=None, zero_division=0))


def test_metrics_in_fit_are_reported_per_epoch(backend):
    net = _net(backend)
    history = net.fit(X, Y_MULTI, epochs=2, batch_size=60, shuffle=False, verbose=0,
                      metrics=["f1", Recall("micro")], validation_data=(X, Y_MULTI))
    assert set(history.history) >= {"f1", "recall_micro", "val_f1", "val_recall_micro"}
    guess = net.predict(X).argmax(axis=1)
    assert history["val_f1"][-1] == pytest.approx(skm.f1_score(Y_MULTI, guess, average="macro"))


def test_metric_arguments_are_checked(backend):
    with pytest.raises(ValueError, match="average must be one of"):
        Precision(average="samples")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        TopKAccuracy(0)
    reg = _net(backend, outputs=1, loss="mse")
    with pytest.raises(ValueError, match="metric 'f1' needs a classification loss"):
        reg.evaluate(X, Y_BIN, metrics=[F1()])
    multi = _net(backend)
    with pytest.raises(ValueError, match="'roc_auc' needs a binary output"):
        multi.evaluate(X, Y_MULTI, metrics=["roc_auc"])
    with pytest.raises(ValueError, match="average='binary' needs a binary output"):
        multi.evaluate(X, Y_MULTI, metrics=[Precision("binary")])
    binary = _net(backend, outputs=1, loss="bce_with_logits")
    with pytest.raises(ValueError, match="'top_5_accuracy' ranks class scores"):
        binary.evaluate(X, Y_BIN, metrics=["top_k_accuracy"])


def test_evaluate_defaults_and_batching(backend):
    net = _net(backend)
    whole = net.evaluate(X, Y_MULTI)
    assert set(whole) == {"loss", "accuracy"}
    chunked = net.evaluate(X, Y_MULTI, batch_size=8)
    assert chunked["loss"] == pytest.approx(whole["loss"], rel=1e-12)
    assert chunked["accuracy"] == whole["accuracy"]
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        net.evaluate(X, Y_MULTI, batch_size=0)


# -- predict_proba, predict_classes ------------------------------------------------------------------
def test_predict_proba_applies_the_losses_link(backend, torch):
    ce = _net(backend)
    logits = torch.tensor(ce.predict(X))
    np.testing.assert_allclose(ce.predict_proba(X), torch.softmax(logits, dim=1).numpy(),
                               rtol=1e-12)
    np.testing.assert_array_equal(ce.predict_classes(X), logits.numpy().argmax(axis=1))
    logit_net = _net(backend, outputs=2, loss="bce_with_logits")
    z = torch.tensor(logit_net.predict(X))
    np.testing.assert_allclose(logit_net.predict_proba(X), torch.sigmoid(z).numpy(), rtol=1e-12)
    np.testing.assert_array_equal(logit_net.predict_classes(X), (z.numpy() > 0).astype(int))
    prob_net = _net(backend, outputs=1, loss="bce", layers=[Dense(5, 1), Sigmoid()])
    np.testing.assert_array_equal(prob_net.predict_proba(X), prob_net.predict(X))
    assert prob_net.predict_classes(X).shape == (60,)
    reg = _net(backend, outputs=1, loss="mse")
    for method in (reg.predict_proba, reg.predict_classes):
        with pytest.raises(TypeError, match="needs a classification loss"):
            method(X)


# -- validation split -----------------------------------------------------------------------------------
SORTED_Y = np.sort(Y_MULTI)


def test_tail_split_of_sorted_classes_warns(backend):
    net = _net(backend)
    with pytest.warns(UserWarning, match="holds class 3 only"):
        net.fit(X, SORTED_Y, epochs=1, validation_split=0.1, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.fit(X, SORTED_Y, epochs=1, validation_split=0.1, validation_strategy="shuffle",
                verbose=0)


def test_stratified_split_keeps_class_shares(backend):
    from bpgpu._training import validation_rows

    net = _net(backend)
    yd = net._target(SORTED_Y, 60)
    train, val = validation_rows(net, yd, 0.25, "stratified")
    assert len(val) == 15 and len(train) == 45 and not set(train) & set(val)
    expected = np.bincount(SORTED_Y, minlength=4) * 15 / 60
    assert np.all(np.abs(np.bincount(SORTED_Y[val], minlength=4) - expected) < 1)
    again = validation_rows(_net(backend), yd, 0.25, "stratified")[1]
    np.testing.assert_array_equal(val, again)  # the network's seed fixes the draw
    history = net.fit(X, SORTED_Y, epochs=1, validation_split=0.25,
                      validation_strategy="stratified", verbose=0)
    expected_val = net.evaluate(X[val], SORTED_Y[val])
    assert history["val_loss"][0] == pytest.approx(expected_val["loss"], rel=1e-12)


def test_validation_strategy_is_checked(backend):
    with pytest.raises(ValueError, match="validation_strategy must be one of"):
        _net(backend).fit(X, Y_MULTI, validation_split=0.2, validation_strategy="random")
    reg = _net(backend, outputs=1, loss="mse")
    with pytest.raises(ValueError, match="'stratified' needs a classification loss"):
        reg.fit(X, Y_BIN, validation_split=0.2, validation_strategy="stratified")


# -- input forms -------------------------------------------------------------------------------------------
def test_dtype_objects_and_names_are_the_same(backend, torch):
    for dtype in (np.float32, np.dtype("float32"), torch.float32):
        assert bpgpu.Network([Dense(5, 2)], backend=backend, dtype=dtype).dtype_name == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        bpgpu.Network([Dense(5, 2)], backend=backend, dtype=np.int32)


def test_class_ids_as_a_column(backend):
    a, b = _net(backend), _net(backend)
    ha = a.fit(X, Y_MULTI, epochs=2, verbose=0)
    hb = b.fit(X, Y_MULTI.reshape(-1, 1), epochs=2, verbose=0)
    assert ha.history == hb.history


def test_pandas_nullable_columns_are_accepted():
    pd = pytest.importorskip("pandas", reason="pandas is not installed (pip install pandas)")
    frame = pd.DataFrame({f"c{i}": X[:, i] for i in range(5)})
    frame["c0"] = frame["c0"].astype("Float64")
    labels = pd.Series(Y_MULTI, dtype="Int64")
    a, b = _net("numpy"), _net("numpy")
    ha = a.fit(frame, labels, epochs=1, verbose=0)
    hb = b.fit(X, Y_MULTI, epochs=1, verbose=0)
    assert ha.history == hb.history
    missing = labels.copy()
    missing[3] = pd.NA
    with pytest.raises(ValueError, match="y has missing values"):
        a.fit(frame, missing, verbose=0)


def test_strings_and_sparse_input_get_a_pointer():
    scipy_sparse = pytest.importorskip("scipy.sparse", reason="scipy is not installed")
    net = _net("numpy")
    with pytest.raises(TypeError, match="LabelEncoder.*bpgpu.sklearn.MLPClassifier"):
        net.fit(X, np.array(["cat", "dog"] * 30), verbose=0)
    with pytest.raises(TypeError, match=r"call X.toarray\(\)"):
        net.fit(scipy_sparse.csr_matrix(X), Y_MULTI, verbose=0)
    with pytest.raises(TypeError, match=r"call X.toarray\(\)"):
        net.predict(scipy_sparse.csr_array(X))
