"""A stand-in ``cupy`` module: the array calls bpgpu's CuPy code makes, NumPy-backed, plus the
emulated kernel classes (kernels.py) and the emulated ``cupy.cuda`` (cuda.py).

Arrays are NumPy arrays of a subclass with CuPy's ``set``/``get``, so the reference layers
running next to the fused kernels work unchanged. Every device operation goes through
``cuda.run`` (recorded during stream capture, logged with the current device); allocations
happen at once. Only what bpgpu calls is here: anything else is an AttributeError.
"""

import types

import numpy as np

from . import cuda
from .kernels import ElementwiseKernel, RawKernel, ReductionKernel


class ndarray(np.ndarray):  # noqa: N801  (CuPy's name)
    """A NumPy array with CuPy's host-transfer methods."""

    def set(self, host, stream=None):
        """Copy the host array ``host`` in (``cupy.ndarray.set``)."""
        host = np.asarray(host)
        if host.shape != self.shape or host.dtype != self.dtype:
            raise ValueError(f"set: host array {host.shape} {host.dtype} does not match "
                             f"{self.shape} {self.dtype}")
        snapshot = host.copy()  # what a copy from pinned memory reads when it executes is
        cuda.run("memcpy_htod", lambda: np.copyto(self, snapshot))  # modelled as at the call

    def get(self, stream=None):
        cuda.host_read("ndarray.get")
        return np.array(self, copy=True)


def _quietly(operation, *args, **kwargs):
    """A device computation: overflow to inf and NaN happen without warnings, as on a GPU
    (the mixed-precision loss scaler provokes them on purpose)."""
    with np.errstate(all="ignore"):
        return operation(*args, **kwargs)


def empty(shape, dtype=float):
    cuda.allocated()
    return np.empty(shape, dtype).view(ndarray)


def zeros(shape, dtype=float):
    out = empty(shape, dtype)
    out[...] = 0  # the memset is part of the allocation here (CuPy: a kernel)
    return out


def matmul(a, b, out=None):
    if out is None:
        out = empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]),
                    np.result_type(a, b))
    cuda.run("matmul", lambda: _quietly(np.matmul, a, b, out=out))
    return out


def sum(a, axis=None, dtype=None, out=None):  # noqa: A001  (CuPy's name)
    """``dtype``: the type to accumulate in and return (CuPy's and NumPy's meaning)."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    if out is None:
        out = empty(np.sum(np.zeros((1,) * a.ndim, a.dtype), axis=axis).shape, dtype)
    cuda.run("sum", lambda: _quietly(np.sum, a, axis=axis, dtype=dtype, out=out))
    return out


def copyto(dst, src):
    cuda.run("copyto", lambda: np.copyto(dst, src))


def ascontiguousarray(a):
    if a.flags.c_contiguous:
        return a
    out = empty(a.shape, a.dtype)
    copyto(out, a)
    return out


def asnumpy(a):
    cuda.host_read("asnumpy")
    return np.array(a, copy=True)


def array(a, dtype=None, copy=True):
    out = empty(np.shape(a), dtype if dtype is not None else np.asarray(a).dtype)
    host = np.array(a, copy=True)
    cuda.run("memcpy_htod", lambda: np.copyto(out, host))
    return out


def make_module():
    """A fresh module object named ``cupy`` (emulated)."""
    mod = types.ModuleType("cupy", "CPU emulation of the parts of CuPy bpgpu uses (tests only)")
    mod.__emulated__ = True
    mod.ndarray = np.ndarray  # isinstance checks accept plain NumPy arrays too
    for name in ("float16", "float32", "float64", "int32", "int64", "uint64", "bool_"):
        setattr(mod, name, getattr(np, name))
    for fn in (empty, zeros, matmul, sum, copyto, ascontiguousarray, asnumpy, array):
        setattr(mod, fn.__name__, fn)
    mod.ElementwiseKernel = ElementwiseKernel
    mod.ReductionKernel = ReductionKernel
    mod.RawKernel = RawKernel
    mod.cuda = cuda.make_namespace()
    return mod
