"""Intel MKL's matrix products for the row shards of a NumPy fast step (optional).

A row-sharded step (:mod:`bpgpu.kernels._cpu_threads`) runs its matrix products one thread per
shard, with BLAS pinned to the calling thread. With NumPy's OpenBLAS these single-threaded
products are what bounds the large steps. On a 2-vCPU Intel Xeon (AVX-512; one core's FMA peak
about 226 GFLOP/s), two threads multiplying at once with their operands in L3, as in a step
(benchmarks/bench_products.py, benchmarks/results/products-2026-12-03.md): mlp-10x512's shard
products ran at 125-132 GFLOP/s per thread through NumPy's OpenBLAS and 142-160 through MKL's
``cblas_sgemm`` (1.08-1.28x by product), 784-1024-1024-10's at 162-171 against 185-202. Where MKL
is installed (``pip install mkl``, or ``pip install "bpgpu[mkl]"``), the products of row-sharded
steps go through it.

``BPGPU_BLAS`` chooses: ``auto`` (default) uses MKL when its runtime library
``libmkl_rt`` is found (in this Python environment's ``lib`` directory or on the loader's path),
``numpy`` always uses ``np.dot``, ``mkl`` requires MKL (an error when it is missing). MKL runs
sequential here (its threading layer is set to sequential when bpgpu is the first to load it,
and every calling thread asks for one thread), so it never starts threads of its own.

On loading, a few products of every layout are compared with ``np.dot``; MKL is used only when
they agree to float rounding. Results differ from NumPy's products in the last bits (another
order of summation), as any two BLAS libraries do; the NumPy fast path is compared with the
reference path to a tolerance either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["ENV", "gemm", "support"]

#: The environment variable choosing the products of row-sharded steps: auto, numpy or mkl.
ENV = "BPGPU_BLAS"
_CHOICES = ("auto", "numpy", "mkl")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SEQUENTIAL = 1     # MKL_THREADING_SEQUENTIAL
_NAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")

_lock = threading.Lock()
_loaded: tuple[Any, str] | None = None   # (library or None, why not / where from)
_local = threading.local()               # .one: this thread has asked MKL for one thread


def _choice() -> str:
    text = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if text not in _CHOICES:
        raise ValueError(f"{ENV} must be one of {', '.join(_CHOICES)}, got {text!r}")
    return text


def _candidates() -> list[str]:
    """Where to look for MKL's runtime library: this environment's lib directory (where the
    ``mkl`` wheel puts it), then the loader's search path."""
    paths = [os.path.join(sys.prefix, "lib", name) for name in _NAMES]
    paths = [p for p in paths if os.path.isfile(p)]
    found = ctypes.util.find_library("mkl_rt") if not paths else None
    return paths + ([found] if found else [])


def _load() -> tuple[Any, str]:
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _open()
        return _loaded


def _open() -> tuple[Any, str]:
    if not sys.platform.startswith("linux"):
        return None, f"MKL is looked for on Linux only (this is {sys.platform})"
    paths = _candidates()
    if not paths:
        return None, "MKL not installed (pip install mkl)"
    first = not _mkl_in_process()
    try:
        lib = ctypes.CDLL(paths[0])
        if first and "MKL_THREADING_LAYER" not in os.environ:
            layer = lib.MKL_Set_Threading_Layer
            layer.argtypes, layer.restype = [ctypes.c_int], ctypes.c_int
            layer(_SEQUENTIAL)
        threads = lib.MKL_Set_Num_Threads_Local
        threads.argtypes, threads.restype = [ctypes.c_int], ctypes.c_int
        i, p = ctypes.c_int, ctypes.c_void_p
        for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
            fn = getattr(lib, name)
            fn.argtypes = [i, i, i, i, i, i, real, p, i, p, i, real, p, i]
            fn.restype = None
    except (OSError, AttributeError) as exc:
        return None, f"MKL at {paths[0]} could not be loaded: {exc}"
    wrong = _self_check(lib)
    if wrong:
        return None, f"MKL at {paths[0]} disagrees with np.dot ({wrong}); not used"
    return lib, f"MKL ({paths[0]})"


