"""Counter-based random numbers on CuPy (dropout masks), so a restored state repeats bit for bit.

Draw number ``d`` (0, 1, 2, ... per generator) of shape S fills element ``i`` (C order) with
word ``i % 4`` of Philox4x64-10 (Salmon et al., SC'11; the generator NumPy calls ``Philox``)
applied to the counter ``(i // 4, d, 0, 0)`` under the generator's 128-bit key, and maps that
64-bit word to [0, 1) by its top 53 bits (float64: ``(w >> 11) 2^-53``) or top 24 bits
(float32: ``(w >> 40) 2^-24``). Nothing but ``(key, d)`` is state: no cuRAND generator whose
internal state cannot be saved, and a checkpoint restores the very stream an uninterrupted run
draws. Each number depends only on (key, d, i), so it is also the same whatever the launch
configuration.
"""

import functools

import cupy
import numpy as np

__all__ = ["PhiloxRNG"]

_PHILOX_UNIFORM = r"""
const unsigned long long M0 = 0xD2E7470EE14C6C93ull, M1 = 0xCA5A826395121157ull;
const unsigned long long W0 = 0x9E3779B97F4A7C15ull, W1 = 0xBB67AE8584CAA73Bull;
unsigned long long c0 = (unsigned long long)i >> 2, c1 = draw, c2 = 0, c3 = 0;
unsigned long long k0 = key0, k1 = key1;
for (int round = 0; round < 10; ++round) {
    if (round > 0) { k0 += W0; k1 += W1; }
    const unsigned long long hi0 = __umul64hi(M0, c0), lo0 = M0 * c0;
    const unsigned long long hi1 = __umul64hi(M1, c2), lo1 = M1 * c2;
    c0 = hi1 ^ c1 ^ k0; c1 = lo1; c2 = hi0 ^ c3 ^ k1; c3 = lo0;
}
const int word = (int)(i & 3);
const unsigned long long bits = word == 0 ? c0 : (word == 1 ? c1 : (word == 2 ? c2 : c3));
"""

_TO_UNIT = {
    "float64": "u = (double)(bits >> 11) * (1.0 / 9007199254740992.0);",   # 2^-53
    "float32": "u = (float)(bits >> 40) * (1.0f / 16777216.0f);",          # 2^-24
}


@functools.lru_cache(maxsize=None)
def _uniform_kernel(dtype):
    """u[i] in [0, 1) from (key0, key1, draw, i); ``dtype``: "float32" or "float64"."""
    return cupy.ElementwiseKernel("uint64 key0, uint64 key1, uint64 draw", f"{dtype} u",
                                  _PHILOX_UNIFORM + _TO_UNIT[dtype], f"bpgpu_philox_uniform_{dtype}")


class PhiloxRNG:
    """The CuPy backend's device generator (``Backend.make_rng``): uniform draws on the GPU.

    ``seed``: an int or a ``numpy.random.SeedSequence``; the key is its first two 64-bit words.
    State (JSON-safe): ``{"kind": "cupy-philox", "key": [k0, k1], "draws": d}``.
    """

    kind = "cupy-philox"

    def __init__(self, seed):
        if not isinstance(seed, np.random.SeedSequence):
            seed = np.random.SeedSequence(seed)
        self.key = [int(k) for k in seed.generate_state(2, np.uint64)]
        self.draws = 0

    def uniform(self, shape, dtype):
        """Uniform numbers in [0, 1) of ``shape`` and ``dtype`` (float32 or float64)."""
        name = np.dtype(dtype).name
        if name not in _TO_UNIT:
            raise TypeError(f"uniform numbers come as float32 or float64, got {name}")
        kernel = _uniform_kernel(name)
        out = cupy.empty(shape, dtype)
        # NumPy uint64 scalars: a Python int above 2^63 would not pass as a C long
        kernel(np.uint64(self.key[0]), np.uint64(self.key[1]), np.uint64(self.draws), out)
        self.draws += 1
        return out

    def get_state(self):
        return {"kind": self.kind, "key": list(self.key), "draws": self.draws}

    def set_state(self, state):
        """Restore a :meth:`get_state` snapshot; a malformed one raises and changes nothing."""
        if not isinstance(state, dict) or state.get("kind") != self.kind:
            raise ValueError(f"a {self.kind} generator state is a dict with kind "
                             f"{self.kind!r}, got {state!r}")
        key, draws = state.get("key"), state.get("draws")
        if not isinstance(key, list) or len(key) != 2 or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 2**64 for k in key):
            raise ValueError(f"{self.kind} state: key must be two integers in [0, 2^64), "
                             f"got {key!r}")
        if isinstance(draws, bool) or not isinstance(draws, int) or not 0 <= draws < 2**64:
            raise ValueError(f"{self.kind} state: draws must be an integer >= 0, got {draws!r}")
        self.key, self.draws = list(key), draws
