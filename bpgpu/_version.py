"""The version of bpgpu, in one place: pyproject.toml reads it when building, and
``bpgpu.__version__`` re-exports it."""

__version__ = "0.1.0"
