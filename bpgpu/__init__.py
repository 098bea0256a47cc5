"""bpgpu: neural networks trained by explicit backpropagation, on NumPy, CuPy or any Array API
library, chosen with one switch (``backend=``)."""

from . import (
    callbacks,
    distributed,
    export,
    initializers,
    layers,
    losses,
    metrics,
    optimizers,
    registry,
    schedules,
    special,
)
from ._version import __version__ as __version__
from .backend import Backend, available_backends, get_backend
from .errors import (
    BackendUnavailableError,
    DistributedError,
    DistributedUnavailableError,
    ModelFileError,
    TrainingDivergedError,
)
from .gradcheck import gradcheck, gradient_errors
from .history import History
from .io import load
from .network import Network

__all__ = ["Network", "History", "Backend", "get_backend", "available_backends", "load",
           "gradcheck", "gradient_errors", "BackendUnavailableError", "ModelFileError",
           "TrainingDivergedError", "DistributedError", "DistributedUnavailableError", "layers",
           "losses", "optimizers", "initializers", "schedules", "callbacks", "metrics",
           "distributed", "export", "special", "registry"]
