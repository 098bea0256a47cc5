"""Network: whole-network gradients against PyTorch and finite differences, the step-level API,
weights in and out, seeding, fit/predict/evaluate, data movement, and every boundary check."""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import GELU, Dense, Identity, Layer, ReLU, Sigmoid, SiLU, Softmax, Tanh
from bpgpu.losses import BinaryCrossEntropy, CrossEntropy
from bpgpu.optimizers import SGD

from layer_helpers import CallCounter

N = 8
RNG = np.random.default_rng(0)
X4 = RNG.standard_normal((N, 4))


# -- the cases: (layers, loss, targets, torch loss of (output, targets)) ----------------------------------
def _case(name):
    """``(layers, loss, y)``; the torch side is built by :func:`_torch_loss` from the same name."""
    rng = np.random.default_rng(1)
    mlp = lambda k, *tail, l2=0.0: [Dense(4, 5, init="glorot_uniform", l2=l2), Tanh(),  # noqa: E731
                                    Dense(5, k, init="glorot_uniform", l2=l2), *tail]
    if name == "mse":
        return mlp(3), "mse", rng.standard_normal((N, 3))
    if name == "mse_flat_targets":
        return mlp(1), "mse", rng.standard_normal(N)
    if name == "bce_sigmoid":
        return mlp(2, Sigmoid()), "bce", rng.integers(0, 2, (N, 2)).astype(float)
    if name == "bce_logits":
        return mlp(1), BinaryCrossEntropy(from_logits=True), rng.random((N, 1))
    if name == "ce_ids":
        return mlp(3), "cross_entropy", rng.integers(0, 3, N)
    if name == "ce_probs":
        t = rng.random((N, 3))
        return mlp(3), "cross_entropy", t / t.sum(axis=1, keepdims=True)
    if name == "l2_penalty":
        return mlp(2, l2=0.05), "mse", rng.standard_normal((N, 2))
    if name == "deep_mixed":
        layers = [Dense(4, 6), GELU(), Dense(6, 5), SiLU(), Dense(5, 5), ReLU(), Dense(5, 3),
                  Softmax()]
        return layers, "mse", rng.random((N, 3))
    raise KeyError(name)


CASES = ["mse", "mse_flat_targets", "bce_sigmoid", "bce_logits", "ce_ids", "ce_probs",
         "l2_penalty", "deep_mixed"]


def _torch_forward_loss(torch, name, layers, weights, X, y):
    """The same network and loss written directly in torch; returns (loss, weight tensors)."""
    F = torch.nn.functional
    params = [torch.tensor(w, requires_grad=True) for w in weights]
    h = torch.tensor(X)
    k = 0
    for layer in layers:
        if isinstance(layer, Dense):
            h = h @ params[k] + params[k + 1]
            k += 2
        else:
            h = {Tanh: torch.tanh, Sigmoid: torch.sigmoid, ReLU: F.relu, SiLU: F.silu,
                 GELU: F.gelu,
                 Softmax: lambda t: F.softmax(t, dim=1)}[type(layer)](h)
    yt = torch.tensor(y)
    if name in ("mse", "deep_mixed", "l2_penalty"):
        loss = F.mse_loss(h, yt)
    elif name == "mse_flat_targets":
        loss = F.mse_loss(h, yt.reshape(-1, 1))
    elif name == "bce_sigmoid":
        loss = F.binary_cross_entropy(h, yt)
    elif name == "bce_logits":
        loss = F.binary_cross_entropy_with_logits(h, yt)
    else:
        loss = F.cross_entropy(h, yt)
    if name == "l2_penalty":
        loss = loss + 0.05 * ((params[0] ** 2).sum() + (params[2] ** 2).sum())
    loss.backward()
    return float(loss.detach()), [p.grad.numpy() for p in params]


def _net(case, backend, dtype="float64", seed=0, optimizer="sgd"):
    layers, loss, y = _case(case)
    net = bpgpu.Network(layers, loss=loss, optimizer=optimizer, backend=backend, dtype=dtype, seed=seed)
    return net, y


