"""Where a training step's time goes: reference path against fast path, phase by phase.

    python benchmarks/profile_step.py --case mlp-10x512
    python benchmarks/profile_step.py --case 784-1024-1024-10 --pyinstrument

Phases: forward (layers), loss (value and gradient), backward (layers), update (optimizer). The
matrix products of the step are also timed alone (NumPy, the reference layouts), so the last
column says how much of the step is not matrix products. The fast path's phases are timed in one
piece (no row shards); where the step would use row shards (bpgpu.kernels._cpu_threads), a third
row times the whole sharded step, whose phases overlap across threads. All paths run in this
process, alternating over the rounds; the figures are medians. With --pyinstrument (installed)
a statistical profile of each path follows.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from bench_step import CASES, matmul_job  # noqa: E402

import bpgpu  # noqa: E402
from bpgpu._engine import run_backward  # noqa: E402
from bpgpu.kernels import train_step_for  # noqa: E402
from bpgpu.optimizers import Adam  # noqa: E402


def _reference_phases(net, xb, yb):
    engine = net.engine
    t0 = time.perf_counter()
    out = engine.forward(xb, True)
    t1 = time.perf_counter()
    engine.loss(out, yb)
    t2 = time.perf_counter()
    run_backward(net.structure, net.loss)
    t3 = time.perf_counter()
    engine.apply_update()
    t4 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def _fast_phases(step, xb, yb):
    t0 = time.perf_counter()
    step.sync_params()
    x = xb
    for op in step.ops:
        x = op.forward(x)
    t1 = time.perf_counter()
    step.loss_op.forward(x, yb)
    dy = step.loss_op.grad
    t2 = time.perf_counter()
    for op in reversed(step.ops):
        dy = op.backward(dy)
    t3 = time.perf_counter()
    step.finish()
    t4 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def _sharded(step, xb, yb):
    t0 = time.perf_counter()
    step.compute(xb, yb)
    step.finish()
    return None, None, None, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=list(CASES), default="784-1024-1024-10")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (default: ~0.2 s)")
    parser.add_argument("--pyinstrument", action="store_true")
    args = parser.parse_args(argv)
    sizes, batch = CASES[args.case]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    nets = {fast: bpgpu.Network.from_sizes(sizes, loss="cross_entropy", optimizer=Adam(1e-3),
                                           backend="numpy", seed=0, fast=fast)
            for fast in (False, True)}
    xb, yb = nets[True]._data(X, y)
    nets[True].engine.train_step(xb, yb)
    step = train_step_for(nets[True])
    runs = {"reference": lambda: _reference_phases(nets[False], xb, yb),
            "fast": lambda: _fast_phases(step, xb, yb)}
    shards = step.kernels.shard_count(batch, step.parameter_count) if step.shardable else 1
    if shards > 1:
        runs[f"{shards} shards"] = lambda: _sharded(step, xb, yb)
    matmuls = matmul_job(sizes, batch)
    t0 = time.perf_counter()
    runs["reference"]()
    n = args.steps or max(3, int(0.2 / (time.perf_counter() - t0)))
    samples = {name: [] for name in runs}
    mm = []
    for r in range(args.rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            time.sleep(0.25)  # idle OpenBLAS threads spin ~0.1 s: let them park between paths
            for _ in range(n):
                samples[name].append(runs[name]())
        t = time.perf_counter()
        for _ in range(n):
            matmuls()
        mm.append((time.perf_counter() - t) / n)
    mm_s = statistics.median(mm)
    print(f"{args.case}, batch {batch}, Adam, float32, NumPy {np.__version__}; "
          f"median of {args.rounds * n} steps per path")
    print(f"{'path':10s} {'forward':>9s} {'loss':>9s} {'backward':>9s} {'update':>9s} "
          f"{'step':>9s} {'matmuls alone':>14s} {'rest':>9s}")
    for name, values in samples.items():
        if values[0][0] is None:  # one piece: no phases
            cells, total = ["-".rjust(10)] * 4, statistics.median(v[3] for v in values)
        else:
            cells = [f"{statistics.median(v[i] for v in values) * 1e3:8.2f}ms" for i in range(4)]
            total = statistics.median(sum(v) for v in values)
        print(f"{name:10s} " + " ".join(cells)
              + f" {total * 1e3:8.2f}ms {mm_s * 1e3:13.2f}ms {(total - mm_s) * 1e3:8.2f}ms")
    if args.pyinstrument:
        from pyinstrument import Profiler

        for name, fn in runs.items():
            profiler = Profiler(interval=0.0005)
            profiler.start()
            for _ in range(n * 3):
                fn()
            profiler.stop()
            print(f"\n== {name} path ==")
            print(profiler.output_text(unicode=False, color=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
