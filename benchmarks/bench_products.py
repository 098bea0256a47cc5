"""The row shards' matrix products alone: NumPy's BLAS (np.dot) against Intel MKL, one thread.

    python benchmarks/bench_products.py                  # the mlp-10x512 shard's shapes
    python benchmarks/bench_products.py --rows 256 --features 1024

In a row-sharded step (bpgpu.kernels._cpu_threads) each thread multiplies with BLAS pinned to one
thread, and each layer has its own weights, so the operands come from L3 rather than L2. This
script times the three products of a fast Dense layer in those conditions (feature-major, as
bpgpu.kernels._numpy_fast lays them out): the forward [W; b]^T [x^T; 1], the weight gradient
[x^T; 1] dz^T and the input gradient W dz, each over ``--layers`` different weight matrices in
turn ("cold") and over one ("hot"), alone and in two threads at once (one per core, as the shards
run). np.dot and MKL (bpgpu.kernels._mkl_blas, needs ``pip install mkl``) alternate round by
round in one process; the figures are GFLOP/s per thread, medians over the rounds.
"""

import argparse
import functools
import statistics
import sys
import time

import numpy as np

from bpgpu.kernels import _cpu_threads as cpu_threads
from bpgpu.kernels import _mkl_blas as mkl_blas


def _operands(rng, features, rows, layers):
    """Per layer: the joint weights (f + 1, f), [x^T; 1] (f + 1, rows), dz (f, rows), outputs."""
    made = []
    for _ in range(layers):
        joint = rng.standard_normal((features + 1, features)).astype(np.float32)
        full = rng.standard_normal((features + 1, rows)).astype(np.float32)
        dz = rng.standard_normal((features, rows)).astype(np.float32)
        made.append({"joint": joint, "full": full, "dz": dz,
                     "y": np.empty((features, rows), np.float32),
                     "grad": np.empty((features + 1, features), np.float32),
                     "dx": np.empty((features, rows), np.float32)})
    return made


#: name -> (a, b, out) of the product, from one layer's operands
PRODUCTS = {
    "forward": lambda o: (o["joint"].T, o["full"], o["y"]),
    "weight gradient": lambda o: (o["full"], o["dz"].T, o["grad"]),
    "input gradient": lambda o: (o["joint"][:-1], o["dz"], o["dx"]),
}


def _numpy(a, b, out):
    np.dot(a, b, out=out)


def _mkl(a, b, out):
    if not mkl_blas.gemm(a, b, out):
        raise RuntimeError("MKL declined the product")


def _loop(product, function, layers, repeats, cold):
    for _ in range(repeats):
        for i in range(len(layers) if cold else 1):
            function(*PRODUCTS[product](layers[i]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--rows", type=int, default=128, help="rows of one shard")
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    why = mkl_blas.support()
    if not why.startswith("MKL"):
        sys.exit(f"needs MKL: {why}")
    rng = np.random.default_rng(0)
    shards = [_operands(rng, args.features, args.rows, args.layers) for _ in range(2)]
    flop = 2 * (args.features + 1) * args.features * args.rows
    functions = {"np.dot": _numpy, "MKL": _mkl}
    results = {}
    with cpu_threads.one_blas_thread():
        for r in range(args.rounds):
            for name in (list(functions) if r % 2 == 0 else list(functions)[::-1]):
                fn = functions[name]
                for product in PRODUCTS:
                    for cold in (False, True):
                        count = args.repeats * (args.layers if cold else 1)
                        t = time.perf_counter()
                        _loop(product, fn, shards[0], args.repeats, cold)
                        alone = (time.perf_counter() - t) / count
                        t = time.perf_counter()
                        cpu_threads.run_parallel([
                            functools.partial(_loop, product, fn, layers, args.repeats, cold)
                            for layers in shards])
                        pair = (time.perf_counter() - t) / count
                        for key, value in (((name, product, cold, "alone"), alone),
                                           ((name, product, cold, "two threads"), pair)):
                            results.setdefault(key, []).append(flop / value / 1e9)
    print(f"{args.features + 1} x {args.features} weights, {args.rows} rows per shard, float32, "
          f"{args.layers} weight matrices, {args.rounds} rounds; {why}")
    print("| product | operands | np.dot alone | MKL alone | np.dot, two threads | "
          "MKL, two threads | MKL / np.dot (two threads) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for product in PRODUCTS:
        for cold in (False, True):
            cells = {(name, mode): statistics.median(results[name, product, cold, mode])
                     for name in functions for mode in ("alone", "two threads")}
            print(f"| {product} | {'cold (L3)' if cold else 'hot (L2)'} | "
                  f"{cells['np.dot', 'alone']:.0f} | {cells['MKL', 'alone']:.0f} | "
                  f"{cells['np.dot', 'two threads']:.0f} | {cells['MKL', 'two threads']:.0f} | "
                  f"{cells['MKL', 'two threads'] / cells['np.dot', 'two threads']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
