"""Mixed precision against float32: the time of one training step, on one backend.

    python benchmarks/bench_mixed.py --backend numpy            # CPU column (no target)
    python benchmarks/bench_mixed.py --backend torch            # torch on the CPU (or CUDA)
    python benchmarks/bench_mixed.py --backend cupy             # GPU column (target below)
    python benchmarks/bench_mixed.py --backend numpy --quick    # a fast smoke run

One step = forward, softmax cross-entropy, backward, Adam update, on ReLU MLPs with the batch on
the device (``Network._train_batch``, what ``fit`` runs per batch). Contenders, timed in the same
process in alternating rounds whose order flips every round:

* ``float32``: the default step (the backend's fast path where it has one);
* ``float32 ref``: the float32 reference path (``fast=False``);
* ``mixed_float16``: ``precision="mixed_float16"``, loss scaling included: on CuPy the fast
  mixed step (float16 fused kernels and cuBLAS float16 GEMMs, bpgpu/kernels/_mixed_step.py),
  elsewhere the reference path;
* ``mixed ref``: ``precision="mixed_float16", fast=False``, the reference mixed step.

After the table, each contender's engine reason (``net.engine.reason``) is printed, so a run
shows which path was timed (``ci/gpu_check.py`` checks that the mixed one was the fast step).

Each round times a block of steps after a warm-up and waits for the device; a contender's time
is the median over rounds, and the ratios are medians over rounds of the per-round ratio.

Target (issue 15): on an H100/H200, mixed_float16 at least 2x faster than float32 (ratio
mixed / float32 <= 0.5) on the large cases. On the CPU there is no target: NumPy has no fast
float16 arithmetic, so mixed precision there is a correctness reference, not a speed-up.
"""

import argparse
import statistics
import sys
import time

import numpy as np

import bpgpu
from bpgpu.optimizers import Adam

#: name -> (layer sizes, batch size, whether it is a "large case" the GPU target applies to)
CASES = {
    "784-256-256-10": ([784, 256, 256, 10], 128, False),
    "784-1024-1024-10": ([784, 1024, 1024, 10], 512, True),
    "mlp-10x512": ([512] + [512] * 10 + [10], 256, True),
    "4096x4": ([4096] * 4 + [10], 4096, True),
}
QUICK_CASES = ["784-256-256-10"]
CPU_CASES = ["784-256-256-10", "784-1024-1024-10", "mlp-10x512"]
GPU_TARGET = 0.5

CONTENDERS = {"float32": dict(), "float32 ref": dict(fast=False),
              "mixed_float16": dict(precision="mixed_float16"),
              "mixed ref": dict(precision="mixed_float16", fast=False)}


def _network(sizes, backend, options):
    return bpgpu.Network.from_sizes(sizes, loss="cross_entropy", optimizer=Adam(lr=1e-3),
                                    backend=backend, seed=0, **options)


def _time_block(net, xb, yb, steps):
    net._train_batch(xb, yb)  # warm-up (and the first, lazily built state)
    net.backend.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        net._train_batch(xb, yb)
    net.backend.synchronize()
    return (time.perf_counter() - start) / steps


def run_case(name, backend, rounds, steps):
    sizes, batch, _ = CASES[name]
    rng = np.random.default_rng(0)
    nets = {label: _network(sizes, backend, options) for label, options in CONTENDERS.items()}
    any_net = next(iter(nets.values()))
    xb = any_net._input(rng.standard_normal((batch, sizes[0])).astype(np.float32))
    yb = any_net._target(rng.integers(0, sizes[-1], batch), batch)
    times = {label: [] for label in nets}
    order = list(nets)
    for r in range(rounds):
        for label in (order if r % 2 == 0 else order[::-1]):
            times[label].append(_time_block(nets[label], xb, yb, steps))
    skipped = nets["mixed_float16"].precision.scaler.skipped_steps
    medians = {label: statistics.median(t) for label, t in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))  # noqa: E731
    return {"case": name, "batch": batch, **{f"{k} ms": 1e3 * v for k, v in medians.items()},
            "mixed / float32": ratio("mixed_float16", "float32"),
            "mixed / float32 ref": ratio("mixed_float16", "float32 ref"),
            "mixed / mixed ref": ratio("mixed_float16", "mixed ref"),
            "skipped steps": skipped,
            "engines": {label: net.engine.reason for label, net in nets.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--quick", action="store_true", help="one small case, few rounds")
    parser.add_argument("--cases", nargs="*", default=None, choices=list(CASES))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    backend = bpgpu.get_backend(args.backend)
    on_gpu = backend.name == "cupy" or str(backend.device).startswith("cuda")
    cases = args.cases or (QUICK_CASES if args.quick else list(CASES) if on_gpu else CPU_CASES)
    rounds = args.rounds or (3 if args.quick else 7)
    steps = args.steps or (3 if args.quick else 20 if on_gpu else 5)
    print(f"backend {backend.name} on {backend.device}; {rounds} rounds of {steps} steps; "
          f"target on a GPU: mixed / float32 <= {GPU_TARGET} on the large cases")
    header = ["case", "batch", "float32 ms", "float32 ref ms", "mixed_float16 ms", "mixed ref ms",
              "mixed / float32", "mixed / float32 ref", "mixed / mixed ref", "skipped steps"]
    print("| " + " | ".join(header) + " | target |")
    print("|" + "---|" * (len(header) + 1))
    engines = {}
    for name in cases:
        row = run_case(name, backend, rounds, steps)
        target = f"<= {GPU_TARGET}" if on_gpu and CASES[name][2] else "-"
        cells = [f"{row[h]:.3g}" if isinstance(row[h], float) else str(row[h]) for h in header]
        print("| " + " | ".join(cells) + f" | {target} |", flush=True)
        engines.update(row["engines"])  # the same choice in every case (Dense + ReLU MLPs)
    for label, reason in engines.items():
        print(f"{label} engine: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
