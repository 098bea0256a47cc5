"""Sample and class weights: weighted losses against PyTorch (reduction="none" then the weighted
mean) and finite differences, the scikit-learn convention that a weight of 2 equals the row
twice, weighted training against a PyTorch loop, the fast path against the reference path, and
the rejection of bad weights."""

import numpy as np
import pytest

import bpgpu
from bpgpu.losses import MSE, BinaryCrossEntropy, CrossEntropy
from bpgpu.optimizers import SGD

RNG = np.random.default_rng(5)
N = 7
W = np.array([0.0, 1.0, 2.0, 0.5, 3.0, 1.0, 4.0])


def _cases():
    z = RNG.normal(size=(N, 3))
    ids = np.array([0, 2, 1, 1, 0, 2, 2])
    probs = RNG.random((N, 3))
    return {
        "mse": (MSE(), z, RNG.normal(size=(N, 3)), False),
        "bce": (BinaryCrossEntropy(), RNG.uniform(0.05, 0.95, (N, 2)), RNG.random((N, 2)), False),
        "bce_logits": (BinaryCrossEntropy(from_logits=True), z, RNG.random((N, 3)), False),
        "ce_ids": (CrossEntropy(), z, ids, True),
        "ce_probs": (CrossEntropy(), z, probs / probs.sum(axis=1, keepdims=True), False),
    }


CASES = _cases()


def _run(backend, loss, pred, target, int_target, weight):
    loss.bind(backend)
    f64 = backend.dtype("float64")
    t = backend.asarray(target, dtype=backend.xp.int64 if int_target else f64)
    value = loss.forward(backend.asarray(pred, dtype=f64), t, backend.asarray(weight, dtype=f64))
    return backend.to_float(value), backend.to_numpy(loss.backward())


def _torch_weighted(torch, case, pred, target, weight):
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    t = torch.as_tensor(target)
    criterion = {"mse": torch.nn.MSELoss, "bce": torch.nn.BCELoss,
                 "bce_logits": torch.nn.BCEWithLogitsLoss,
                 "ce_ids": torch.nn.CrossEntropyLoss,
                 "ce_probs": torch.nn.CrossEntropyLoss}[case](reduction="none")
    per_element = criterion(p, t)
    per_sample = per_element if per_element.ndim == 1 else per_element.mean(dim=1)
    w = torch.as_tensor(weight)
    value = (w * per_sample).sum() / w.sum()
    value.backward()
    return float(value.detach()), p.grad.numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_losses_match_torch(backend, torch, case):
    loss, pred, target, int_target = CASES[case]
    value, grad = _run(backend, loss, pred, target, int_target, W)
    expected_value, expected_grad = _torch_weighted(torch, case, pred, target, W)
    np.testing.assert_allclose(value, expected_value, rtol=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("case", list(CASES))
def test_weighted_losses_finite_differences(case):
    backend = bpgpu.get_backend("numpy")
    loss, pred, target, int_target = CASES[case]
    _, grad = _run(backend, loss, pred, target, int_target, W)
    eps = 1e-6
    numeric = np.zeros_like(pred)
    for idx in np.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (_run(backend, loss, up, target, int_target, W)[0]
                        - _run(backend, loss, down, target, int_target, W)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_equal_weights_are_the_plain_mean_and_zero_weights_cost_nothing(backend, case):
    loss, pred, target, int_target = CASES[case]
    loss.bind(backend)
    f64 = backend.dtype("float64")
    t = backend.asarray(target, dtype=backend.xp.int64 if int_target else f64)
    plain = backend.to_float(loss.forward(backend.asarray(pred, dtype=f64), t))
    plain_grad = backend.to_numpy(loss.backward())
    value, grad = _run(backend, loss, pred, target, int_target, np.full(N, 3.0))
    assert value == pytest.approx(plain, rel=1e-12)
    np.testing.assert_allclose(grad, plain_grad, rtol=1e-12, atol=1e-18)
    value, grad = _run(backend, loss, pred, target, int_target, np.zeros(N))
    assert value == 0.0 and not grad.any()


# -- fit ------------------------------------------------------------------------------------------
X = RNG.normal(size=(23, 4))
Y_CLS = (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 0.5)
Y_REG = X[:, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]])
COUNTS = RNG.integers(0, 4, size=23)


