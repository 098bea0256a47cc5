"""The NumPy flat optimizer update alone: whole-buffer passes, block-by-block passes, C kernels.

    python benchmarks/bench_update.py --size 2600000 --rule adam --blocks 64,128,256,1024

Each rule of bpgpu.kernels._numpy_update runs over one flat buffer of ``--size`` parameters,
after the optimizer's clip if any: once over the whole buffers (every pass over all of memory)
and once through ``in_blocks`` with blocks of each size in ``--blocks`` (KiB per buffer; a single
clip deferred into the blocks unless ``--no-defer``), all in this process, alternating over the
rounds; each figure is the best round (single-threaded element-wise passes, so the best round is
the one least disturbed by other load). The ratio is blocked time / whole-buffer time. Where the
C kernels (bpgpu.kernels._c_kernels) can be used, their one-pass rule is timed too, with its
ratio to the whole-buffer passes.
"""

import argparse
import os
import sys
import timeit

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bpgpu.kernels import _c_kernels as c_kernels  # noqa: E402
from bpgpu.kernels import _numpy_fast as numpy_fast  # noqa: E402
from bpgpu.kernels import _numpy_update as numpy_update  # noqa: E402
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop  # noqa: E402

OPTIMIZERS = {
    "adam": lambda: Adam(1e-3),
    "adamw": lambda: AdamW(1e-3, weight_decay=0.01),
    "sgd": lambda: SGD(1e-2),
    "sgd_momentum": lambda: SGD(1e-2, momentum=0.9),
    "rmsprop": lambda: RMSprop(1e-3),
    "adam_clip_value": lambda: Adam(1e-3, clip_value=0.5),
    "adam_clip_norm": lambda: Adam(1e-3, clip_norm=1.0),
}
RULE_OF = {"adam": "adam", "adamw": "adam", "sgd": "sgd", "sgd_momentum": "sgd", "rmsprop": "rmsprop",
           "adam_clip_value": "adam", "adam_clip_norm": "adam"}
STATE = ("exp_avg", "exp_avg_sq", "momentum_buffer", "square_avg")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2_600_000)
    parser.add_argument("--rule", choices=list(OPTIMIZERS), nargs="+", default=["adam"])
    parser.add_argument("--blocks", default="128,256,1024", help="KiB per buffer, comma-separated")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-defer", action="store_true",
                        help="blocked runs clip the whole gradient first (no deferred clip)")
    args = parser.parse_args()
    n, dtype = args.size, np.dtype(args.dtype)
    rng = np.random.default_rng(0)

    def buffer(values=None):
        buf = numpy_fast.NumPyKernels.zeros(n, dtype)
        if values is not None:
            buf[:] = values
        return buf
    params, grads = buffer(rng.standard_normal(n)), buffer(rng.standard_normal(n))
    state = {name: buffer() for name in STATE}
    scratch = {}

    def work(name, size=None):
        size = n if size is None else size
        if scratch.get(name) is None or scratch[name].shape[0] < size:
            scratch[name] = numpy_fast.NumPyKernels.zeros(size, dtype)
        return scratch[name][:size]
    kib = [int(k) for k in args.blocks.split(",")]
    clip = numpy_fast.NumPyKernels.clip
    number = max(1, 3_000_000 // n)
    for name in args.rule:
        optimizer, rule = OPTIMIZERS[name](), numpy_update.RULES[RULE_OF[name]]
        optimizer.step_count = 2  # past the first step (SGD copies the gradient at step 1)

        def run(k, optimizer=optimizer, rule=rule):
            if k == 0:
                clipped = clip(optimizer, grads, work, defer=False)
                rule(optimizer, 1e-3, params, clipped, state, work)
            else:
                numpy_update.BLOCK_BYTES, numpy_update.MIN_BLOCKS = k * 1024, 1
                clipped = clip(optimizer, grads, work, defer=not args.no_defer)
                numpy_update.in_blocks(rule, optimizer, 1e-3, params, clipped, state, work)
        compiled = c_kernels.update_rule(RULE_OF[name], None)

        def run_c(optimizer=optimizer, compiled=compiled):
            compiled(optimizer, 1e-3, params, clip(optimizer, grads, work), state, work)
        jobs = {k: (lambda k=k: run(k)) for k in [0] + kib}
        if compiled is not None:
            jobs["C"] = run_c
        best = dict.fromkeys(jobs, float("inf"))
        for _ in range(args.rounds):
            for k, job in jobs.items():
                best[k] = min(best[k], timeit.timeit(job, number=number) / number)
        print(f"{name} {dtype} {n} parameters: whole buffer {best[0] * 1e3:.3f} ms")
        for k in kib:
            print(f"  blocks of {k:5d} KiB ({k * 1024 // dtype.itemsize:7d} elements): "
                  f"{best[k] * 1e3:.3f} ms, {best[k] / best[0]:.3f}x")
        if compiled is None:
            print(f"  C kernels: {c_kernels.support()}")
        else:
            print(f"  C kernels, one pass: {best['C'] * 1e3:.3f} ms, {best['C'] / best[0]:.3f}x")


if __name__ == "__main__":
    main()
