"""A NumPy backend that runs the fast step through the emulated CuPy kernel set.

Its name is ``"cupy"`` so every call site takes its CuPy branch; its arrays are NumPy arrays, so
the reference layers next to the fused kernels run unchanged. ``activate()`` enters the emulated
device, like ``CuPyBackend`` enters its CUDA device.
"""

import inspect
import sys
from pathlib import Path

from bpgpu.backend import NumPyBackend

from . import cuda
from .fake_cupy import make_module

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ci"))
import kernel_variants  # noqa: E402  (ci/ is not a package)

from . import kernels, load  # noqa: E402


class EmulatedCuPy:
    """The fake ``cupy`` module and bpgpu's CuPy modules imported against it."""

    def __init__(self):
        self.cupy = make_module()
        self.modules = {name: load(f"kernels/_{name}.py", self.cupy)
                        for name in ("cupy_fused", "cupy_random")}
        self.fused = self.modules["cupy_fused"]
        self.random = self.modules["cupy_random"]

    def build_all(self):
        """Build every kernel variant (ci/kernel_variants.py) and compile them in one g++ call;
        returns the number of kernels."""
        count = 0
        for (module, builder), spec in kernel_variants.builders(self.modules).items():
            build = getattr(self.modules[module], builder)
            order = list(inspect.signature(build).parameters)
            for kwargs in kernel_variants.variants(spec):
                # positional, as the call sites pass them: lru_cache keys differ otherwise
                count += len(kernel_variants.kernels_of(build(*[kwargs[p] for p in order])))
        kernels.compile_pending()
        return count


class EmulatedCuPyBackend(NumPyBackend):
    name = "cupy"

    def __init__(self, emulated, device_id=0):
        super().__init__(reason="emulated CuPy kernels on the CPU (tests/cuda_emu)")
        self.emulated = emulated
        self.device_id = device_id
        self._kernels = emulated.fused.CuPyKernels(self)

    def activate(self):
        return cuda.Device(self.device_id)

    def make_rng(self, seed):
        return self.emulated.random.PhiloxRNG(seed)
