"""A stand-in ``cupy`` module: the array calls bpgpu's CuPy code makes, NumPy-backed, plus the
emulated kernel classes (kernels.py) and a recording stream/graph API (cuda.py).

Arrays are plain NumPy arrays, so the reference layers running next to the fused kernels work
unchanged. Only what bpgpu calls is here; anything else is an AttributeError naming the module.
"""

import types

import numpy as np

from . import cuda
from .kernels import ElementwiseKernel, RawKernel, ReductionKernel


def make_module():
    """A fresh module object named ``cupy`` (emulated)."""
    mod = types.ModuleType("cupy", "CPU emulation of the parts of CuPy bpgpu uses (tests only)")
    mod.__emulated__ = True
    mod.ndarray = np.ndarray
    for name in ("float32", "float64", "int32", "int64", "uint64", "bool_"):
        setattr(mod, name, getattr(np, name))
    mod.empty = lambda shape, dtype=float: np.empty(shape, dtype)
    mod.zeros = lambda shape, dtype=float: np.zeros(shape, dtype)
    mod.matmul = np.matmul
    mod.sum = np.sum
    mod.copyto = np.copyto
    mod.ascontiguousarray = np.ascontiguousarray
    mod.asnumpy = lambda a: np.array(a, copy=True)
    mod.array = lambda a, dtype=None, copy=True: np.array(a, dtype=dtype, copy=copy)
    mod.ElementwiseKernel = ElementwiseKernel
    mod.ReductionKernel = ReductionKernel
    mod.RawKernel = RawKernel
    mod.cuda = cuda.make_namespace()
    return mod
