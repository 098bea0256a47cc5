"""Losses: values and gradients against PyTorch (float64, 1e-9), finite-difference checks on every
backend, names, and the validation of targets at the network boundary."""

import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Sigmoid, Softmax
from bpgpu.losses import MSE, BinaryCrossEntropy, CrossEntropy, get_loss

RNG = np.random.default_rng(0)
N, C = 6, 4


def _run(backend, loss, pred, target, int_target=False):
    """(value, dL/dpred) as host float64 from ``loss`` on ``backend``."""
    loss.bind(backend)
    f64 = backend.dtype("float64")
    target = backend.asarray(target, dtype=backend.xp.int64 if int_target else f64)
    value = loss.forward(backend.asarray(pred, dtype=f64), target)
    return backend.to_float(value), backend.to_numpy(loss.backward())


def _torch_run(torch, criterion, pred, target):
    p = torch.tensor(pred, dtype=torch.float64, requires_grad=True)
    value = criterion(p, torch.as_tensor(target))
    value.backward()
    return float(value.detach()), p.grad.numpy()


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-15)


# -- the cases (pred, target), shared by the torch and gradcheck tests ----------------------------------
def _mse_case():
    return RNG.standard_normal((N, 3)), RNG.standard_normal((N, 3))


def _bce_case():
    p = np.array([[0.0, 1.0, 0.3], [1.0, 0.0, 0.999999], [1e-45, 0.5, 0.01], [0.2, 1e-12, 0.7]])
    t = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.25, 0.0], [1.0, 1.0, 0.5]])
    return p, t


def _logits_case():
    z = np.array([[-1000.0, 1000.0, 0.3], [40.0, -40.0, 2.0], [0.0, -3.0, 5.0]])
    t = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.5], [1.0, 0.0, 0.2]])
    return z, t


def _ce_ids_case():
    return 3.0 * RNG.standard_normal((N, C)), np.array([0, 3, 1, 1, 2, 3])


def _ce_probs_case():
    t = RNG.random((N, C))
    return 3.0 * RNG.standard_normal((N, C)), t / t.sum(axis=1, keepdims=True)


# -- PyTorch ---------------------------------------------------------------------------------------------
def test_mse_matches_torch(backend, torch):
    pred, target = _mse_case()
    value, grad = _run(backend, MSE(), pred, target)
    expected = _torch_run(torch, torch.nn.MSELoss(), pred, target)
    _assert_close(value, expected[0])
    _assert_close(grad, expected[1])


def test_bce_on_probabilities_matches_torch_including_0_and_1(backend, torch):
    p, t = _bce_case()
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        value, grad = _run(backend, BinaryCrossEntropy(), p, t)
    assert np.isfinite(value) and np.isfinite(grad).all()
    # torch clamps each log term at -100: p = 0 with t = 1 costs exactly 100 per element.
    expected_value, expected_grad = _torch_run(torch, torch.nn.BCELoss(), p, t)
    _assert_close(value, expected_value)
    _assert_close(grad, expected_grad)


def test_bce_is_finite_in_float32_at_0_and_1(backend):
    p, t = _bce_case()
    loss = BinaryCrossEntropy().bind(backend)
    f32 = backend.dtype("float32")
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        value = backend.to_float(loss.forward(backend.asarray(p, dtype=f32), backend.asarray(t, dtype=f32)))
        grad = backend.to_numpy(loss.backward())
    assert np.isfinite(value) and np.isfinite(grad).all() and grad.dtype == np.float32
    # closed form of torch's clamped BCE on the float32-rounded probabilities
    p32 = p.astype(np.float32).astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p, log_q = np.maximum(np.log(p32), -100.0), np.maximum(np.log(1.0 - p32), -100.0)
    assert value == pytest.approx(-np.mean(t * log_p + (1.0 - t) * log_q), rel=1e-5)


def test_bce_single_saturated_element_costs_100(backend):
    value, _ = _run(backend, BinaryCrossEntropy(), np.array([[0.0]]), np.array([[1.0]]))
    assert value == 100.0
    value, _ = _run(backend, BinaryCrossEntropy(), np.array([[1.0]]), np.array([[1.0]]))
    assert value == 0.0


def test_bce_from_logits_matches_torch(backend, torch):
    z, t = _logits_case()
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        value, grad = _run(backend, BinaryCrossEntropy(from_logits=True), z, t)
    expected = _torch_run(torch, torch.nn.BCEWithLogitsLoss(), z, t)
    _assert_close(value, expected[0])
    _assert_close(grad, expected[1])


def test_cross_entropy_with_class_ids_matches_torch(backend, torch):
    z, ids = _ce_ids_case()
    value, grad = _run(backend, CrossEntropy(), z, ids, int_target=True)
    expected = _torch_run(torch, torch.nn.CrossEntropyLoss(), z, ids)
    _assert_close(value, expected[0])
    _assert_close(grad, expected[1])


