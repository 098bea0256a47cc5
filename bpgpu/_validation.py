"""Checks at the API boundary: data coming in from the user is validated once, here.

Host data (NumPy arrays, lists, anything NumPy can read) is checked with NumPy; arrays already
on the backend are checked with the backend's own reductions (one device read each).
"""

import math
import numbers

import numpy as np

__all__ = ["as_numeric", "check_finite", "cast_finite", "check_batch_size", "check_positive_int", "check_number",
           "check_whole", "check_bool", "is_real_number"]

_NUMERIC_KINDS = ("bool", "integral", "real floating")


def as_numeric(data, name, backend):
    """``data`` as a NumPy array or a native array of ``backend``; TypeError/ValueError if it does
    not hold real numbers. The result may share memory with ``data``: do not mutate it. A masked
    array is refused if any entry is masked (its hidden values would be used)."""
    if isinstance(data, np.ma.MaskedArray):
        if np.ma.getmaskarray(data).any():
            raise ValueError(f"{name} is a masked array with masked entries; bpgpu does not "
                             "handle missing values: fill them first (e.g. X.filled(0.0))")
        data = np.ma.getdata(data)
    if backend.is_native(data):
        if not backend.xp.isdtype(data.dtype, _NUMERIC_KINDS):
            if isinstance(data, np.ndarray):
                _reject_strings(data, name)
            raise TypeError(f"{name} must hold real numbers, got an array of dtype {data.dtype}")
        return data
    if data is None:
        raise TypeError(f"{name} must be an array of numbers, got None")
    if _is_sparse(data):
        raise TypeError(f"{name} is a scipy sparse matrix ({type(data).__name__}); bpgpu needs "
                        f"dense arrays: call {name}.toarray() first")
    if _is_pandas(data):
        data = _from_pandas(data, name)
    try:
        host = np.asarray(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name} could not be read as a rectangular array of numbers: {exc}") from None
    if host.dtype.kind not in "biuf":
        _reject_strings(host, name)
        raise TypeError(
            f"{name} must hold real numbers (bool, int or float), got dtype {host.dtype}"
            + (" (ragged or mixed-type input?)" if host.dtype == object else ""))
    return host


def _reject_strings(host, name):
    """TypeError pointing to label encoding when the NumPy array ``host`` holds strings."""
    if host.dtype.kind in "US" or (host.dtype.kind == "O" and any(
            isinstance(v, str) for v in host.reshape(-1)[:100])):
        raise TypeError(
            f"{name} must hold real numbers (bool, int or float), got dtype {host.dtype} "
            "(strings): encode class labels with sklearn.preprocessing.LabelEncoder, or use "
            "bpgpu.sklearn.MLPClassifier, which takes any labels and gives them back")


def _is_sparse(data):
    """True for scipy sparse matrices and arrays (without importing scipy)."""
    module = type(data).__module__
    return module.startswith("scipy.sparse") and hasattr(data, "toarray")


def _is_pandas(data):
    return type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "to_numpy")


def _from_pandas(data, name):
    """A pandas Series or DataFrame as NumPy. Nullable columns (``Int64``, ``Float64``,
    ``boolean``) become their NumPy dtype when they hold no missing value; with one, ValueError."""
    dtypes = list(data.dtypes) if hasattr(data, "columns") else [data.dtype]
    numpy_dtypes = [getattr(d, "numpy_dtype", d) for d in dtypes]
    if all(isinstance(d, np.dtype) and d.kind in "biuf" for d in numpy_dtypes):
        if bool(np.asarray(data.isna()).any()):
            raise ValueError(f"{name} has missing values (NaN or pd.NA); expected a value in "
                             "every cell: fill or drop them first")
        return data.to_numpy(dtype=np.result_type(*numpy_dtypes))
    return np.asarray(data)


#: Elements checked per block by :func:`check_finite` on host arrays: its scratch mask stays at
#: 1 MiB however large the data (a mask of a 60000 x 784 set would take 45 MiB).
FINITE_BLOCK = 1 << 20


def _host_finite(x):
    """True when every element of the NumPy array ``x`` is finite, checked block of rows by block
    of rows."""
    if x.ndim == 0 or x.size <= FINITE_BLOCK:
        return bool(np.isfinite(x).all())
    rows = max(1, FINITE_BLOCK // (x.size // x.shape[0]))
    return all(np.isfinite(x[start:start + rows]).all() for start in range(0, x.shape[0], rows))


def check_finite(x, name, backend, after=""):
    """ValueError when ``x`` (host or native) holds NaN or +-inf; ``after`` ends the message."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f" and not _host_finite(x):
            bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
            raise ValueError(f"{name} contains {bad} NaN or infinite value(s); expected finite "
                             f"numbers{after}")
        return
    xp = backend.xp
    if xp.isdtype(x.dtype, "real floating") and not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name} contains NaN or infinite values; expected finite numbers{after}")


def cast_finite(x, name, backend, dtype, borrow=False):
    """``x`` copied onto ``backend`` as ``dtype`` (with ``borrow``, ``x`` itself where
    ``backend.borrow`` can read it in place); ValueError when a value is NaN or infinite after
    that cast (1e39 is finite in float64 but overflows float32), so nothing non-finite ever
    reaches the network."""
    dtype_name = backend.dtype_name(dtype)
    after = f" (as {dtype_name}, magnitudes above {float(np.finfo(dtype_name).max):.3g} overflow)"
    with np.errstate(over="ignore", invalid="ignore"):
        if isinstance(x, np.ndarray) and not backend.is_native(x):
            x = x.astype(dtype_name, copy=False)  # checked on the host: counts come for free
            check_finite(x, name, backend, after)
            return backend.asarray(x, dtype=dtype)
        out = backend.borrow(x, dtype) if borrow else backend.asarray(x, dtype=dtype)
    check_finite(out, name, backend, after)
    return out


def is_real_number(value):
    """True for Python and NumPy ints and floats (and 0-d real arrays' items), not for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def check_number(value, name, low=0, high=None, low_open=False, high_open=False):
    """``value`` as a float; ValueError unless it is a finite real number (Python or NumPy, not
    a bool) from ``low`` up to ``high`` (None: no upper bound), each end open or closed as
    asked. The message states the bound as given: ``"lr must be a finite number >= 0.0, got
    -1"``."""
    ok = is_real_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        if high is None:
            bound = f"{'>' if low_open else '>='} {low}"
        else:
            bound = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_positive_int(value, name):
    """``value`` as an int; ValueError unless it is an integer (Python or NumPy) >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_whole(value, name):
    """``value`` as an int; ValueError unless it is an integer (Python or NumPy) >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def check_bool(value, name):
    """``value`` as a bool; TypeError unless it is True or False (Python or NumPy): ``"no"``,
    1 or None are refused rather than read by truthiness."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_batch_size(batch_size):
    """``batch_size`` as an int, or None for full batch."""
    if batch_size is None:
        return None
    return check_positive_int(batch_size, "batch_size")
