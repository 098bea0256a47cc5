"""Backends: the one place that knows which array library runs the math.

A :class:`Backend` carries the Array API namespace ``xp`` that every layer, loss and optimizer
computes with, the device the arrays live on, and the things the standard leaves out: random
numbers, moving arrays to and from the host, and waiting for the device.

Names accepted by :func:`get_backend`:

* ``"numpy"`` - NumPy on the CPU (through ``array_api_compat.numpy``).
* ``"cupy"`` - CuPy on the current CUDA device (through ``array_api_compat.cupy``);
  ``"cupy:N"`` on CUDA device N.
* ``"torch"`` - PyTorch through ``array_api_compat.torch``: CUDA when available, else CPU;
  ``"torch:cpu"`` and ``"torch:cuda"`` pick explicitly.
* ``"array_api_strict"`` - the standard's reference implementation: slow, but it rejects
  everything outside the standard, so it proves the code is portable.
* ``"auto"`` - CuPy when it imports and a CUDA device answers, else NumPy.

``None`` means the value of the environment variable ``BPGPU_BACKEND``, or ``"auto"``.
CuPy and torch are imported only when asked for, so ``import bpgpu`` stays light.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from .errors import BackendUnavailableError
from .typing import Array, ArrayLike, Device, Namespace

__all__ = ["Backend", "get_backend", "available_backends", "BACKEND_NAMES"]

BACKEND_NAMES = ("auto", "numpy", "cupy", "torch", "torch:cpu", "torch:cuda", "array_api_strict")

_INSTALL = {
    "cupy": 'pip install "bpgpu[cuda12]" (CUDA 12) or "bpgpu[cuda13]" (CUDA 13)',
    "torch": "pip install torch",
    "array_api_strict": "pip install array-api-strict",
}

_DTYPE_NAMES = ("float32", "float64")


class Backend:
    """An array library plus a device.

    Attributes:
        name: the backend's name (``"numpy"``, ``"cupy"``, ``"torch"``, ``"array_api_strict"``).
        xp: the Array API namespace.
        device: the device arrays are created on.
        reason: why this backend was chosen (meaningful for ``"auto"``).
        supports_float64: whether ``xp.float64`` can be used on this device.
        kernels: this backend's fast-path kernel set (:mod:`bpgpu.kernels`), or None where it has
            none (torch, array_api_strict); created on first use.
    """

    name = "abstract"
    supports_float64 = True

    def __init__(self, xp: Namespace, device: Device, reason: str = "requested explicitly") -> None:
        self.xp = xp
        self.device = device
        self.reason = reason

    def __repr__(self):
        return f"Backend(name={self.name!r}, device={self.device!s}, reason={self.reason!r})"

    @property
    def kernels(self):
        if "_kernels" not in self.__dict__:
            from .kernels import kernels_for

            self._kernels = kernels_for(self)
        return self._kernels

    # -- dtypes -------------------------------------------------------------------------------
    def dtype(self, name: str) -> Any:
        """The backend's floating dtype for ``"float32"`` or ``"float64"``."""
        if name not in _DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {_DTYPE_NAMES}, got {name!r}")
        if name == "float64" and not self.supports_float64:
            raise ValueError(f"backend {self.name!r} on device {self.device} has no float64")
        return getattr(self.xp, name)

    def dtype_name(self, dtype: Any) -> str:
        """The name (``"float32"``...) of one of this backend's floating dtypes."""
        for name in _DTYPE_NAMES:
            if dtype == getattr(self.xp, name):
                return name
        raise ValueError(f"{dtype!r} is not a floating dtype bpgpu supports ({_DTYPE_NAMES})")

    # -- math the layers ask the backend for --------------------------------------------------------
    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b``. Layers multiply matrices through this hook so that a backend can replace a
        product its library does slowly for some dtype (NumPy's float16, see NumPyBackend)."""
        return a @ b

    # -- host <-> device ------------------------------------------------------------------------
    def is_native(self, x: Any) -> bool:
        """True when ``x`` is an array of this backend's library."""
        raise NotImplementedError

    def asarray(self, data: ArrayLike, dtype: Any = None) -> Array:
        """A fresh array on this backend's device from host data or a native array.

        Always copies, so the caller's array is never aliased or mutated.
        """
        if self.is_native(data):
            x = self.xp.asarray(data, copy=True)
            if dtype is not None and x.dtype != dtype:
                x = self.xp.astype(x, dtype, copy=False)
            return x
        host = np.asarray(data)
        if dtype is not None:
            host = host.astype(_numpy_dtype(self, dtype), copy=False)
        return self._from_host(np.ascontiguousarray(host))

    def borrow(self, data, dtype):
        """``data`` itself when this backend can read it in place (a native array of ``dtype``,
        C-contiguous, on this device), else :meth:`asarray`'s copy. The caller must only read the
        result: it may be the caller's own array."""
        return self.asarray(data, dtype=dtype)

    def take_rows(self, x, indices, out=None):
        """Rows ``indices`` of ``x`` (``xp.take`` along axis 0); backends that can write them
        into ``out`` (an array of the result's shape and dtype) do, and return it."""
        return self.xp.take(x, indices, axis=0)

    def _from_host(self, host):
        return self.xp.asarray(host, copy=True, device=self.device)

    def to_numpy(self, x: Array) -> np.ndarray:
        """A host NumPy array holding the values of ``x`` (a copy for device arrays)."""
        raise NotImplementedError

    def to_float(self, x: Array) -> float:
        """A Python float from a 0-d (or one-element) array; waits for the device."""
        return float(self.to_numpy(x).reshape(-1)[0])

    def synchronize(self) -> None:
        """Wait until all work queued on the device has finished (no-op on the CPU)."""

    def activate(self) -> contextlib.AbstractContextManager[Any]:
        """A context manager making this backend's device current (CuPy); a no-op elsewhere.
        Network methods run inside it, so every array they create lands on ``device``."""
        return contextlib.nullcontext()

    # -- randomness -------------------------------------------------------------------------------
    def make_rng(self, seed: Any) -> Any:
        """A :class:`DeviceRNG` drawing directly on this backend's device."""
        return _HostRNG(self, seed)

    def rng_state(self, rng: Any) -> dict[str, Any]:
        """A JSON-serialisable snapshot of ``rng`` (from :meth:`make_rng`)."""
        return rng.get_state()

    def set_rng_state(self, rng: Any, state: dict[str, Any]) -> None:
        rng.set_state(state)


class _HostRNG:
    """Draws on the host with NumPy and moves the result: exact and portable, not the fastest."""

    def __init__(self, backend, seed):
        self.backend = backend
        self.generator = np.random.default_rng(seed)

    def uniform(self, shape, dtype):
        """Uniform numbers in [0, 1) of ``shape`` on the backend's device."""
        host = self.generator.random(shape, dtype=np.float64)
        return self.backend.asarray(host, dtype=dtype)

    def get_state(self):
        # NumPy bit-generator states hold only ints, strings and dicts: JSON-safe as they are.
        return {"kind": "numpy", "state": self.generator.bit_generator.state}

    def set_state(self, state):
        self.generator.bit_generator.state = state["state"]


def _numpy_dtype(backend, dtype):
    """The NumPy dtype with the same name as the backend dtype ``dtype``."""
    for name in ("float32", "float64", "int64", "int32", "bool"):
        if dtype == getattr(backend.xp, name):
            return np.dtype(name)
    raise ValueError(f"no NumPy equivalent for {dtype!r}")


class NumPyBackend(Backend):
    name = "numpy"

    def __init__(self, reason="requested explicitly"):
        from array_api_compat import numpy as xp

        super().__init__(xp, "cpu", reason)

    def is_native(self, x):
        return isinstance(x, np.ndarray)

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b``; for float16 operands, the float32 product rounded to float16: NumPy's own
        float16 product has no BLAS behind it and is about ten times slower. Each float16 product
        of two entries is exact in float32, so this is float16 inputs with float32 accumulation,
        as GPUs' 16-bit matrix units compute; it differs from ``a @ b`` by the order of the sum."""
        if a.dtype == np.float16 and b.dtype == np.float16:
            return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.float16)
        return a @ b

    def asarray(self, data, dtype=None):
        host = np.array(data, dtype=None if dtype is None else np.dtype(dtype), copy=True)
        return host

    def to_numpy(self, x):
        return np.array(x, copy=True)

    def to_float(self, x):
        return float(x) if np.ndim(x) == 0 else float(np.reshape(x, -1)[0])

    def borrow(self, data, dtype):
        if isinstance(data, np.ndarray) and data.dtype == np.dtype(dtype) \
                and data.flags.c_contiguous:
            return data
        return self.asarray(data, dtype=dtype)

    def take_rows(self, x, indices, out=None):
        if out is None:
            return np.take(x, indices, axis=0)
        return np.take(x, indices, axis=0, out=out, mode="clip")  # "raise" would buffer

    def make_rng(self, seed):
        return _NumPyRNG(seed)