def test_cross_entropy_with_probability_rows_matches_torch(backend, torch):
    z, probs = _ce_probs_case()
    value, grad = _run(backend, CrossEntropy(), z, probs)
    expected = _torch_run(torch, torch.nn.CrossEntropyLoss(), z, probs)
    _assert_close(value, expected[0])
    _assert_close(grad, expected[1])


def test_cross_entropy_one_hot_equals_class_ids(backend):
    z, ids = _ce_ids_case()
    by_ids = _run(backend, CrossEntropy(), z, ids, int_target=True)
    by_rows = _run(backend, CrossEntropy(), z, np.eye(C)[ids])
    _assert_close(by_rows[0], by_ids[0])
    _assert_close(by_rows[1], by_ids[1])


def test_cross_entropy_is_stable_for_huge_logits(backend, torch):
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, 1000.0]])
    ids = np.array([1, 2])
    for dtype in ("float32", "float64"):
        loss = CrossEntropy().bind(backend)
        with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
            warnings.simplefilter("error")
            value = loss.forward(backend.asarray(z, dtype=backend.dtype(dtype)),
                                 backend.asarray(ids, dtype=backend.xp.int64))
            grad = backend.to_numpy(loss.backward())
        assert backend.to_float(value) == pytest.approx(1000.0, rel=1e-6)  # (2000 + 0) / 2
        assert np.isfinite(grad).all()
    expected = _torch_run(torch, torch.nn.CrossEntropyLoss(), z, ids)
    _assert_close(_run(backend, CrossEntropy(), z, ids, int_target=True)[1], expected[1])


# -- finite differences -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["mse", "bce", "bce_logits", "ce_ids", "ce_probs"])
def test_loss_gradcheck(backend, case):
    if case == "bce":  # finite differences need p away from 0 and 1 (the clamp has a kink)
        loss, pred, target = BinaryCrossEntropy(), RNG.uniform(0.05, 0.95, (N, 2)), RNG.random((N, 2))
    else:
        loss, (pred, target) = {
            "mse": (MSE(), _mse_case()),
            "bce_logits": (BinaryCrossEntropy(from_logits=True), _logits_case()),
            "ce_ids": (CrossEntropy(), _ce_ids_case()),
            "ce_probs": (CrossEntropy(), _ce_probs_case()),
        }[case]
        if case == "bce_logits":
            pred = pred / 1000.0 * 3.0  # keep the logits in a range where differences resolve
    errors = bpgpu.gradient_errors(loss, pred, target, backend=backend)
    assert set(errors) == {"pred"}
    assert errors["pred"] < 1e-7, errors


# -- names -------------------------------------------------------------------------------------------------
def test_loss_names():
    assert type(get_loss("mse")) is MSE
    bce = get_loss("bce")
    assert type(bce) is BinaryCrossEntropy and bce.from_logits is False
    assert get_loss("bce_with_logits").from_logits is True
    assert type(get_loss("cross_entropy")) is CrossEntropy
    assert type(get_loss("MSE")) is MSE
    instance = CrossEntropy()
    assert get_loss(instance) is instance
    net = bpgpu.Network([Dense(2, 3)], loss="cross_entropy", backend="numpy", seed=0)
    assert isinstance(net.loss, CrossEntropy)


@pytest.mark.parametrize("bad", ["hinge", "", None, 3])
def test_unknown_loss_name(bad):
    with pytest.raises(ValueError, match="unknown loss") as info:
        get_loss(bad)
    for name in ("mse", "bce", "cross_entropy"):
        assert name in str(info.value)


def test_bce_from_logits_must_be_a_bool():
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        BinaryCrossEntropy(from_logits="yes")


def test_final_softmax_with_cross_entropy_warns():
    with pytest.warns(UserWarning, match="applies it twice"):
        bpgpu.Network([Dense(2, 3), Softmax()], loss="cross_entropy", backend="numpy", seed=0)


