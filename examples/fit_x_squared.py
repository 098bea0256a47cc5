"""A 1-64-32-1 ReLU network fits y = x^2 (plus noise) on [-2, 2].

The tutorial's ``layer_sizes`` network, built with ``Network.from_sizes``, trained with Adam on
mean squared error; prints progress, the final error against the true curve, and saves the loss
curve and the fitted function.

    python examples/fit_x_squared.py --backend numpy
"""

import os

import numpy as np

import bpgpu
from bpgpu.optimizers import Adam

from _common import parse_args, save_loss_curve


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=1000)
    rng = np.random.default_rng(42)
    X = np.linspace(-2, 2, 100).reshape(-1, 1)
    y = X ** 2 + rng.normal(0.0, 0.1, X.shape)
    net = bpgpu.Network.from_sizes([1, 64, 32, 1], activation="relu", loss="mse",
                                   optimizer=Adam(lr=0.01), backend=args.backend, seed=args.seed)
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    history = net.fit(X, y, epochs=args.epochs, batch_size=None, verbose=0)
    losses = history.history["loss"]
    for epoch in range(0, args.epochs, max(args.epochs // 10, 1)):
        print(f"epoch {epoch:5d}  mse {losses[epoch]:.5f}")
    X_test = np.linspace(-2, 2, 50).reshape(-1, 1)
    error = float(np.mean((net.predict(X_test) - X_test ** 2) ** 2))
    print(f"final training mse {losses[-1]:.5f}; mse against the true x^2: {error:.5f}")
    save_loss_curve(losses, os.path.join(args.out, "fit_x_squared_loss.png"),
                    "1-64-32-1 ReLU fit of x^2", ylabel="mean squared error", log=True)
    _plot_fit(net, X, y, os.path.join(args.out, "fit_x_squared_function.png"))


def _plot_fit(net, X, y, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-2, 2, 200).reshape(-1, 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(X[:, 0], y[:, 0], s=12, alpha=0.6, label="training data")
    ax.plot(grid[:, 0], net.predict(grid)[:, 0], "r-", label="network")
    ax.plot(grid[:, 0], grid[:, 0] ** 2, "g--", label="x^2")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
