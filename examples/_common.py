"""Shared bits of the example scripts: the command line, a classifier MLP, training with a report,
and the loss-curve plot."""

import argparse
import os
import time


def parse_args(description, precision=False, **defaults):
    """``--backend``, ``--epochs``, ``--seed`` and ``--out`` (folder for the PNG) for every example;
    with ``precision=True`` also ``--precision`` (None, mixed_float16 or mixed_bfloat16)."""
    parser = argparse.ArgumentParser(description=description)
    if precision:
        parser.add_argument("--precision", default=None,
                            choices=["mixed_float16", "mixed_bfloat16"],
                            help="mixed precision (default: everything in float32)")
    parser.add_argument("--backend", default=None,
                        help="auto, numpy, cupy, torch or array_api_strict (default: $BPGPU_BACKEND or auto)")
    parser.add_argument("--epochs", type=int, default=defaults.get("epochs", 100))
    parser.add_argument("--seed", type=int, default=defaults.get("seed", 0))
    parser.add_argument("--out", default=".", help="folder for the loss-curve PNG")
    return parser.parse_args()


def save_loss_curve(losses, path, title, ylabel="loss", log=False, extra=None):
    """Plot per-epoch ``losses`` (and optional ``extra = {label: values}``) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(losses) + 1), losses, label="training")
    for label, values in (extra or {}).items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")


def mlp_classifier(sizes, backend, seed, precision=None):
    """A ReLU MLP of layer ``sizes`` trained with Adam (lr 1e-3) on softmax cross-entropy."""
    import bpgpu
    from bpgpu.optimizers import Adam

    return bpgpu.Network.from_sizes(sizes, activation="relu", loss="cross_entropy",
                                    optimizer=Adam(lr=1e-3), backend=backend, seed=seed,
                                    precision=precision)


def fit_and_report(net, data, epochs, batch_size, png, title):
    """Train ``net`` on ``data = (X_train, X_test, y_train, y_test)`` with the test set as
    validation data; print the backend, the summary, the time, the test accuracy (and, in mixed
    precision, the loss scale) and save the loss curves to ``png``."""
    X_train, X_test, y_train, y_test = data
    print(f"backend: {net.backend.name} ({net.backend.reason})")
    print(net.summary())
    start = time.perf_counter()
    history = net.fit(X_train, y_train, epochs=epochs, batch_size=batch_size,
                      validation_data=(X_test, y_test), verbose=1)
    seconds = time.perf_counter() - start
    result = net.evaluate(X_test, y_test)
    print(f"trained {epochs} epochs in {seconds:.1f} s")
    print(f"test accuracy: {result['accuracy']:.4f}  (test loss {result['loss']:.4f})")
    if "skipped_steps" in history.history:
        print(f"loss scale {history.history['loss_scale'][-1]:g}, "
              f"{int(sum(history.history['skipped_steps']))} steps skipped")
    save_loss_curve(history.history["loss"], png, title, ylabel="cross-entropy",
                    extra={"test": history.history["val_loss"]})
