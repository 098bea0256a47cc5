"""Reading an ``.npz`` archive that may come from anyone, one checked step at a time.

``numpy.load`` reads whatever an archive holds. This reader looks before it reads: the zip's
central directory first (member names, sizes, flags and compression methods; nothing is
decompressed), then each ``.npy`` header on its own (dtype and shape, parsed by a strict
pattern, never evaluated), and only then, for the members the caller asks for, the data, whose
length must be exactly what the header promises. Every problem is a :class:`NpzError` saying
what was wrong; the caller adds the file name.

Accepted members: a version 1, 2 or 3 ``.npy`` header describing a C- or Fortran-ordered array
of floats (``f2``/``f4``/``f8``, either byte order) or a 0-d Unicode string (``<U``), stored
uncompressed or with deflate (what ``numpy.savez`` and ``savez_compressed`` write).
"""

from __future__ import annotations

import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

import numpy as np

__all__ = ["NpzError", "NpyHeader", "SafeNpz"]

#: Zip general-purpose flags a plain archive may carry: deflate options (bits 1, 2), a data
#: descriptor after the data (bit 3) and UTF-8 names (bit 11). Encryption (bits 0, 6), patched
#: data (bit 5) and the rest are refused.
_ALLOWED_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800
_ALLOWED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_MAGIC = b"\x93NUMPY"
#: Longest .npy header accepted; numpy writes about 120 bytes for the arrays bpgpu saves.
MAX_HEADER_BYTES = 4096
_HEADER = re.compile(
    r"\{\s*'descr':\s*'(?P<descr>[<>|=]?[a-zA-Z]\d*)',\s*"
    r"'fortran_order':\s*(?P<fortran>True|False),\s*"
    r"'shape':\s*\((?P<shape>(?:\s*\d+\s*,)*\s*(?:\d+\s*)?)\),?\s*\}\s*\Z")
# Errors the zip and zlib modules raise on damaged archives (CRC mismatches, bad streams,
# unsupported features, short reads).
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, NotImplementedError,
                zipfile.BadZipFile, zlib.error, struct.error)