class _NumPyRNG(_HostRNG):
    def __init__(self, seed):
        self.generator = np.random.default_rng(seed)

    def uniform(self, shape, dtype):
        return self.generator.random(shape, dtype=np.dtype(dtype))


class StrictBackend(Backend):
    name = "array_api_strict"

    def __init__(self, reason="requested explicitly"):
        try:
            import array_api_strict as xp
        except ImportError as exc:
            raise BackendUnavailableError(
                "array_api_strict", f"array-api-strict is not installed ({exc})",
                _INSTALL["array_api_strict"]) from None
        super().__init__(xp, xp.Device("CPU_DEVICE"), reason)
        self._array_type = type(xp.asarray(0.0))

    def is_native(self, x):
        return isinstance(x, self._array_type)

    def to_numpy(self, x):
        return np.array(np.asarray(x.to_device(self.device)), copy=True)


class CuPyBackend(Backend):
    """CuPy on one CUDA device: ``device_id`` None means the current device (``"cupy"``), an int
    N means device N (``"cupy:N"``). Every array and kernel of a Network on this backend goes to
    that device: its methods run inside :meth:`activate`."""

    name = "cupy"

    def __init__(self, device_id=None, reason="requested explicitly"):
        label = "cupy" if device_id is None else f"cupy:{device_id}"
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                label, f"CuPy is not installed ({exc})", _INSTALL["cupy"]) from None
        except Exception as exc:  # a broken install: missing CUDA libraries, a bad build...
            raise BackendUnavailableError(
                label, f"import cupy failed: {type(exc).__name__}: {exc}",
                f"reinstall CuPy for your CUDA version ({_INSTALL['cupy']})") from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError and friends: no driver, broken driver
            raise BackendUnavailableError(
                label, f"CUDA driver error: {exc}",
                "install an NVIDIA driver matching your CuPy build") from None
        if count < 1:
            raise BackendUnavailableError(
                label, "no CUDA device found", "run on a machine with an NVIDIA GPU")
        if device_id is not None and not 0 <= device_id < count:
            raise BackendUnavailableError(
                label, f"there is no CUDA device {device_id}: this machine has {count} "
                f"(devices 0 to {count - 1})", None)
        try:
            from array_api_compat import cupy as xp
        except Exception as exc:
            raise BackendUnavailableError(
                label, f"array_api_compat.cupy failed to import: {type(exc).__name__}: {exc}",
                "pip install -U array-api-compat") from None

        self._cupy = cupy
        device = cupy.cuda.Device() if device_id is None else cupy.cuda.Device(device_id)
        super().__init__(xp, device, reason)
        if os.environ.get("BPGPU_TF32", "").strip() not in ("", "0"):
            self.set_tf32(True)

    def activate(self):
        """Make this backend's device current for the ``with`` block."""
        return self.device

    def set_tf32(self, enabled):
        """Let cuBLAS multiply float32 matrices in TensorFloat-32 (``enabled=True``): much faster
        on Ampere and newer GPUs, about 1e-3 relative error. Off by default, so float32 products
        are exact float32 unless this, ``BPGPU_TF32=1`` or CuPy's own ``CUPY_TF32=1`` turns it
        on. The setting is process-wide: CuPy keeps one per dtype. Raises
        :class:`~bpgpu.BackendUnavailableError` when this CuPy version lacks the (private)
        switch."""
        try:
            from cupy._core import _routines_linalg as linalg

            mode = linalg.COMPUTE_TYPE_TF32 if enabled else linalg.COMPUTE_TYPE_DEFAULT
            linalg.set_compute_type(np.float32, mode)
        except (ImportError, AttributeError) as exc:
            raise BackendUnavailableError(
                "cupy", f"this CuPy ({getattr(self._cupy, '__version__', '?')}) has no TF32 "
                f"switch where bpgpu looks for it (cupy._core._routines_linalg: {exc}); use "
                "the environment variable CUPY_TF32=1 before importing CuPy instead", None) from None

    def is_native(self, x):
        return isinstance(x, self._cupy.ndarray)

    def _from_host(self, host):
        with self.device:
            return self._cupy.array(host, copy=True)

    def to_numpy(self, x):
        return self._cupy.asnumpy(x)

    def synchronize(self):
        with self.device:
            self._cupy.cuda.get_current_stream().synchronize()

    def make_rng(self, seed):
        """Counter-based Philox numbers on the device (:mod:`bpgpu.kernels._cupy_random`)."""
        from .kernels._cupy_random import PhiloxRNG

        return PhiloxRNG(seed)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device=None, reason="requested explicitly"):
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                "torch", f"PyTorch is not installed ({exc})", _INSTALL["torch"]) from None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch:cuda", "no CUDA device found (torch.cuda.is_available() is False)",
                "install a CUDA build of PyTorch on a machine with an NVIDIA GPU")
        from array_api_compat import torch as xp

        self._torch = torch
        super().__init__(xp, torch.device(device), reason)

    def is_native(self, x):
        return isinstance(x, self._torch.Tensor)

    def asarray(self, data, dtype=None):
        if self.is_native(data):
            x = data.detach().to(self.device).clone()
            return x if dtype is None else x.to(dtype)
        return super().asarray(data, dtype)

    def to_numpy(self, x):
        return x.detach().cpu().numpy().copy()

    def synchronize(self):
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)