def _assert_weights_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("case", CASES)
def test_network_gradients_match_torch(backend, torch, case):
    net, y = _net(case, backend)
    weights = net.get_weights()
    loss, grads = net.compute_gradients(X4, y)
    expected_loss, expected_grads = _torch_forward_loss(torch, case, net.layers, weights, X4, y)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-9)
    assert len(grads) == len(expected_grads)
    for mine, theirs in zip(grads, expected_grads, strict=True):
        assert mine.shape == theirs.shape
        np.testing.assert_allclose(mine, theirs, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("case", CASES)
def test_network_gradcheck(backend, case):
    net, y = _net(case, backend)
    errors = bpgpu.gradient_errors(net, X4, y)
    dense = [i for i, layer in enumerate(net.layers) if isinstance(layer, Dense)]
    assert set(errors) == {f"{i}.{k}" for i in dense for k in ("W", "b")}
    assert max(errors.values()) < 1e-7, errors


def test_gradcheck_of_a_float32_network_leaves_it_float32(backend):
    net, y = _net("mse", backend, dtype="float32")
    before = net.get_weights()
    assert bpgpu.gradcheck(net, X4, y) < 1e-6  # computed in float64 whatever the net's dtype
    _assert_weights_equal(before, net.get_weights())
    assert all(w.dtype == np.float32 for w in net.get_weights())


# -- step-level API ---------------------------------------------------------------------------------------
def test_compute_gradients_changes_no_weight(backend):
    net, y = _net("ce_ids", backend, optimizer="adam")
    before = net.get_weights()
    loss1, grads1 = net.compute_gradients(X4, y)
    loss2, grads2 = net.compute_gradients(X4, y)
    _assert_weights_equal(before, net.get_weights())
    assert net.optimizer.step_count == 0 and not net.optimizer.state
    assert loss1 == loss2
    _assert_weights_equal(grads1, grads2)
    _assert_weights_equal(grads1, net.gradients())


def test_train_step_returns_the_loss_before_the_update(backend):
    net, y = _net("mse", backend, optimizer=SGD(lr=0.1))
    before = net.get_weights()
    loss_before, grads = net.compute_gradients(X4, y)
    returned = net.train_step(X4, y)
    assert returned == pytest.approx(loss_before, rel=1e-12)  # a fast path may round differently
    assert isinstance(returned, float)
    for w0, g, w1 in zip(before, grads, net.get_weights(), strict=True):  # plain SGD: w1 = w0 - 0.1 g
        np.testing.assert_allclose(w1, w0 - 0.1 * g, rtol=1e-12, atol=1e-15)
    assert net.evaluate(X4, y)["loss"] < returned


def test_forward_backward_apply_gradients_equal_train_step(backend):
    a, y = _net("ce_ids", backend, optimizer=SGD(lr=0.2, momentum=0.5))
    b, _ = _net("ce_ids", backend, optimizer=SGD(lr=0.2, momentum=0.5))
    for _ in range(3):
        loss = b.backend.to_float(b.compute_loss(b.forward(X4, training=True), y))
        b.backward()
        b.apply_gradients()
        assert loss == pytest.approx(a.train_step(X4, y), rel=1e-12)
    for w1, w2 in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-15)


def test_weights_order_and_round_trip(backend):
    layers = [Dense(3, 4), ReLU(), Dense(4, 2, bias=False), Identity(), Dense(2, 5)]
    net = bpgpu.Network(layers, backend=backend, dtype="float64", seed=3)
    weights = net.get_weights()
    assert [w.shape for w in weights] == [(3, 4), (4,), (4, 2), (2, 5), (5,)]
    assert all(isinstance(w, np.ndarray) for w in weights)
    np.testing.assert_array_equal(weights[0], net.backend.to_numpy(layers[0].params["W"]))
    np.testing.assert_array_equal(weights[3], net.backend.to_numpy(layers[4].params["W"]))
    new = [RNG.standard_normal(w.shape) for w in weights]
    net.set_weights(new)
    _assert_weights_equal(net.get_weights(), new)
    new[0][0, 0] = 123.0  # the network holds a copy
    assert net.get_weights()[0][0, 0] != 123.0
    got = net.get_weights()
    got[1][:] = -5.0  # and hands out copies
    assert not (net.get_weights()[1] == -5.0).any()
    # lists and native arrays are accepted too
    net.set_weights([w.tolist() for w in weights])
    _assert_weights_equal(net.get_weights(), weights)
    net.set_weights([net.backend.asarray(w) for w in new])
    np.testing.assert_array_equal(net.get_weights()[2], new[2])


