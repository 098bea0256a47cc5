"""Two checkouts of bpgpu in one process: is the newer one's training step slower?

    git worktree add /tmp/v01 8770553          # the older version, e.g. 0.1
    python benchmarks/bench_versions.py /tmp/v01 .  --rounds 9
    python benchmarks/bench_versions.py /tmp/v01 .  --cases mlp-10x512 --out /tmp/ab.json

Each checkout's ``bpgpu`` package and its own ``benchmarks/bench_step.py`` are imported in turn
under the same names (the first set of modules is set aside, the second imported, and whichever
version runs next is put back into ``sys.modules`` before each of its blocks, so a lazy import
inside a step finds its own version). Every case builds the same network from the same seed in
both versions plus PyTorch's twin (bench_step's ``build_bpgpu`` and ``build_torch``); the first
losses of the two versions must agree. Then rounds as in bench_step: the machine is probed for
quiet (up to ``--wait`` seconds), each contender times a block of about 0.25 s after a pause and
a warm-up, the order flips every round. Reported per case: the median over rounds of
new / old within the round (with its range), each version's median ratio to PyTorch, and the
share of the CPUs other processes used during the blocks (median). bpgpu's threads and BLAS
settings are whatever the environment gives (see bench_step for OPENBLAS_CORETYPE).
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import numpy as np


def _drop_bpgpu():
    for name in [n for n in sys.modules if n == "bpgpu" or n.startswith("bpgpu.")]:
        del sys.modules[name]


def load_version(root):
    """(bench_step module, bpgpu's modules) of the checkout at ``root``."""
    root = os.path.abspath(root)
    _drop_bpgpu()
    sys.path.insert(0, root)
    try:
        path = os.path.join(root, "benchmarks", "bench_step.py")
        spec = importlib.util.spec_from_file_location(f"bench_step_{len(sys.modules)}", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        import bpgpu

        if not os.path.abspath(bpgpu.__file__).startswith(root + os.sep):
            raise SystemExit(f"{root}: imported bpgpu from {bpgpu.__file__} instead")
    finally:
        sys.path.remove(root)
    return bench, {n: m for n, m in sys.modules.items() if n == "bpgpu" or n.startswith("bpgpu.")}


def use(modules):
    """Make ``modules`` the bpgpu that imports find."""
    _drop_bpgpu()
    sys.modules.update(modules)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="checkout of the older version")
    parser.add_argument("new", help="checkout of the newer version")
    parser.add_argument("--cases", nargs="+", help="bench_step cases (default: all)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--wait", type=float, default=8.0,
                        help="seconds to wait for a quiet machine before each round")
    parser.add_argument("--out", help="write every round here (JSON)")
    args = parser.parse_args(argv)

    versions = {"old": load_version(args.old), "new": load_version(args.new)}
    bench = versions["new"][0]
    modules = {label: mods for label, (_, mods) in versions.items()}
    modules["torch"] = modules["new"]
    meter = bench.CpuMeter()
    results = {}
    for name in args.cases or list(bench.CASES):
        sizes, batch = bench.CASES[name]
        steps, first = {}, {}
        for label, (version_bench, mods) in versions.items():
            use(mods)
            backend = sys.modules["bpgpu"].get_backend("numpy")
            net, steps[label], data = version_bench.build_bpgpu(sizes, batch, backend,
                                                                np.random.default_rng(0))
            first[label] = float(steps[label]())
        steps["torch"] = bench.build_torch(net, data, "cpu")
        if abs(first["old"] - first["new"]) > 1e-4 * max(1.0, abs(first["old"])):
            raise SystemExit(f"{name}: first losses differ: {first}")
        blocks = {}
        for label, fn in steps.items():
            use(modules[label])
            blocks[label] = bench.calibrate(fn, lambda: None, 0.25)
        samples = {label: [] for label in steps}
        for r in range(args.rounds):
            bench.wait_until_quiet(meter, 0.15, args.wait)
            for label in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
                use(modules[label])
                time.sleep(0.25)
                for _ in range(max(2, blocks[label] // 10)):
                    steps[label]()
                meter.start()
                seconds = bench.time_block(steps[label], blocks[label], lambda: None)
                samples[label].append((seconds, meter.foreign()))
        results[name] = samples
        old, new, torch = ([s[0] for s in samples[k]] for k in ("old", "new", "torch"))
        ratios = [b / a for a, b in zip(old, new, strict=True)]
        foreign = [s[1] for v in samples.values() for s in v if s[1] is not None]
        print(f"{name:18s} new/old {statistics.median(ratios):.3f} "
              f"({min(ratios):.2f}-{max(ratios):.2f})  old {bench.fmt_time(statistics.median(old))}"
              f"  new {bench.fmt_time(statistics.median(new))}  old/PyTorch "
              f"{statistics.median(a / t for a, t in zip(old, torch, strict=True)):.3f}  new/PyTorch "
              f"{statistics.median(b / t for b, t in zip(new, torch, strict=True)):.3f}  others' CPU share "
              f"{statistics.median(foreign) if foreign else float('nan'):.2f}", flush=True)
        del net, steps
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
