"""The main demo: classify scikit-learn's 8x8 handwritten digits with a small MLP.

1797 images of 64 pixels, 10 classes; a stratified 75/25 train/test split; pixels scaled to [0, 1];
a 64-128-64-10 ReLU network trained with Adam on softmax cross-entropy in mini-batches of 32.
Prints the progress, the test accuracy, and saves the loss curves.

    python examples/digits.py                   # backend "auto": the GPU if CuPy sees one
    python examples/digits.py --backend numpy
    python examples/digits.py --precision mixed_float16   # float16 compute, float32 weights
"""

import os
import time

import numpy as np

import bpgpu
from bpgpu.optimizers import Adam

from _common import parse_args, save_loss_curve


def load_digits_split(seed):
    """(X_train, X_test, y_train, y_test) of the digits, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = digits.data.astype(np.float32) / 16.0
    return train_test_split(X, digits.target, test_size=0.25, stratify=digits.target,
                            random_state=seed)


def mlp(backend, seed, precision=None):
    """The demo's 64-128-64-10 ReLU network with Adam (lr 1e-3) on softmax cross-entropy."""
    return bpgpu.Network.from_sizes([64, 128, 64, 10], activation="relu", loss="cross_entropy",
                                    optimizer=Adam(lr=1e-3), backend=backend, seed=seed,
                                    precision=precision)


def main():
    args = parse_args(__doc__.splitlines()[0], precision=True, epochs=30)
    X_train, X_test, y_train, y_test = load_digits_split(args.seed)
    net = mlp(args.backend, args.seed, args.precision)
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    print(net.summary())
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=args.epochs, batch_size=32,
                      validation_data=(X_test, y_test), verbose=1)
    seconds = time.perf_counter() - start
    result = net.evaluate(X_test, y_test)
    print(f"trained {args.epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {result['accuracy']:.4f}  (test loss {result['loss']:.4f})")
    save_loss_curve(history.history["loss"], os.path.join(args.out, "digits_loss.png"),
                    "64-128-64-10 MLP on the 8x8 digits", ylabel="cross-entropy",
                    extra={"test": history.history["val_loss"]})


if __name__ == "__main__":
    main()