def _net(backend, loss="cross_entropy", outputs=3, fast=None, seed=3):
    return bpgpu.Network.from_sizes([4, 6, outputs], activation="tanh", loss=loss,
                                    optimizer=SGD(lr=0.1, momentum=0.9), backend=backend,
                                    dtype="float64", seed=seed, fast=fast)


@pytest.mark.parametrize("loss, y, outputs", [("cross_entropy", Y_CLS, 3), ("mse", Y_REG, 2)])
def test_full_batch_weights_equal_duplicated_rows(backend, loss, y, outputs):
    weighted, repeated = _net(backend, loss, outputs), _net(backend, loss, outputs)
    hw = weighted.fit(X, y, epochs=5, batch_size=None, sample_weight=COUNTS, verbose=0)
    hr = repeated.fit(np.repeat(X, COUNTS, axis=0), np.repeat(y, COUNTS, axis=0), epochs=5,
                      batch_size=None, verbose=0)
    np.testing.assert_allclose(hw["loss"], hr["loss"], rtol=1e-10)
    for a, b in zip(weighted.get_weights(), repeated.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_class_weight_equals_duplicating_a_class(backend):
    weighted, repeated = _net(backend), _net(backend)
    weighted.fit(X, Y_CLS, epochs=3, batch_size=None, class_weight={1: 2}, verbose=0)
    counts = np.where(Y_CLS == 1, 2, 1)
    repeated.fit(np.repeat(X, counts, axis=0), np.repeat(Y_CLS, counts), epochs=3,
                 batch_size=None, verbose=0)
    for a, b in zip(weighted.get_weights(), repeated.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_balanced_class_weight_is_sklearns(backend):
    from sklearn.utils.class_weight import compute_class_weight

    from bpgpu._training import sample_weights

    net = _net(backend)
    yd = net._target(Y_CLS, len(Y_CLS))
    expected = compute_class_weight("balanced", classes=np.unique(Y_CLS), y=Y_CLS)[Y_CLS]
    np.testing.assert_allclose(sample_weights(net, None, "balanced", yd), expected, rtol=1e-12)
    both = sample_weights(net, np.arange(23.0), "balanced", yd)
    np.testing.assert_allclose(both, expected * np.arange(23.0), rtol=1e-12)


def test_weighted_minibatch_training_matches_a_torch_loop(torch):
    net = _net("numpy", fast=False)
    weights0 = net.get_weights()
    w = RNG.uniform(0.0, 2.0, size=23)
    history = net.fit(X, Y_CLS, epochs=2, batch_size=8, shuffle=False, sample_weight=w, verbose=0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        for i, linear in enumerate((model[0], model[2])):
            linear.weight.copy_(torch.tensor(weights0[2 * i].T))
            linear.bias.copy_(torch.tensor(weights0[2 * i + 1]))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    epoch_losses = []
    for _ in range(2):
        total = 0.0
        for start in range(0, 23, 8):
            xb = torch.tensor(X[start:start + 8])
            yb = torch.tensor(Y_CLS[start:start + 8])
            wb = torch.tensor(w[start:start + 8])
            opt.zero_grad()
            loss = (wb * criterion(model(xb), yb)).sum() / wb.sum()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * float(wb.sum())
        epoch_losses.append(total / w.sum())
    np.testing.assert_allclose(history["loss"], epoch_losses, rtol=1e-10)
    np.testing.assert_allclose(net.get_weights()[0], model[0].weight.detach().numpy().T,
                               rtol=1e-9, atol=1e-12)


def test_weighted_fit_runs_on_the_reference_engine_and_says_so():
    from bpgpu.callbacks import Callback

    class EngineReason(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.reason = self.network.engine.reason

    w = RNG.uniform(0.0, 2.0, size=23)
    fast, reference = _net("numpy", fast=True), _net("numpy", fast=False)
    seen = EngineReason()
    hf = fast.fit(X, Y_CLS, epochs=3, batch_size=8, sample_weight=w, verbose=0, callbacks=[seen])
    assert seen.reason == "reference: sample weights has no fast version"
    assert fast.engine.fast  # the requirement lasts for the weighted call only
    hr = reference.fit(X, Y_CLS, epochs=3, batch_size=8, sample_weight=w, verbose=0)
    np.testing.assert_allclose(hf["loss"], hr["loss"], rtol=1e-12)
    for a, b in zip(fast.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    # an unweighted fit afterwards runs fast again, continuing from the same state
    fast.fit(X, Y_CLS, epochs=1, batch_size=8, verbose=0)
    reference.fit(X, Y_CLS, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(fast.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_weighted_evaluate_on_the_fast_engine_equals_reference():
    w = RNG.uniform(0.0, 2.0, size=23)
    fast, reference = _net("numpy", fast=True), _net("numpy", fast=False)
    a = fast.evaluate(X, Y_CLS, sample_weight=w, metrics=["accuracy", "f1"])
    b = reference.evaluate(X, Y_CLS, sample_weight=w, metrics=["accuracy", "f1"])
    assert a == pytest.approx(b, rel=1e-12)


def test_epoch_loss_and_evaluate_are_weighted_means(backend, torch):
    net = bpgpu.Network.from_sizes([4, 3], loss="cross_entropy", optimizer=SGD(lr=0.0),
                                   backend=backend, dtype="float64", seed=1)
    w = RNG.uniform(0.0, 2.0, size=23)
    history = net.fit(X, Y_CLS, epochs=1, batch_size=5, sample_weight=w, verbose=0)
    logits = torch.tensor(net.predict(X))
    per_sample = torch.nn.functional.cross_entropy(logits, torch.tensor(Y_CLS), reduction="none")
    expected = float((torch.tensor(w) * per_sample).sum() / w.sum())
    assert history["loss"][0] == pytest.approx(expected, rel=1e-10)
    assert net.evaluate(X, Y_CLS, sample_weight=w, batch_size=4)["loss"] == \
        pytest.approx(expected, rel=1e-10)


def test_validation_split_carries_the_weights(backend):
    net = _net(backend)
    w = RNG.uniform(0.5, 2.0, size=23)
    history = net.fit(X, Y_CLS, epochs=1, validation_split=0.3, sample_weight=w, verbose=0)
    split = int(np.floor(23 * 0.7))
    expected = net.evaluate(X[split:], Y_CLS[split:], sample_weight=w[split:])
    assert history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-10)
    assert history["val_accuracy"][0] == pytest.approx(expected["accuracy"], rel=1e-12)


def test_validation_data_takes_weights_as_a_third_item(backend):
    net = _net(backend)
    w = RNG.uniform(0.5, 2.0, size=23)
    history = net.fit(X, Y_CLS, epochs=1, validation_data=(X, Y_CLS, w), verbose=0)
    expected = net.evaluate(X, Y_CLS, sample_weight=w)
    assert history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-10)
    unweighted = net.evaluate(X, Y_CLS)["loss"]
    assert abs(expected["loss"] - unweighted) > 1e-6  # the weights made a difference


@pytest.mark.parametrize("kwargs, error, message", [
    ({"sample_weight": -np.ones(23)}, ValueError, "sample_weight must hold finite numbers >= 0"),
    ({"sample_weight": np.full(23, np.nan)}, ValueError, "sample_weight contains 23 NaN"),
    ({"sample_weight": np.ones(22)}, ValueError, r"sample_weight must have shape \(23,\)"),
    ({"sample_weight": np.ones((23, 2))}, ValueError, r"sample_weight must have shape \(23,\)"),
    ({"sample_weight": ["a"] * 23}, TypeError, "sample_weight must hold real numbers"),
    ({"class_weight": "even"}, ValueError, "class_weight must be a dict"),
    ({"class_weight": [1, 2]}, TypeError, "class_weight must be a dict"),
    ({"class_weight": {"a": 1}}, ValueError, "class_weight keys must be integer class ids"),
    ({"class_weight": {1: -2}}, ValueError, r"class_weight\[1\] must be a finite number >= 0"),
])
def test_bad_weights_are_rejected_and_change_nothing(backend, kwargs, error, message):
    net = _net(backend)
    before = net.get_weights()
    with pytest.raises(error, match=message):
        net.fit(X, Y_CLS, epochs=1, verbose=0, **kwargs)
    assert net.epoch == 0
    for a, b in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_class_weight_needs_class_targets(backend):
    net = _net(backend, loss="mse", outputs=2)
    with pytest.raises(ValueError, match="class_weight needs class targets"):
        net.fit(X, Y_REG, class_weight="balanced", verbose=0)
