"""A small CNN on scikit-learn's 8x8 handwritten digits, against the MLP of examples/digits.py.

Same stratified 75/25 split as examples/digits.py. The MLP (64-128-64-10, pixels scaled to [0, 1])
is trained first as the baseline; then the CNN sees each digit as a 1x8x8 image, standardised
with the training set's pixel mean and standard deviation:

    Conv2D(1, 16, 3, padding=1) BatchNorm ReLU MaxPool2D(2)      -> 16 x 4 x 4
    Conv2D(16, 32, 3, padding=1) BatchNorm ReLU MaxPool2D(2)     -> 32 x 2 x 2
    Flatten Dropout(0.3) Dense(128, 10)

Both train with Adam (lr 1e-3) on softmax cross-entropy in mini-batches of 32. Prints both test
accuracies and saves both networks' loss and test-accuracy curves (cnn_digits_curves.png).

    python examples/cnn_digits.py                   # backend "auto": the GPU if CuPy sees one
    python examples/cnn_digits.py --backend numpy --epochs 40
"""

import os
import time

import bpgpu
from bpgpu.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from bpgpu.optimizers import Adam

from _common import parse_args
from digits import load_digits_split


def cnn(backend, seed):
    layers = [Conv2D(1, 16, 3, padding=1), BatchNorm(16), ReLU(), MaxPool2D(2),
              Conv2D(16, 32, 3, padding=1), BatchNorm(32), ReLU(), MaxPool2D(2),
              Flatten(), Dropout(0.3), Dense(32 * 2 * 2, 10)]
    return bpgpu.Network(layers, loss="cross_entropy", optimizer=Adam(lr=1e-3), backend=backend,
                         seed=seed)


def train(net, X_train, y_train, X_test, y_test, epochs, name):
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=epochs, batch_size=32,
                      validation_data=(X_test, y_test), verbose=0)
    result = net.evaluate(X_test, y_test)
    print(f"{name}: {net.n_params} parameters, {epochs} epochs in "
          f"{time.perf_counter() - start:.1f} s, test accuracy {result['accuracy']:.4f} "
          f"(test loss {result['loss']:.4f})")
    return history, result["accuracy"]


def main():
    args = parse_args(__doc__.splitlines()[0], epochs=40)
    X_train, X_test, y_train, y_test = load_digits_split(args.seed)

    mlp = bpgpu.Network.from_sizes([64, 128, 64, 10], activation="relu", loss="cross_entropy",
                                   optimizer=Adam(lr=1e-3), backend=args.backend, seed=args.seed)
    print(f"backend: {mlp.backend.name} ({mlp.backend.reason})")
    mlp_history, mlp_accuracy = train(mlp, X_train, y_train, X_test, y_test, args.epochs, "MLP")

    mean, std = float(X_train.mean()), float(X_train.std())
    images_train = ((X_train - mean) / std).reshape(-1, 1, 8, 8)
    images_test = ((X_test - mean) / std).reshape(-1, 1, 8, 8)
    net = cnn(mlp.backend, args.seed)
    print(net.summary())
    history, accuracy = train(net, images_train, y_train, images_test, y_test, args.epochs, "CNN")
    verdict = "beats" if accuracy > mlp_accuracy else "does not beat"
    print(f"test accuracy: CNN {accuracy:.4f} {verdict} MLP {mlp_accuracy:.4f}")
    save_curves({"CNN": history.history, "MLP": mlp_history.history},
                os.path.join(args.out, "cnn_digits_curves.png"))


def save_curves(histories, path):
    """Loss (training and test) and test accuracy per epoch of each ``{name: history}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, h in histories.items():
        epochs = range(1, len(h["loss"]) + 1)
        line, = left.plot(epochs, h["loss"], label=f"{name} training")
        left.plot(epochs, h["val_loss"], "--", color=line.get_color(), label=f"{name} test")
        right.plot(epochs, h["val_accuracy"], color=line.get_color(), label=name)
    left.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    right.set(xlabel="epoch", ylabel="accuracy", ylim=(0.9, 1.0), title="test accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("CNN vs MLP on the 8x8 digits")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
