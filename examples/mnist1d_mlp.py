"""MNIST-1D: an MLP on one-dimensional digits, in float32 or in mixed precision.

MNIST-1D (Greydanus, 2020) turns ten hand-drawn 1-D digit templates into 40-sample signals by
random padding, translation, scaling, shearing and correlated and white noise: a small data set
on which architectures still differ. The ``mnist1d`` package generates it here, offline, with
its default settings (5000 signals: 4000 to train, 1000 to test; nothing is downloaded).

A 40-100-100-10 ReLU network trained with Adam (lr 1e-3) on softmax cross-entropy in
mini-batches of 100 for 40 epochs. Prints the test accuracy and saves the loss curves.

    python examples/mnist1d_mlp.py --backend numpy
    python examples/mnist1d_mlp.py --precision mixed_float16
"""

import os

import numpy as np

from _common import fit_and_report, mlp_classifier, parse_args


def load_mnist1d():
    """(X_train, X_test, y_train, y_test) of MNIST-1D with the mnist1d package's defaults.

    The package seeds NumPy's and Python's global generators while it generates; their states
    are put back afterwards."""
    import random

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise SystemExit("this example needs the mnist1d package: pip install mnist1d") from None
    saved = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
    return (data["x"].astype(np.float32), data["x_test"].astype(np.float32), data["y"],
            data["y_test"])


def mlp(backend, seed, precision=None):
    """The recipe's 40-100-100-10 ReLU network with Adam (lr 1e-3) on softmax cross-entropy."""
    return mlp_classifier([40, 100, 100, 10], backend, seed, precision)


def main():
    args = parse_args(__doc__.splitlines()[0], precision=True, epochs=40)
    net = mlp(args.backend, args.seed, args.precision)
    fit_and_report(net, load_mnist1d(), args.epochs, 100,
                   os.path.join(args.out, "mnist1d_loss.png"), "40-100-100-10 MLP on MNIST-1D")


if __name__ == "__main__":
    main()