def get_backend(name: str | Backend | None = None) -> Backend:
    """The :class:`Backend` called ``name`` (see the module docstring for the names).

    A :class:`Backend` instance is returned as it is. An explicit name that cannot run raises
    :class:`~bpgpu.BackendUnavailableError`; ``"auto"`` never raises for lack of a GPU.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = os.environ.get("BPGPU_BACKEND", "auto") or "auto"
    if isinstance(name, str) and name.startswith("cupy:"):
        return CuPyBackend(_device_number(name))
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)} "
                         "or 'cupy:N' (CUDA device N)")
    if name == "auto":
        return _auto_backend()
    if name == "numpy":
        return NumPyBackend()
    if name == "cupy":
        return CuPyBackend()
    if name == "array_api_strict":
        return StrictBackend()
    device = name.partition(":")[2] or None
    return TorchBackend(device)


def _device_number(name):
    """N from ``"cupy:N"``."""
    number = name.partition(":")[2]
    if not number.isdigit() or not number.isascii():
        raise ValueError(f"unknown backend {name!r}; 'cupy:N' takes a device number N >= 0, "
                         "e.g. 'cupy:1'")
    return int(number)


def _auto_backend():
    try:
        backend = CuPyBackend()
        # One tiny computation proves the device and the driver really work.
        backend.to_numpy(backend.xp.ones((2,), dtype=backend.xp.float32) * 2.0)
    except BackendUnavailableError as exc:
        return NumPyBackend(reason=f"auto: CuPy unusable ({exc.reason}); using NumPy on the CPU")
    except Exception as exc:  # a driver or compilation error surfacing on first use
        return NumPyBackend(reason=f"auto: CuPy failed on first use ({exc}); using NumPy on the CPU")
    backend.reason = f"auto: CuPy with CUDA device {backend.device.id} answered"
    return backend


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, e.g. ``["numpy", "array_api_strict"]``.

    ``"torch"`` is listed when PyTorch imports; ``"cupy"`` only when a CUDA device answers.
    """
    return [name for name, reason in backend_status().items() if reason is None]


def backend_status() -> dict[str, str | None]:
    """``{name: None if usable else the reason it is not}`` for the four concrete backends."""
    status: dict[str, str | None] = {}
    for name in ("numpy", "array_api_strict", "torch", "cupy"):
        try:
            backend = get_backend(name)
            if name == "cupy":
                backend.to_numpy(backend.xp.ones((2,), dtype=backend.xp.float32))
            status[name] = None
        except BackendUnavailableError as exc:
            status[name] = exc.reason
        except Exception as exc:
            status[name] = f"failed on first use: {exc}"
    return status
