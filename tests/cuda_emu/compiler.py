"""Compile kernel sources with g++ into a shared library, cached by the hash of the source.

Every kernel constructed through the emulated CuPy API is queued; the first launch of any queued
kernel compiles the whole queue in ONE g++ call (so a test session pays for a few compilations,
not one per kernel), and the library is kept in a cache directory keyed by the source's hash, so
later sessions only load it.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
INCLUDE = HERE / "include"  # stand-ins for CUDA headers kernels include (cuda_fp16.h)
FLAGS = ("-std=c++17", "-O1", f"-I{INCLUDE}", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
         "-Wno-unused-variable", "-Wno-unused-but-set-variable")


class EmulationError(RuntimeError):
    """The emulation cannot run this: a compile error, or something it does not model."""


def cache_dir():
    """Compiled libraries live here (``BPGPU_CUDA_EMU_CACHE`` overrides)."""
    path = os.environ.get("BPGPU_CUDA_EMU_CACHE") or os.path.join(
        tempfile.gettempdir(), f"bpgpu-cuda-emu-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def compiler():
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise EmulationError(f"no C++ compiler: {cxx!r} is not on PATH (set CXX)")
    return cxx


def build(units):
    """A ctypes library holding every (name, source) unit, each in a namespace of its own."""
    parts = [f'#include "{HEADER}"\n']
    for i, (name, source) in enumerate(units):
        parts.append(f"namespace emu_unit_{i} {{ // {name}\n{source}\n}}\n")
    text = "".join(parts)
    headers = HEADER.read_text() + "".join(h.read_text() for h in sorted(INCLUDE.glob("*.h")))
    digest = hashlib.sha256((text + headers + " ".join(FLAGS)).encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), f"kernels-{digest}.so")
    if not os.path.exists(target):
        source = os.path.join(cache_dir(), f"kernels-{digest}.cpp")
        with open(source, "w") as f:
            f.write(text)
        partial = f"{target}.{os.getpid()}.tmp"
        result = subprocess.run([compiler(), *FLAGS, "-o", partial, source],
                                capture_output=True, text=True)
        if result.returncode != 0:
            names = [name for name, _ in units]
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            raise EmulationError(f"g++ could not compile the kernel source(s) {shown} "
                                 f"({source}):\n{result.stderr[-4000:]}")
        os.replace(partial, target)  # atomic: a concurrent session sees all or nothing
    return ctypes.CDLL(target)
