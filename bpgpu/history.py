"""The record ``fit`` returns: one value per epoch for the loss and every metric."""

import math

__all__ = ["History"]

_EXTRA = 'pip install "bpgpu[examples]"'


class History:
    """``history.history`` maps names (``"loss"``, ``"val_loss"``, ...) to per-epoch lists;
    ``history.epoch`` lists the epoch numbers (0-based) those values belong to."""

    def __init__(self, history=None, epoch=None):
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.epoch = list(epoch or [])

    def append(self, epoch, logs):
        """Record ``logs`` ({name: float}) for ``epoch``."""
        self.epoch.append(epoch)
        for name, value in logs.items():
            self.history.setdefault(name, []).append(float(value))

    def __getitem__(self, name):
        return self.history[name]

    def __len__(self):
        return len(self.epoch)

    def __repr__(self):
        last = {k: round(v[-1], 6) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last})"

    def to_dict(self):
        """``{"history": {name: [floats]}, "epoch": [ints]}`` (JSON-serialisable; NaN and inf
        are written as Python's json writes them)."""
        return {"history": {k: list(v) for k, v in self.history.items()},
                "epoch": list(self.epoch)}

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`; ValueError for anything else."""
        ok = isinstance(data, dict) and isinstance(data.get("history"), dict) \
            and isinstance(data.get("epoch"), list) \
            and all(isinstance(e, int) and not isinstance(e, bool) for e in data["epoch"])
        ok = ok and all(isinstance(k, str) and isinstance(v, list)
                        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                        for k, v in data["history"].items())
        if not ok:
            raise ValueError("a history must be {'history': {name: [numbers]}, 'epoch': [ints]}")
        return cls({k: [float(x) for x in v] for k, v in data["history"].items()}, data["epoch"])

    def plot(self, path=None):
        """Draw every recorded quantity against the epoch: one panel per name, training and
        ``val_`` curves together (``lr``, if recorded, on a log scale). Returns the matplotlib
        Figure; with ``path``, also saves it there (PNG by the file name) without opening a
        window. Needs matplotlib: ``pip install "bpgpu[examples]"``."""
        try:
            if path is None:
                import matplotlib.pyplot as plt
            else:
                from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(f"History.plot needs matplotlib, which is not installed; install "
                              f"it with: {_EXTRA}") from None
        names = [k for k in self.history if not k.startswith("val_")]
        names += [k[4:] for k in self.history if k.startswith("val_") and k[4:] not in names]
        if not names:
            raise ValueError("the history is empty: train with fit() first")
        cols = min(len(names), 3)
        rows = math.ceil(len(names) / cols)
        size = (4.5 * cols, 3.2 * rows)
        fig = plt.figure(figsize=size) if path is None else Figure(figsize=size)
        epochs = [e + 1 for e in self.epoch]
        for i, name in enumerate(names):
            ax = fig.add_subplot(rows, cols, i + 1)
            for key, label in ((name, "training"), (f"val_{name}", "validation")):
                if key in self.history:
                    values = self.history[key]
                    ax.plot(epochs[-len(values):], values, marker="o" if len(values) < 30 else None,
                            markersize=3, label=label if name != "lr" else None)
            if name == "lr":
                ax.set_yscale("log")
                ax.set_title("learning rate")
            else:
                ax.set_title(name)
                if f"val_{name}" in self.history:
                    ax.legend()
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig
