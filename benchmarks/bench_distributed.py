"""Scaling of data-parallel training (bpgpu.distributed): 2 ranks against 1 on this machine.

    pip install -e ".[mpi]"
    python benchmarks/bench_distributed.py              # ~2 minutes; JSON in benchmarks/results/

Each contender is one ``mpiexec`` job training the same network on the same data with
``fit(..., distributed=comm)`` and ``batch_size`` b per rank (so 2 ranks run half the steps of
1 rank, each on b rows, and both see every sample once per epoch):

* ``1 rank, 1 thread``: the reference for scaling (the resources of one of the two ranks);
* ``1 rank, 2 threads``: what one process makes of the whole machine (BLAS on both cores);
* ``2 ranks, 1 thread each``.

The contenders alternate, in an order that flips every round, and each reports the median time
of its epochs after the first (warm-up). **Scaling efficiency** = T(1 rank, 1 thread) /
(2 T(2 ranks)), 1.0 being perfect; the median over rounds of the per-round ratio is reported.
Inside the 2-rank job, the all-reduce of the flat gradient buffer is also timed alone (median
of 50 calls) and divided by the step time: the share that overlapping it with the backward pass
could at best hide.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent

#: name -> (layer sizes, batch per rank, training samples)
CASES = {
    "784-256-256-10": ([784, 256, 256, 10], 128, 8192),
    "64-128-64-10": ([64, 128, 64, 10], 32, 4096),
}

CONTENDERS = {  # name -> (ranks, BLAS threads per rank)
    "1 rank, 1 thread": (1, 1),
    "1 rank, 2 threads": (1, 2),
    "2 ranks, 1 thread each": (2, 1),
}


# -- one mpiexec job ---------------------------------------------------------------------------------
def worker(case, epochs, out):
    import bpgpu
    from bpgpu.callbacks import Callback
    from bpgpu.kernels import train_step_for

    comm = bpgpu.distributed.init()
    sizes, batch, n = CASES[case]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], size=n)
    net = bpgpu.Network.from_sizes(sizes, loss="cross_entropy", optimizer="adam", seed=0,
                                   backend="numpy")

    class EpochTimer(Callback):
        def __init__(self):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            comm.mpi.Barrier()
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            comm.mpi.Barrier()
            self.times.append(time.perf_counter() - self.t0)

    timer = EpochTimer()
    net.fit(X, y, epochs=epochs, batch_size=batch, verbose=0, callbacks=[timer],
            distributed=comm)
    steps = -(-n // (batch * comm.size))
    epoch_s = statistics.median(timer.times[1:])
    buf = np.zeros(train_step_for(net).size, dtype=np.float32)
    transport = comm.transport_for(net.backend)
    calls = []
    for _ in range(50):
        comm.mpi.Barrier()
        t0 = time.perf_counter()
        transport.allreduce(buf)
        calls.append(time.perf_counter() - t0)
    if comm.rank == 0:
        result = {"epoch_s": epoch_s, "epochs_s": timer.times, "steps_per_epoch": steps,
                  "step_s": epoch_s / steps, "allreduce_s": statistics.median(calls),
                  "flat_buffer_elements": int(buf.size), "ranks": comm.size}
        pathlib.Path(out).write_text(json.dumps(result))


def launch(case, ranks, threads, epochs):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    mpiexec = pathlib.Path(sys.executable).parent / "mpiexec"
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "result.json"
        subprocess.run([str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks),
                        sys.executable, __file__, "--worker", case, "--epochs", str(epochs),
                        "--out", str(out)], env=env, check=True, timeout=600)
        return json.loads(out.read_text())


# -- the driver ----------------------------------------------------------------------------------------
def _loadavg():
    try:
        return [float(v) for v in pathlib.Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per job; the first is warm-up")
    parser.add_argument("--case", action="append", choices=list(CASES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.epochs, args.out)
        return
    import bpgpu

    started = datetime.datetime.now(datetime.timezone.utc)
    report = {"meta": {"date_utc": started.isoformat(timespec="seconds"),
                       "platform": platform.platform(), "logical_cpus": os.cpu_count(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "bpgpu": bpgpu.__version__, "loadavg_at_start": _loadavg(),
                       "rounds": args.rounds, "epochs_per_job": args.epochs,
                       "note": "machine shared with other jobs while measured: figures are "
                               "noisy"},
              "cases": {}}
    names = list(CONTENDERS)
    for case in args.case or list(CASES):
        rounds = []
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            rounds.append({name: launch(case, *CONTENDERS[name], args.epochs) for name in order})
        one, two = "1 rank, 1 thread", "2 ranks, 1 thread each"
        efficiency = [x[one]["epoch_s"] / (2 * x[two]["epoch_s"]) for x in rounds]
        versus_two_threads = [x["1 rank, 2 threads"]["epoch_s"] / x[two]["epoch_s"]
                              for x in rounds]
        share = [x[two]["allreduce_s"] / x[two]["step_s"] for x in rounds]
        report["cases"][case] = {
            "layer_sizes": CASES[case][0], "batch_per_rank": CASES[case][1],
            "samples": CASES[case][2],
            "epoch_s_median": {name: statistics.median(x[name]["epoch_s"] for x in rounds)
                               for name in names},
            "scaling_efficiency_2_ranks": statistics.median(efficiency),
            "speedup_2_ranks_vs_1_rank_2_threads": statistics.median(versus_two_threads),
            "allreduce_share_of_step_2_ranks": statistics.median(share),
            "rounds": rounds}
        c = report["cases"][case]
        print(f"{case}: epoch {', '.join(f'{k} {v:.3f} s' for k, v in c['epoch_s_median'].items())}"
              f"; efficiency {c['scaling_efficiency_2_ranks']:.2f}, vs 1 rank 2 threads "
              f"{c['speedup_2_ranks_vs_1_rank_2_threads']:.2f}x, all-reduce "
              f"{100 * c['allreduce_share_of_step_2_ranks']:.1f} % of a step", flush=True)
    report["meta"]["loadavg_at_end"] = _loadavg()
    out = pathlib.Path(args.out) if args.out else \
        HERE / "results" / f"distributed-{started:%Y-%m-%d-%H%M}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
