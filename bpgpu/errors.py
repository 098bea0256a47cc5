"""Every exception bpgpu raises on purpose, in one place.

Each message says what was wrong and what was expected; the classes derive from the built-in
exception a caller would naturally catch (ValueError, RuntimeError, ...).
"""


class BackendUnavailableError(RuntimeError):
    """A backend was asked for explicitly but cannot run here.

    Attributes: ``backend`` (the name asked for), ``reason`` (why it cannot run) and
    ``install`` (the command that would make it available, or None).
    """

    def __init__(self, backend, reason, install=None):
        self.backend = backend
        self.reason = reason
        self.install = install
        message = f"backend {backend!r} is unavailable: {reason}"
        if install:
            message += f". To enable it: {install}"
        super().__init__(message)


class ModelFileError(ValueError):
    """A file given to :func:`bpgpu.load` is not a readable bpgpu model file."""


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes: ``epoch`` and ``step`` (0-based) where it happened, and ``loss`` (the bad value).
    """

    def __init__(self, epoch, step, loss):
        self.epoch = epoch
        self.step = step
        self.loss = loss
        super().__init__(
            f"training diverged: the loss became {loss} at epoch {epoch}, step {step}. "
            "The network keeps the weights of the last finite step; try a lower learning rate "
            "(or gradient clipping with clip_norm=...)."
        )