def _mkl_in_process() -> bool:
    """Whether an MKL runtime is already loaded (an MKL-built NumPy, say): its threading layer
    is then left as its owner set it, and bpgpu's calls ask for one thread each instead."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return any("libmkl_rt" in line for line in maps)
    except OSError:
        return True  # unknown: leave the layer alone


def _operand(a: Any) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a non-empty 2-D operand BLAS can read in place,
    else None."""
    if a.flags.c_contiguous:
        return _NO_TRANS, a.shape[1]
    if a.flags.f_contiguous:
        return _TRANS, a.shape[0]
    return None


def _library() -> tuple[Any, str]:
    """(MKL, where from) when it is chosen and loads, else (None, why not). Raises ValueError
    when ``BPGPU_BLAS=mkl`` and MKL cannot be used."""
    choice = _choice()
    if choice == "numpy":
        return None, f"{ENV}=numpy"
    lib, why = _loaded or _load()
    if lib is None and choice == "mkl":
        raise ValueError(f"{ENV}=mkl, but {why}")
    return lib, why


def gemm(a: Any, b: Any, out: Any) -> bool:
    """out = a b through MKL when it is chosen and loaded and the operands suit it: 2-D, the
    same float32 or float64 type, each C- or F-contiguous (a transpose), out C-contiguous of
    shape (a rows, b columns) and apart from both. Returns False, leaving ``out`` untouched, when
    it did not run (then use ``np.dot``)."""
    lib = _library()[0]
    return lib is not None and _run(lib, a, b, out)


def _run(lib: Any, a: Any, b: Any, out: Any) -> bool:
    """:func:`gemm` with the library given."""
    if a.ndim != 2 or b.ndim != 2 or 0 in a.shape or 0 in b.shape:
        return False
    dtype = out.dtype
    if dtype not in (np.float32, np.float64) or a.dtype != dtype or b.dtype != dtype \
            or not out.flags.c_contiguous or a.shape[1] != b.shape[0] \
            or out.shape != (a.shape[0], b.shape[1]):
        return False
    left, right = _operand(a), _operand(b)
    if left is None or right is None or np.may_share_memory(out, a) \
            or np.may_share_memory(out, b):  # BLAS would read what it has already written
        return False
    if not getattr(_local, "one", False):
        lib.MKL_Set_Num_Threads_Local(1)
        _local.one = True
    fn = lib.cblas_sgemm if dtype == np.float32 else lib.cblas_dgemm
    fn(_ROW_MAJOR, left[0], right[0], a.shape[0], b.shape[1], a.shape[1], 1.0, a.ctypes.data,
       left[1], b.ctypes.data, right[1], 0.0, out.ctypes.data, out.shape[1])
    return True


def _self_check(lib: Any) -> str:
    """Products of every operand layout, float32 and float64, against np.dot: '' when all
    agree to rounding, else which one did not."""
    rng = np.random.default_rng(7)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-12)):
        x = rng.standard_normal((37, 19)).astype(dtype)
        y = rng.standard_normal((19, 23)).astype(dtype)
        for a in (x, np.asfortranarray(x)):
            for b in (y, np.asfortranarray(y)):
                out = np.empty((37, 23), dtype)
                if not _run(lib, a, b, out) or not np.allclose(out, np.dot(a, b), rtol=tol,
                                                          atol=tol):
                    return (f"{np.dtype(dtype).name}, {'C' if a.flags.c_contiguous else 'F'}"
                            f"{'C' if b.flags.c_contiguous else 'F'}")
    return ""


def support() -> str:
    """What serves the products of row-sharded steps: 'MKL (path)' or 'np.dot' with the reason.
    Raises ValueError when ``BPGPU_BLAS=mkl`` and MKL cannot be used."""
    lib, why = _library()
    return why if lib is not None else f"np.dot ({why})"
