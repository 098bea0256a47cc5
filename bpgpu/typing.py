"""Names for the types in bpgpu's annotations.

Arrays come from whichever library the backend wraps (NumPy, CuPy, torch, array-api-strict), and
the Array API standard gives them no common static type, so these aliases are ``Any`` for the type
checker; they tell the reader which kind of value a function takes or returns.
"""

from typing import Any, TypeAlias

__all__ = ["Array", "ArrayLike", "Namespace", "Device"]

#: An array of the backend in use: ``numpy.ndarray``, ``cupy.ndarray``, ``torch.Tensor``, ...
Array: TypeAlias = Any
#: What the API boundary accepts as data: NumPy arrays, nested lists, arrays of the backend.
ArrayLike: TypeAlias = Any
#: An Array API namespace (``xp``): the module whose functions compute on the backend's arrays.
Namespace: TypeAlias = Any
#: A device object of the backend (not a string: ``torch.device("cpu") != "cpu"``).
Device: TypeAlias = Any
