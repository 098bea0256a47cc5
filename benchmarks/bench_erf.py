"""erf and GELU speed as ratios against a peer in the same process (lower is better).

For each backend and size: bpgpu's standard-only erf (the reference that array-api-strict and
libraries without an erf use) and the erf ``erf_for`` picks (the library's own where it has
one), each divided by the time of the library's own erf (``scipy.special.erf`` for NumPy,
``torch.special.erf``); and the exact GELU layer's forward over the tanh form's forward.

    python benchmarks/bench_erf.py [--sizes 1000 100000 1000000] [--repeat 7]
"""

import argparse
import time

import numpy as np

import bpgpu
from bpgpu.layers import GELU
from bpgpu.special import erf_for


def _best(fn, x, repeat):
    """Shortest of ``repeat`` timings of ``fn(x)`` (after one warm-up call)."""
    fn(x)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print("| backend | elements | reference erf / native | erf_for / native | exact GELU / tanh GELU |")
    print("|---|---:|---:|---:|---:|")
    for name in ("numpy", "torch"):
        try:
            backend = bpgpu.get_backend(name)
        except bpgpu.BackendUnavailableError:
            continue
        chosen, reference = erf_for(backend), erf_for(backend, native=False)
        native = erf_for(backend) if chosen is not reference else None
        f64 = backend.dtype("float64")
        rng = np.random.default_rng(0)
        exact = GELU().build(backend, f64, rng)
        approx = GELU("tanh").build(backend, f64, rng)
        for n in args.sizes:
            x = backend.asarray(rng.standard_normal(n) * 3.0, f64)
            t_native = _best(native, x, args.repeat) if native else float("nan")
            t_ref = _best(reference, x, args.repeat)
            t_chosen = _best(chosen, x, args.repeat)
            t_exact = _best(exact.forward, x, args.repeat)
            t_tanh = _best(approx.forward, x, args.repeat)
            print(f"| {name} | {n} | {t_ref / t_native:.1f} | {t_chosen / t_native:.2f} | "
                  f"{t_exact / t_tanh:.2f} |")


if __name__ == "__main__":
    main()