# -- accuracy ------------------------------------------------------------------------------------------------
def test_accuracy_definitions(backend):
    f64 = backend.dtype("float64")
    z = np.array([[2.0, 1.0, 0.0], [0.0, 0.5, 3.0], [1.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    ids = np.array([0, 2, 0, 1])  # argmax is [0, 2, 1, 2]: 2 of 4 right
    ce = CrossEntropy().bind(backend)
    acc = ce.accuracy(backend.asarray(z, dtype=f64), backend.asarray(ids, dtype=backend.xp.int64))
    assert backend.to_float(acc) == 0.5
    acc = ce.accuracy(backend.asarray(z, dtype=f64), backend.asarray(np.eye(3)[ids], dtype=f64))
    assert backend.to_float(acc) == 0.5
    p = np.array([[0.9], [0.2], [0.6], [0.4]])
    t = np.array([[1.0], [0.0], [0.0], [0.0]])  # 3 of 4 right at threshold 0.5
    bce = BinaryCrossEntropy().bind(backend)
    assert backend.to_float(bce.accuracy(backend.asarray(p, dtype=f64), backend.asarray(t, dtype=f64))) == 0.75
    logits = BinaryCrossEntropy(from_logits=True).bind(backend)
    z1 = np.log(p / (1 - p))
    assert backend.to_float(logits.accuracy(backend.asarray(z1, dtype=f64),
                                            backend.asarray(t, dtype=f64))) == 0.75
    with pytest.raises(TypeError, match="accuracy is not defined"):
        MSE().accuracy(None, None)


# -- target validation at the boundary ------------------------------------------------------------------------
def _classifier(backend, loss="cross_entropy", outputs=3):
    layers = [Dense(2, outputs)] + ([Sigmoid()] if loss == "bce" else [])
    return bpgpu.Network(layers, loss=loss, optimizer="sgd", backend=backend, dtype="float64", seed=0)


def _assert_rejected(net, y, error, pattern, X=None):
    X = np.zeros((len(y) if hasattr(y, "__len__") else 3, 2)) if X is None else X
    before = net.get_weights()
    with pytest.raises(error, match=pattern):
        net.fit(X, y, epochs=1, verbose=0)
    with pytest.raises(error, match=pattern):
        net.evaluate(X, y)
    with pytest.raises(error, match=pattern):
        net.train_step(X, y)
    for old, new in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert net.optimizer.step_count == 0


@pytest.mark.parametrize("labels", [[0, 1, 3], [-1, 0, 1], [0, 7, 2]])
def test_class_labels_outside_range(backend, labels):
    _assert_rejected(_classifier(backend), np.array(labels), ValueError,
                     r"class labels must lie in \[0, 3\) for a network with 3 outputs")


def test_native_class_labels_outside_range(backend):
    net = _classifier(backend)
    y = backend.asarray(np.array([0, 1, 3]), dtype=backend.xp.int64)
    _assert_rejected(net, y, ValueError, r"class labels must lie in \[0, 3\)")


def test_fractional_and_boolean_class_ids(backend):
    net = _classifier(backend)
    _assert_rejected(net, np.array([0.0, 1.5, 2.0]), ValueError, "whole numbers")
    _assert_rejected(net, np.array([True, False, True]), TypeError, "class ids must be integers")
    # whole-valued floats are accepted as ids
    assert np.isfinite(net.evaluate(np.zeros((3, 2)), np.array([0.0, 1.0, 2.0]))["loss"])


@pytest.mark.parametrize("bad", [[[1.5], [0.0], [1.0]], [[0.0], [-0.25], [1.0]]])
def test_bce_targets_outside_0_1(backend, bad):
    _assert_rejected(_classifier(backend, "bce", 1), np.array(bad), ValueError,
                     r"targets must lie in \[0, 1\]")


def test_wrong_target_shapes(backend):
    net = _classifier(backend, "mse", 2)
    _assert_rejected(net, np.zeros((3, 3)), ValueError, r"y has shape \(3, 3\); expected \(n_samples, 2\)")
    _assert_rejected(net, np.zeros(3), ValueError, r"y has shape \(3,\); expected \(n_samples, 2\)")
    single = _classifier(backend, "mse", 1)
    _assert_rejected(single, np.zeros((3, 2)), ValueError, r"expected \(n_samples, 1\).* or \(n_samples,\)")
    ce = _classifier(backend)
    _assert_rejected(ce, np.zeros((3, 2)), ValueError, r"y has shape \(3, 2\); expected \(n_samples, 3\)")
    _assert_rejected(ce, np.zeros((3, 3, 1)), ValueError, r"class ids of shape \(n_samples,\)")


def test_one_dimensional_targets_for_a_single_output(backend):
    net = _classifier(backend, "bce", 1)
    X = np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]])
    flat = net.evaluate(X, np.array([1, 0, 1]))
    column = net.evaluate(X, np.array([[1.0], [0.0], [1.0]]))
    assert flat == column


def test_bce_accepts_boolean_and_integer_labels_host_or_native(backend):
    net = _classifier(backend, "bce", 1)
    X = np.array([[0.5, -1.0], [2.0, 0.0], [-1.0, 1.0]])
    labels = np.array([True, False, True])
    reference = net.evaluate(X, labels.astype(float))
    for y in (labels, labels.astype(np.int64), backend.asarray(labels),
              backend.asarray(labels.astype(np.int64))):
        assert net.evaluate(X, y) == reference