def test_set_weights_casts_to_the_network_dtype(backend):
    net = bpgpu.Network([Dense(2, 2)], backend=backend, dtype="float32", seed=0)
    net.set_weights([np.full((2, 2), 0.1), np.zeros(2, dtype=np.int64)])
    w = net.get_weights()
    assert w[0].dtype == np.float32 and w[1].dtype == np.float32
    assert w[0][0, 0] == np.float32(0.1)


def test_gradients_before_any_computation():
    net, _ = _net("mse", "numpy")
    with pytest.raises(RuntimeError, match="no gradients computed yet"):
        net.gradients()


def test_from_sizes(backend):
    net = bpgpu.Network.from_sizes([1, 64, 32, 1], backend=backend, seed=0)
    assert [type(layer) for layer in net.layers] == [Dense, ReLU, Dense, ReLU, Dense]
    assert [w.shape for w in net.get_weights()] == [(1, 64), (64,), (64, 32), (32,), (32, 1), (1,)]
    assert net.input_shape == (1,) and net.output_shape == (1,)
    assert net.n_params == 64 + 64 + 64 * 32 + 32 + 32 + 1
    clf = bpgpu.Network.from_sizes([2, 4, 1], activation="sigmoid", output_activation="sigmoid",
                                   loss="bce", optimizer="adam", backend=backend, seed=0)
    assert [type(layer) for layer in clf.layers] == [Dense, Sigmoid, Dense, Sigmoid]
    assert isinstance(clf.loss, BinaryCrossEntropy)
    tanh = bpgpu.Network.from_sizes([3, 2], activation="tanh", backend=backend, seed=0)
    assert [type(layer) for layer in tanh.layers] == [Dense]


@pytest.mark.parametrize("sizes, message", [
    ([3], "at least two sizes"), ([], "at least two sizes"), ("12", "at least two sizes"),
    ([2, 0, 1], "every entry of layer_sizes must be an integer >= 1"),
    ([2, 3.5, 1], "every entry of layer_sizes must be an integer >= 1"),
])
def test_from_sizes_rejects_bad_sizes(sizes, message):
    with pytest.raises(ValueError, match=message):
        bpgpu.Network.from_sizes(sizes, backend="numpy")


# -- seeding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seed_same_initial_weights_on_every_backend(backend, dtype):
    def make(b, seed):
        return bpgpu.Network.from_sizes([3, 7, 2], backend=b, dtype=dtype, seed=seed).get_weights()

    reference = make("numpy", 11)
    _assert_weights_equal(make(backend, 11), reference)
    assert all(w.dtype == np.dtype(dtype) for w in reference)
    assert not np.array_equal(make(backend, 12)[0], reference[0])


def test_seed_none_is_recorded_and_reproducible():
    net = bpgpu.Network.from_sizes([2, 3, 1], backend="numpy")
    assert isinstance(net.seed, int)
    twin = bpgpu.Network.from_sizes([2, 3, 1], backend="numpy", seed=net.seed)
    _assert_weights_equal(net.get_weights(), twin.get_weights())


def test_same_seed_same_training_on_every_backend(backend):
    """Shuffling is drawn on the host: the same seed visits the batches in the same order."""
    X, y = RNG.standard_normal((20, 4)), RNG.integers(0, 3, 20)

    def train(b):
        net, _ = _net("ce_ids", b, seed=5, optimizer=SGD(lr=0.1))
        return net.fit(X, y, epochs=3, batch_size=6, verbose=0).history["loss"], net.get_weights()

    ref_loss, ref_weights = train("numpy")
    loss, weights = train(backend)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for a, b in zip(weights, ref_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


# -- fit / predict / evaluate -----------------------------------------------------------------------------
def test_fit_history_with_validation(backend):
    net, y = _net("ce_ids", backend, optimizer=SGD(lr=0.1))
    Xv, yv = RNG.standard_normal((5, 4)), np.array([0, 1, 2, 1, 0])
    history = net.fit(X4, y, epochs=3, batch_size=3, validation_data=(Xv, yv), verbose=0)
    assert isinstance(history, bpgpu.History)
    assert set(history.history) == {"loss", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2] and len(history) == 3
    final = net.evaluate(Xv, yv)
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-12)
    assert history.history["val_accuracy"][-1] == final["accuracy"]
    again = net.fit(X4, y, epochs=2, verbose=0)
    assert again.epoch == [3, 4] and set(again.history) == {"loss"}


