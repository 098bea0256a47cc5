"""The one-sample walkthrough: a 2-2-1 sigmoid network learns to output 1 for x = (0.5, 0.8).

Starts from the tutorial's hand-picked weights, prints the gradients of the first step (the ones
the chain rule gives by hand), then trains with plain gradient descent (lr 0.1) on the squared
error and saves the loss curve.

    python examples/walkthrough_221.py --backend numpy
"""

import os

import numpy as np

import bpgpu
from bpgpu.layers import Dense, Sigmoid
from bpgpu.optimizers import SGD

from _common import parse_args, save_loss_curve


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=1000)
    net = bpgpu.Network([Dense(2, 2), Sigmoid(), Dense(2, 1), Sigmoid()], loss="mse",
                        optimizer=SGD(lr=0.1), backend=args.backend, dtype="float64", seed=args.seed)
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    net.set_weights([np.array([[0.3, 0.7], [0.5, 0.2]]), np.array([0.1, 0.1]),
                     np.array([[0.4], [0.6]]), np.array([0.1])])
    x, target = np.array([[0.5, 0.8]]), np.array([[1.0]])
    print(f"prediction before training: {net.predict(x)[0, 0]:.4f} (target 1.0)")
    loss, grads = net.compute_gradients(x, target)
    for name, g in zip(["dW1", "db1", "dW2", "db2"], grads, strict=True):
        print(f"  first-step {name} = {np.round(g, 6).tolist()}")
    history = net.fit(x, target, epochs=args.epochs, batch_size=None, verbose=0)
    losses = history.history["loss"]
    for epoch in range(0, args.epochs, max(args.epochs // 5, 1)):
        print(f"epoch {epoch:4d}  loss {losses[epoch]:.6f}")
    print(f"prediction after {args.epochs} steps: {net.predict(x)[0, 0]:.4f}")
    save_loss_curve(losses, os.path.join(args.out, "walkthrough_221_loss.png"),
                    "2-2-1 sigmoid network, one sample", ylabel="squared error", log=True)


if __name__ == "__main__":
    main()
