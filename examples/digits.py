"""The main demo: classify scikit-learn's 8x8 handwritten digits with a small MLP.

1797 images of 64 pixels, 10 classes; a stratified 75/25 train/test split; pixels scaled to [0, 1];
a 64-128-64-10 ReLU network trained with Adam on softmax cross-entropy in mini-batches of 32.
Prints the progress, the test accuracy, and saves the loss curves.

    python examples/digits.py                   # backend "auto": the GPU if CuPy sees one
    python examples/digits.py --backend numpy
    python examples/digits.py --precision mixed_float16   # float16 compute, float32 weights
"""

import os

import numpy as np

from _common import fit_and_report, mlp_classifier, parse_args


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
    return mlp_classifier([64, 128, 64, 10], backend, seed, precision)


def main():
    args = parse_args(__doc__.splitlines()[0], precision=True, epochs=30)
    net = mlp(args.backend, args.seed, args.precision)
    fit_and_report(net, load_digits_split(args.seed), args.epochs, 32,
                   os.path.join(args.out, "digits_loss.png"), "64-128-64-10 MLP on the 8x8 digits")


if __name__ == "__main__":
    main()
