"""End to end on every backend: the three networks of the tutorials in ../shared/seeds/ train as
the tutorials say.

(a) the 2-2-1 one-sample walkthrough: gradients equal the hand-derived chain rule, and 1000 SGD
    steps (lr 0.1) follow the tutorial's own update loop and bring the prediction towards 1;
(b) the 2-4-1 sigmoid/BCE classifier of x1 + x2 > 0 on 1000 Gaussian samples: >= 95 % accuracy
    (full-batch Adam, lr 0.05, 100 epochs, instead of the tutorial's slower plain gradient descent);
(c) the 1-64-32-1 ReLU regression of y = x^2 on 100 points in [-2, 2]: Adam (lr 0.01, full batch,
    300 epochs) reaches a mean squared error below 0.02 against the true curve.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Dense, Sigmoid
from bpgpu.optimizers import SGD, Adam

W1 = np.array([[0.3, 0.7], [0.5, 0.2]])
B1 = np.array([0.1, 0.1])
W2 = np.array([[0.4], [0.6]])
B2 = np.array([0.1])
X1 = np.array([0.5, 0.8])


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _chain_rule(W1, b1, W2, b2):
    """The tutorial's backward pass for loss (p - 1)^2, written out by hand in NumPy."""
    hidden_raw = X1 @ W1 + b1
    hidden = _sigmoid(hidden_raw)
    p = _sigmoid(hidden @ W2 + b2)[0]
    d_out = 2.0 * (p - 1.0) * p * (1.0 - p)
    d_W2 = hidden.reshape(-1, 1) * d_out
    d_b2 = np.array([d_out])
    d_hidden = d_out * W2[:, 0] * hidden * (1.0 - hidden)
    return (p - 1.0) ** 2, p, [np.outer(X1, d_hidden), d_hidden, d_W2, d_b2]


def _walkthrough(backend):
    net = bpgpu.Network([Dense(2, 2), Sigmoid(), Dense(2, 1), Sigmoid()], loss="mse",
                        optimizer=SGD(lr=0.1), backend=backend, dtype="float64", seed=0)
    net.set_weights([W1, B1, W2, B2])
    return net


def test_walkthrough_first_gradients_equal_the_chain_rule(backend):
    net = _walkthrough(backend)
    loss, grads = net.compute_gradients(X1[None, :], [[1.0]])
    expected_loss, p, expected = _chain_rule(W1, B1, W2, B2)
    assert net.predict(X1[None, :])[0, 0] == pytest.approx(p, rel=1e-14)
    assert loss == pytest.approx(expected_loss, rel=1e-13)
    for name, mine, theirs in zip(["dW1", "db1", "dW2", "db2"], grads, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-17, err_msg=name)
    assert all(np.abs(g).min() > 1e-4 for g in grads)  # every gradient is really there


def test_walkthrough_trains_towards_1(backend):
    net = _walkthrough(backend)
    x, y = X1[None, :], np.array([[1.0]])
    losses = [net.train_step(x, y) for _ in range(1000)]
    # the tutorial's own loop: plain gradient descent with the hand-derived gradients
    w = [W1.copy(), B1.copy(), W2.copy(), B2.copy()]
    expected_losses = []
    for _ in range(1000):
        loss, _, grads = _chain_rule(*w)
        expected_losses.append(loss)
        w = [wi - 0.1 * gi for wi, gi in zip(w, grads, strict=True)]
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-9)
    for mine, theirs in zip(net.get_weights(), w, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-9)
    assert np.all(np.diff(losses) < 0)  # decreasing at every step
    prediction = net.predict(x)[0, 0]
    assert prediction > 0.9 and losses[-1] < 0.01 < losses[0]


def test_binary_classifier_x1_plus_x2(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1000, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(float)
    X_test = rng.standard_normal((500, 2))
    y_test = (X_test[:, 0] + X_test[:, 1] > 0).astype(float)
    net = bpgpu.Network([Dense(2, 4), Sigmoid(), Dense(4, 1), Sigmoid()], loss="bce",
                        optimizer=Adam(lr=0.05), backend=backend, seed=0)
    history = net.fit(X, y, epochs=100, batch_size=None, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.3 * losses[0]
    assert net.evaluate(X, y)["accuracy"] >= 0.95
    assert net.evaluate(X_test, y_test)["accuracy"] >= 0.95
    predicted = net.predict(X_test)[:, 0] > 0.5
    assert np.mean(predicted == (y_test > 0.5)) >= 0.95


def test_relu_mlp_fits_x_squared(backend):
    rng = np.random.default_rng(0)
    X = np.linspace(-2.0, 2.0, 100).reshape(-1, 1)
    y = X ** 2 + 0.05 * rng.standard_normal(X.shape)  # the tutorial adds noise
    net = bpgpu.Network.from_sizes([1, 64, 32, 1], activation="relu", loss="mse",
                                   optimizer=Adam(lr=0.01), backend=backend, seed=0)
    history = net.fit(X, y, epochs=300, batch_size=None, verbose=0)
    assert history.history["loss"][-1] < 0.02 < history.history["loss"][0]
    X_grid = np.linspace(-1.9, 1.9, 50).reshape(-1, 1)
    error = np.mean((net.predict(X_grid) - X_grid ** 2) ** 2)
    assert error < 0.02
