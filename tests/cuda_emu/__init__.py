"""CPU emulation of the CuPy kernel API for tests (never shipped): see docs/guide/gpu.md.

:func:`load` imports a bpgpu module that does ``import cupy`` with the emulated module in its
place, under a private name, so the real ``bpgpu.kernels._cupy_fused`` (and ``sys.modules``)
stay untouched and CuPy stays "not installed" for the rest of the test run.
"""

import importlib.util
import sys
from pathlib import Path

from .compiler import EmulationError
from .fake_cupy import make_module

__all__ = ["EmulationError", "load", "make_module"]

_BPGPU = Path(__file__).resolve().parents[2] / "bpgpu"


def load(relative_path, cupy_module):
    """Import ``bpgpu/<relative_path>`` with ``cupy_module`` as its ``cupy``."""
    path = _BPGPU / relative_path
    package = "bpgpu." + ".".join(Path(relative_path).parent.parts)
    name = f"{package}._emulated_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    missing = object()
    saved = sys.modules.get("cupy", missing)
    sys.modules["cupy"] = cupy_module
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is missing:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = saved
    return module