def test_fit_regression_validation_has_no_accuracy(backend):
    net, y = _net("mse", backend)
    history = net.fit(X4, y, epochs=2, validation_data=(X4, y), verbose=0)
    assert set(history.history) == {"loss", "val_loss"}


def test_fit_equals_train_steps_over_the_batches(backend):
    """Without shuffling, one epoch is train_step on consecutive slices; the epoch loss is their
    mean weighted by batch size."""
    a, y = _net("mse", backend, optimizer=SGD(lr=0.1, momentum=0.9))
    b, _ = _net("mse", backend, optimizer=SGD(lr=0.1, momentum=0.9))
    history = a.fit(X4, y, epochs=1, batch_size=3, shuffle=False, verbose=0)
    losses = [b.train_step(X4[s:s + 3], y[s:s + 3]) for s in (0, 3, 6)]
    expected = (3 * losses[0] + 3 * losses[1] + 2 * losses[2]) / 8
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-12)
    for w1, w2 in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("batch_size", [None, 100])
def test_full_batch_fit_is_one_step_per_epoch(backend, batch_size):
    a, y = _net("ce_ids", backend, optimizer=SGD(lr=0.3))
    b, _ = _net("ce_ids", backend, optimizer=SGD(lr=0.3))
    history = a.fit(X4, y, epochs=2, batch_size=batch_size, verbose=0)
    losses = [b.train_step(X4, y) for _ in range(2)]
    np.testing.assert_allclose(history.history["loss"], losses, rtol=1e-12)
    assert a.optimizer.step_count == 2
    for w1, w2 in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-15)


