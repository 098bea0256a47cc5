"""The record ``fit`` returns: one value per epoch for the loss and every metric."""

__all__ = ["History"]


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
