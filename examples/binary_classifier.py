"""A 2-4-1 sigmoid network with binary cross-entropy learns the rule x1 + x2 > 0.

1000 Gaussian points, full-batch gradient descent, He-initialised weights: the tutorial's
classifier. Prints the loss as it trains and the final accuracy, saves the loss curve.

    python examples/binary_classifier.py --backend numpy
"""

import os

import numpy as np

import bpgpu
from bpgpu.optimizers import SGD

from _common import parse_args, save_loss_curve


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=2000)
    rng = np.random.default_rng(42)
    X = rng.standard_normal((1000, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.float64)
    net = bpgpu.Network.from_sizes([2, 4, 1], activation="sigmoid", output_activation="sigmoid",
                                   loss="bce", optimizer=SGD(lr=0.5), backend=args.backend,
                                   seed=args.seed)
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    history = net.fit(X, y, epochs=args.epochs, batch_size=None, verbose=0)
    losses = history.history["loss"]
    for epoch in range(0, args.epochs, max(args.epochs // 10, 1)):
        print(f"epoch {epoch:5d}  loss {losses[epoch]:.4f}")
    result = net.evaluate(X, y)
    print(f"final loss {result['loss']:.4f}, accuracy {result['accuracy']:.3f}")
    save_loss_curve(losses, os.path.join(args.out, "binary_classifier_loss.png"),
                    "2-4-1 sigmoid/BCE on x1 + x2 > 0", ylabel="binary cross-entropy")


if __name__ == "__main__":
    main()
