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


class DistributedError(RuntimeError):
    """The processes of a data-parallel run disagree: a rank rejected its ``fit`` call, or the
    ranks' data, networks or settings differ. Raised on every rank, before the first step."""


class DistributedUnavailableError(RuntimeError):
    """Data-parallel training was asked for but cannot run here (mpi4py missing, or NCCL asked
    for explicitly where it cannot serve). The message names what is missing and how to get it."""


class ModelFileError(ValueError):
    """A file given to :func:`bpgpu.load` is not a readable bpgpu model file."""


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite.

    Attributes: ``epoch`` and ``step`` (0-based, the step within the epoch) where it happened,
    ``loss`` (the bad value), ``weights`` (True when the last update of an epoch made a weight
    non-finite while every loss was still finite).
    """

    def __init__(self, epoch, step, loss, weights=False):
        self.epoch = epoch
        self.step = step
        self.loss = loss
        self.weights = bool(weights)
        where = f"at epoch {epoch}, step {step}"
        what = (f"the update {where} made the weights non-finite" if weights
                else f"the loss became {loss} {where}")
        super().__init__(
            f"training diverged: {what}. "
            "The network keeps the weights of the last finite step; try a lower learning rate "
            "(or gradient clipping with clip_norm=...)."
        )