def test_fit_prints_progress_only_when_verbose(backend, capsys):
    net, y = _net("mse", backend)
    net.fit(X4, y, epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "loss" in out
    net.fit(X4, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_predict_returns_numpy(backend):
    net, _ = _net("ce_ids", backend)
    out = net.predict(X4)
    assert type(out) is np.ndarray and out.shape == (N, 3) and out.dtype == np.float64
    np.testing.assert_array_equal(out, net.backend.to_numpy(net.forward(X4)))
    np.testing.assert_allclose(net.predict(X4, batch_size=3), out, rtol=1e-14)
    assert net.predict(np.zeros((0, 4))).shape == (0, 3)


def test_evaluate_reports_loss_and_accuracy(backend):
    clf, y = _net("ce_ids", backend)
    result = clf.evaluate(X4, y)
    assert set(result) == {"loss", "accuracy"}
    assert result["accuracy"] == pytest.approx(np.mean(clf.predict(X4).argmax(axis=1) == y))
    assert result["loss"] == pytest.approx(clf.compute_gradients(X4, y)[0], rel=1e-12)
    bce, yb = _net("bce_sigmoid", backend)
    acc = bce.evaluate(X4, yb)["accuracy"]
    assert acc == pytest.approx(np.mean((bce.predict(X4) > 0.5) == (yb > 0.5)))
    reg, yr = _net("mse", backend)
    assert set(reg.evaluate(X4, yr)) == {"loss"}


def test_inputs_as_numpy_lists_and_native_arrays(backend):
    net, y = _net("ce_ids", backend)
    expected = net.predict(X4)
    np.testing.assert_array_equal(net.predict(X4.tolist()), expected)
    native = net.backend.asarray(X4, dtype=net.dtype)
    np.testing.assert_array_equal(net.predict(native), expected)
    y_native = net.backend.asarray(y, dtype=net.backend.xp.int64)
    reference = net.evaluate(X4, y)
    assert net.evaluate(X4.tolist(), y.tolist()) == reference
    assert net.evaluate(native, y_native) == reference
    # training from native arrays gives the same weights as from host arrays, and leaves the
    # caller's arrays untouched
    twin, _ = _net("ce_ids", backend)
    net.fit(native, y_native, epochs=2, batch_size=3, verbose=0)
    twin.fit(X4, y, epochs=2, batch_size=3, verbose=0)
    _assert_weights_equal(net.get_weights(), twin.get_weights())
    np.testing.assert_array_equal(net.backend.to_numpy(native), X4)


def test_float_native_inputs_are_cast_to_the_network_dtype(backend):
    net, y = _net("mse", backend, dtype="float32")
    native64 = backend.asarray(X4, dtype=backend.dtype("float64"))
    out = net.forward(native64)
    assert out.dtype == backend.xp.float32


def _count_transfers(backend, epochs, batch_size, shuffle=True, validation=True):
    """(host->device copies, device->host reads) during one fit of 24 samples."""
    net, y = _net("ce_ids", backend, optimizer=SGD(lr=0.1))
    X, yy = np.tile(X4, (3, 1)), np.tile(y, 3)
    to_device = net.backend.asarray = CallCounter(net.backend.asarray)
    reads = [CallCounter(net.backend.to_float), CallCounter(net.backend.to_numpy)]
    net.backend.to_float, net.backend.to_numpy = reads
    net.fit(X, yy, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
            validation_data=(X4, y) if validation else None, verbose=0)
    return to_device.calls, sum(counter.calls for counter in reads)


def test_data_moves_to_the_device_once_per_fit(backend):
    """Host->device copies per fit: X and y once (and the validation pair once), plus one
    shuffle permutation per epoch; none per batch. Device->host reads: a constant number per
    epoch (the epoch's losses), none per batch."""
    one_batch = _count_transfers(backend, epochs=2, batch_size=24)
    many_batches = _count_transfers(backend, epochs=2, batch_size=2)
    assert many_batches == _count_transfers(backend, epochs=2, batch_size=5)
    # 12 batches per epoch cost no more reads than 1 ...
    assert many_batches[1] == one_batch[1] > 0
    # ... and one copy more per epoch (the permutation; a single full batch needs none).
    assert many_batches[0] == one_batch[0] + 2
    more_epochs = _count_transfers(backend, epochs=5, batch_size=2)
    assert more_epochs[0] - many_batches[0] == 3
    assert 2 * more_epochs[1] == 5 * many_batches[1]  # reads grow with epochs only
    no_shuffle = _count_transfers(backend, epochs=5, batch_size=2, shuffle=False, validation=False)
    X = np.tile(X4, (3, 1))
    target = bpgpu.get_backend(backend)
    borrowed = target.borrow(X, target.dtype("float64")) is X  # read in place (NumPy)
    assert no_shuffle[0] == 2 - borrowed  # X (unless borrowed) and y, nothing else
    assert no_shuffle[1] == _count_transfers(backend, epochs=5, batch_size=24, shuffle=False,
                                             validation=False)[1]


# -- errors: each message checked, each call leaving the network untouched ------------------------------------
@pytest.fixture
def clf(backend):
    net, y = _net("ce_ids", backend, optimizer="adam")
    net._test_y = y
    net._test_before = net.get_weights()
    yield net
    _assert_weights_equal(net._test_before, net.get_weights())
    assert net.optimizer.step_count == 0 and net.epoch == 0


def _all_entry_points(net, X, y, error, message):
    for call in (lambda: net.fit(X, y, epochs=1, verbose=0), lambda: net.train_step(X, y),
                 lambda: net.evaluate(X, y), lambda: net.compute_gradients(X, y)):
        with pytest.raises(error, match=message):
            call()


def test_wrong_feature_count(clf):
    X = np.zeros((N, 5))
    _all_entry_points(clf, X, clf._test_y, ValueError,
                      r"X has \(5,\) features per sample; the network expects \(4,\)")
    with pytest.raises(ValueError, match=r"expects \(4,\)"):
        clf.predict(X)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, n_features\)"):
        clf.predict(np.zeros(4))


def test_length_mismatch(clf):
    _all_entry_points(clf, X4[:5], clf._test_y, ValueError,
                      r"X has 5 samples but y has 8; expected one target per sample")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_in_X(clf, bad):
    X = X4.copy()
    X[2, 1] = bad
    _all_entry_points(clf, X, clf._test_y, ValueError,
                      r"X contains 1 NaN or infinite value\(s\); expected finite numbers")
    with pytest.raises(ValueError, match="NaN or infinite"):
        clf.predict(X)
    native = clf.backend.asarray(X, dtype=clf.dtype)
    _all_entry_points(clf, native, clf._test_y, ValueError, r"X contains (1 )?NaN or infinite value")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_in_y(backend, bad):
    net, y = _net("mse", backend)
    before = net.get_weights()
    y = y.copy()
    y[0, 0] = bad
    _all_entry_points(net, X4, y, ValueError, r"y contains 1 NaN or infinite value\(s\)")
    ids = np.array([0.0, 1.0, bad, 2.0, 0.0, 1.0, 1.0, 2.0])
    clf, _ = _net("ce_ids", backend)
    _all_entry_points(clf, X4, ids, ValueError, "y contains 1 NaN or infinite")
    _assert_weights_equal(before, net.get_weights())


def test_labels_outside_range(clf):
    y = clf._test_y.copy()
    y[3] = 3
    _all_entry_points(clf, X4, y, ValueError, r"class labels must lie in \[0, 3\)")
    y[3] = -1
    _all_entry_points(clf, X4, y, ValueError, r"class labels must lie in \[0, 3\)")


@pytest.mark.parametrize("X, error, message", [
    ([["a", "b", "c", "d"]] * N, TypeError, r"X must hold real numbers \(bool, int or float\), got dtype <U1"),
    ([[1, 2, 3, 4]] * (N - 1) + [[1, 2]], ValueError, "X could not be read as a rectangular array"),
    ([[1, 2, 3, 4]] * (N - 1) + [[1, 2, "x", 4]], TypeError, "X must hold real numbers"),
    (np.zeros((N, 4), dtype=complex), TypeError, "X must hold real numbers.*complex128"),
    (None, TypeError, "X must be an array of numbers, got None"),
])
def test_non_numeric_X(clf, X, error, message):
    _all_entry_points(clf, X, clf._test_y, error, message)


def test_non_numeric_y(clf):
    _all_entry_points(clf, X4, ["a"] * N, TypeError, "y must hold real numbers")
    _all_entry_points(clf, X4, [[0]] * (N - 1) + [[0, 1]], ValueError, "y could not be read")


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, "32", True])
def test_bad_batch_size(clf, batch_size):
    with pytest.raises(ValueError, match=rf"batch_size must be an integer >= 1, got {batch_size!r}"):
        clf.fit(X4, clf._test_y, batch_size=batch_size, verbose=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        clf.predict(X4, batch_size=batch_size)


@pytest.mark.parametrize("epochs", [0, -1, 1.5, None])
def test_bad_epochs(clf, epochs):
    with pytest.raises(ValueError, match=rf"epochs must be an integer >= 1, got {epochs!r}"):
        clf.fit(X4, clf._test_y, epochs=epochs, verbose=0)


def test_bad_validation_data(clf):
    with pytest.raises(ValueError, match=r"validation_data must be a pair \(X_val, y_val\)"):
        clf.fit(X4, clf._test_y, validation_data=X4, verbose=0)
    with pytest.raises(ValueError, match=r"X has \(3,\) features per sample"):
        clf.fit(X4, clf._test_y, validation_data=(np.zeros((2, 3)), [0, 1]), verbose=0)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        clf.fit(X4, clf._test_y, validation_data=(X4[:2], [0, 5]), verbose=0)


def test_empty_data(clf):
    with pytest.raises(ValueError, match="X holds no samples"):
        clf.fit(np.zeros((0, 4)), np.zeros(0, dtype=int), verbose=0)


@pytest.mark.parametrize("weights, message", [
    ("short", r"set_weights got 3 arrays; the network has 4 parameters"),
    ("long", r"set_weights got 5 arrays; the network has 4 parameters"),
    ("shape", r"weights\[2\] \(Dense\.W\) has shape \(3, 5\); expected \(5, 3\)"),
    ("nan", r"weights\[1\] \(Dense\.b\) contains 1 NaN or infinite value\(s\)"),
    ("inf", r"weights\[3\] \(Dense\.b\) contains 1 NaN or infinite value\(s\)"),
    ("text", r"weights\[0\] \(Dense\.W\) must hold real numbers"),
])
def test_set_weights_rejections(clf, weights, message):
    good = clf.get_weights()
    bad = {
        "short": good[:3],
        "long": good + [good[0]],
        "shape": [good[0], good[1], good[2].T, good[3]],
        "nan": [good[0], np.where(np.arange(5) == 2, np.nan, good[1]), good[2], good[3]],
        "inf": good[:3] + [np.array([0.0, np.inf, 0.0])],
        "text": [np.full((4, 5), "w"), good[1], good[2], good[3]],
    }[weights]
    with pytest.raises((ValueError, TypeError), match=message):
        clf.set_weights(bad)


def test_non_layer_in_layers():
    with pytest.raises(TypeError, match="layers must all be bpgpu Layer objects; got str"):
        bpgpu.Network([Dense(2, 2), "relu"], backend="numpy")
    with pytest.raises(TypeError, match="layers must be a list of bpgpu Layer objects"):
        bpgpu.Network(Dense(2, 2), backend="numpy")
    with pytest.raises(TypeError, match="got type"):
        bpgpu.Network([Dense(2, 2), Dense], backend="numpy")
    with pytest.raises(ValueError, match="at least one layer"):
        bpgpu.Network([], backend="numpy")


@pytest.mark.parametrize("kwargs, message", [
    ({"loss": "hinge"}, "unknown loss 'hinge'"),
    ({"optimizer": "adagrad"}, "unknown optimizer 'adagrad'"),
    ({"backend": "gpu"}, "unknown backend 'gpu'"),
    ({"dtype": "float16"}, "dtype must be one of"),
    ({"seed": -1}, "seed must be a non-negative integer or None, got -1"),
    ({"seed": 1.5}, "seed must be a non-negative integer or None, got 1.5"),
    ({"seed": "7"}, "seed must be a non-negative integer or None, got '7'"),
    ({"seed": True}, "seed must be a non-negative integer or None, got True"),
])
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bpgpu.Network([Dense(2, 2)], **{"backend": "numpy", **kwargs})


def test_unknown_activation_and_layer_names():
    with pytest.raises(ValueError, match="unknown activation 'rectifier'"):
        bpgpu.Network.from_sizes([2, 3, 1], activation="rectifier", backend="numpy")
    with pytest.raises(ValueError, match="unknown activation 'softplus'"):
        bpgpu.Network.from_sizes([2, 3, 1], output_activation="softplus", backend="numpy")
    with pytest.raises(ValueError, match="unknown layer class 'Dense3D'; known layers: .*Dense"):
        bpgpu.layers.deserialize_layer({"class": "Dense3D", "config": {}})
    with pytest.raises(ValueError, match="a layer description must be"):
        bpgpu.layers.deserialize_layer({"config": {}})


def test_custom_layer_is_usable_and_registered(backend):
    class FeatureScale(Layer):
        """y = x * s, s learnable per feature."""

        def __init__(self, features):
            super().__init__()
            self.features = features

        def init_params(self, rng):
            self.add_param("s", 1.0 + rng.random(self.features))

        def forward(self, x, training=False):
            self._x = x
            return x * self.params["s"]

        def backward(self, dy):
            self.grads["s"] = self.xp.sum(dy * self._x, axis=0)
            return dy * self.params["s"]

        def get_config(self):
            return {"features": self.features}

    net = bpgpu.Network([Dense(4, 3), FeatureScale(3), Tanh(), Dense(3, 2)], backend=backend,
                        dtype="float64", seed=0)
    assert [w.shape for w in net.get_weights()] == [(4, 3), (3,), (3,), (3, 2), (2,)]
    assert bpgpu.gradcheck(net, X4, RNG.standard_normal((N, 2))) < 1e-7
    assert bpgpu.layers.layer_class("FeatureScale") is FeatureScale
    assert CrossEntropy.is_classification and not bpgpu.losses.MSE.is_classification
