"""Subnormal numbers flushed to zero in the threads of a NumPy fast step (x86-64 Linux).

A float32 below 1.2e-38 in magnitude (a subnormal) costs an x86 CPU a microcode assist in every
operation that reads or writes it unless the thread's MXCSR register has FTZ (results flushed to
zero, bit 15) and DAZ (inputs read as zero, bit 6) set. Training makes subnormals on its own:
softmax probabilities of classes far from the answer (exp(-100) = 3.7e-44), their gradients,
Adam's squared gradients. Measured on a 2-vCPU Intel Xeon (AVX-512, OpenBLAS SkylakeX kernel):
a 512 x 256 x 512 float32 product with 1 % subnormal inputs took 3.8 ms instead of 0.83 ms, with
10 % 28.6 ms; the mlp-10x512 benchmark step went from 23 ms to 100 ms after 40 steps, and back to
22 ms with FTZ and DAZ set. XLA (so JAX) runs its CPU programs with both bits set, and CuPy
compiles every kernel with ``-ftz=true``; bpgpu's NumPy fast step now does the same.

:func:`flushing` sets both bits in the calling thread and restores the caller's mode on leaving
(exception flags are left alone; the glibc calls ``fegetmode``/``fesetmode`` change the control
bits only). :func:`carry` hands the mode to a job that runs in another thread (the row-shard
pool). OpenBLAS's own worker threads keep their mode, so the half of a two-thread product that
runs on a worker still reads subnormal inputs the slow way; everything else of the step (the
element-wise passes, which turn whatever they write into normal numbers or zero, and products in
row shards, where BLAS runs in the calling thread) is flushed.

``BPGPU_FLUSH_DENORMALS=0`` turns it off (``1``, the default, on). Elsewhere than x86-64 Linux
with glibc 2.25 or newer :func:`flushing` changes nothing and :func:`support` says why.
"""

import contextlib
import ctypes
import ctypes.util
import os
import platform
import sys

__all__ = ["flushing", "carry", "support", "ENV"]

#: The environment variable that turns flushing off ("0") or on ("1", default).
ENV = "BPGPU_FLUSH_DENORMALS"

_FTZ_DAZ = 0x8040   # MXCSR bit 15 (flush to zero) | bit 6 (denormals are zero)


class _Mode(ctypes.Structure):
    """glibc's ``femode_t`` on x86-64: the x87 control word and the MXCSR register."""

    _fields_ = [("control_word", ctypes.c_ushort), ("reserved", ctypes.c_ushort),
                ("mxcsr", ctypes.c_uint)]


def _load():
    """(fegetmode, fesetmode, None) from the C maths library, or (None, None, why not)."""
    machine = platform.machine().lower()
    if not sys.platform.startswith("linux") or machine not in ("x86_64", "amd64"):
        return None, None, f"needs x86-64 Linux (this is {sys.platform} on {machine})"
    try:
        try:  # glibc's name first: find_library runs ldconfig in a subprocess
            libm = ctypes.CDLL("libm.so.6")
        except OSError:
            libm = ctypes.CDLL(ctypes.util.find_library("m"))
        get, put = libm.fegetmode, libm.fesetmode
    except (OSError, AttributeError, TypeError) as exc:
        return None, None, f"the C library has no fegetmode/fesetmode (glibc >= 2.25): {exc}"
    get.argtypes = put.argtypes = [ctypes.POINTER(_Mode)]
    get.restype = put.restype = ctypes.c_int
    return get, put, None


_get_mode, _set_mode, _unsupported = _load()


def support():
    """(True, "") where the mode can be set here, else (False, the reason)."""
    return (_unsupported is None, _unsupported or "")


def _wanted():
    """Whether ``BPGPU_FLUSH_DENORMALS`` asks for flushing (unset: yes)."""
    text = os.environ.get(ENV, "").strip()
    if text in ("", "1"):
        return True
    if text == "0":
        return False
    raise ValueError(f"{ENV} must be 0 (off) or 1 (on), got {text!r}")


@contextlib.contextmanager
def _in_mode(mode):
    """A context in which this thread runs in ``mode`` (a :class:`_Mode`); the thread's own
    mode comes back on leaving, also after an exception."""
    own = _Mode()
    _get_mode(ctypes.byref(own))
    _set_mode(ctypes.byref(mode))
    try:
        yield
    finally:
        _set_mode(ctypes.byref(own))


@contextlib.contextmanager
def flushing():
    """A context in which this thread flushes subnormal results to zero and reads subnormal
    inputs as zero; the thread's previous mode comes back on leaving, also after an exception.
    Nested entries are fine. Does nothing when turned off or unsupported (module docstring)."""
    if _get_mode is None or not _wanted():
        yield
        return
    mode = _Mode()
    _get_mode(ctypes.byref(mode))
    mode.mxcsr |= _FTZ_DAZ
    with _in_mode(mode):
        yield


def carry(job):
    """``job`` made to run in another thread in this thread's present mode (flushing or not),
    the other thread's own mode restored afterwards. Call it in the calling thread. Needed both
    ways: a pool thread started while its creator was flushing inherits the flushing mode."""
    if _get_mode is None:
        return job
    callers = _Mode()
    _get_mode(ctypes.byref(callers))

    def job_in_callers_mode():
        with _in_mode(callers):
            return job()
    return job_in_callers_mode