class NpzError(ValueError):
    """An archive or one of its members is not what a plain ``numpy.savez`` would write."""


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` header declares: ``dtype``, ``shape``, ``fortran_order``, and
    ``nbytes`` of data (elements times item size)."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def parse_header(text: str) -> NpyHeader:
    """The header dictionary of an ``.npy`` file, parsed by pattern (no ``eval``)."""
    match = _HEADER.match(text)
    if match is None:
        raise NpzError(f"malformed .npy header {text[:120]!r}")
    descr = match["descr"]
    try:
        dtype = np.dtype(descr)
    except TypeError:
        raise NpzError(f"unknown dtype {descr!r} in an .npy header") from None
    if dtype.kind == "O":
        raise NpzError("it holds pickled Python objects (dtype object); bpgpu never loads "
                       "pickles (they can run code)")
    if not (dtype.kind == "f" and dtype.itemsize in (2, 4, 8)) and dtype.kind != "U":
        raise NpzError(f"dtype {descr!r} is neither a float nor a string")
    shape = tuple(int(s) for s in match["shape"].replace(",", " ").split())
    if dtype.kind == "U" and shape != ():
        raise NpzError(f"a string member must be 0-d, got shape {shape}")
    return NpyHeader(dtype, shape, match["fortran"] == "True")


def read_header(f: IO[bytes]) -> tuple[NpyHeader, int]:
    """``(header, header length in bytes)`` read from the start of an ``.npy`` stream."""
    lead = f.read(8)
    if len(lead) < 8 or lead[:6] != _MAGIC:
        raise NpzError("not an .npy array (bad magic bytes)")
    major = lead[6]
    if major == 1:
        raw, size_format, encoding = f.read(2), "<H", "latin1"
    elif major in (2, 3):
        raw, size_format, encoding = f.read(4), "<I", "latin1" if major == 2 else "utf8"
    else:
        raise NpzError(f"unsupported .npy format version {major}")
    if len(raw) != struct.calcsize(size_format):
        raise NpzError("truncated .npy header")
    length = struct.unpack(size_format, raw)[0]
    if length > MAX_HEADER_BYTES:
        raise NpzError(f".npy header of {length} bytes; at most {MAX_HEADER_BYTES} accepted")
    data = f.read(length)
    if len(data) != length:
        raise NpzError("truncated .npy header")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError:
        raise NpzError("the .npy header is not text") from None
    return parse_header(text), 8 + len(raw) + length


class SafeNpz:
    """An ``.npz`` archive opened for checked reading. Use as a context manager.

    ``names``: the member names without ``.npy``. Nothing is decompressed by opening; headers
    are read (and cached) by :meth:`header`, data by :meth:`array`.
    """

    def __init__(self, path: str):
        try:
            self._zip = zipfile.ZipFile(path)
        except _READ_ERRORS as exc:
            raise NpzError(f"not an .npz archive ({exc})") from None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        self._headers: dict[str, tuple[NpyHeader, int]] = {}
        try:
            for info in self._zip.infolist():
                self._check_entry(info)
        except NpzError:
            self._zip.close()
            raise

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        name = info.filename
        if not name.endswith(".npy"):
            raise NpzError(f"member {name!r} is not an .npy array")
        key = name[:-4]
        if key in self._infos:
            raise NpzError(f"member {name!r} appears twice")
        if info.flag_bits & ~_ALLOWED_FLAGS:
            raise NpzError(f"member {name!r} has zip flags {info.flag_bits:#06x} (encrypted or "
                           "patched data); only plain stored or deflated members are read")
        if info.compress_type not in _ALLOWED_METHODS:
            raise NpzError(f"member {name!r} uses zip compression method {info.compress_type}; "
                           "only stored (0) and deflate (8) are read")
        self._infos[key] = info

    def __enter__(self) -> SafeNpz:
        return self

    def __exit__(self, *exc_info) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def header(self, name: str) -> NpyHeader:
        """The ``.npy`` header of member ``name``, checked against the member's declared size;
        decompresses at most the header's bytes."""
        if name not in self._headers:
            info = self._infos[name]
            try:
                with self._zip.open(info) as f:
                    header, length = read_header(f)
            except NpzError as exc:
                raise NpzError(f"member {name}.npy: {exc}") from None
            except _READ_ERRORS as exc:
                raise NpzError(f"member {name}.npy cannot be read ({type(exc).__name__}: "
                               f"{exc})") from None
            if length + header.nbytes != info.file_size:
                raise NpzError(f"member {name}.npy declares {header.nbytes} bytes of data in "
                               f"shape {header.shape} but the archive holds "
                               f"{info.file_size - length}")
            self._headers[name] = (header, length)
        return self._headers[name][0]

    def array(self, name: str) -> np.ndarray:
        """The data of member ``name`` as a read-only NumPy array in native byte order; reads
        exactly the declared number of bytes, so the memory used is what :meth:`header`
        announced."""
        header = self.header(name)
        length = self._headers[name][1]
        try:
            with self._zip.open(self._infos[name]) as f:
                f.read(length)
                data = f.read(header.nbytes)
                if len(data) != header.nbytes or f.read(1):
                    raise NpzError(f"member {name}.npy holds a different number of bytes than "
                                   "its header declares")
        except NpzError:
            raise
        except _READ_ERRORS as exc:
            raise NpzError(f"member {name}.npy is damaged ({type(exc).__name__}: {exc})") from None
        flat = np.frombuffer(data, dtype=header.dtype)
        array = flat.reshape(header.shape, order="F" if header.fortran_order else "C")
        return array if header.dtype.isnative else array.astype(header.dtype.newbyteorder("="))
