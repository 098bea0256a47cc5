"""Shared bits of the example scripts: the command line and the loss-curve plot."""

import argparse
import os


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
