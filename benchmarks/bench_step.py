"""bpgpu against PyTorch eager and JAX jit: one training step, fit throughput, peak memory,
import time.

    python benchmarks/bench_step.py --backend numpy            # vs PyTorch and JAX on the CPU
    python benchmarks/bench_step.py --backend numpy --peers torch   # PyTorch only
    python benchmarks/bench_step.py --backend cupy             # vs PyTorch on CUDA (and
                                                               # bpgpu with CUDA graphs)
    python benchmarks/bench_step.py --backend numpy --quick    # a fast smoke run
    python benchmarks/bench_step.py --out benchmarks/results/numpy-official   # where to write

The official CPU figures: on a quiet machine, ``pip install "jax[cpu]"`` (JAX is a benchmark
peer only, never a bpgpu dependency), then ``python benchmarks/bench_step.py --backend numpy
--wait-quiet 60``; the results go to ``<out>.json`` (everything measured, per round) and
``<out>.md`` (the tables), by default benchmarks/results/<backend>-<date>.{json,md}.

JAX: the whole step (forward, loss, backward, Adam update) is one ``jax.jit`` program with the
parameters and moments donated (updated in place); it joins the same alternating rounds, and
the ratio bpgpu / JAX is taken per round like the ratio to PyTorch. Its first call (the
compilation) falls in the calibration, outside the timed blocks.

One training step = forward, softmax cross-entropy, backward, Adam update (lr 1e-3), float32,
ReLU MLPs, data already on the device. Both libraries start from the same weights (the first
losses are compared as a sanity check). bpgpu and PyTorch alternate inside one process over
several rounds (the order flips every round); each round times a block of steps after a warm-up.
A case's times are medians over rounds of the per-step time; its ratio is the median over rounds
of bpgpu / PyTorch within the round (lower is better). The ratio of the best (minimum) times is
shown next to it: noise only ever adds time, so it is the least disturbed estimate.

While each block runs the script also measures how busy the CPUs were with OTHER processes
(/proc/stat); blocks taken while that exceeded --max-foreign-load are set aside, and the medians
use the quiet rounds when at least half of them were quiet. The numbers of quiet rounds are
reported.

"matmul share" (CPU): the matrix products bpgpu's step performs (see ``matmul_job``: same
shapes, layouts and dtype, NumPy with preallocated outputs, the whole batch at once on BLAS's own
threads) timed alone in the same rounds, divided by bpgpu's step time (median over rounds): how
close the step runs to its matrix products. "shards": how many row shards (threads) bpgpu's
NumPy step used (bpgpu.kernels._cpu_threads); where more than one, the same fast step run in one
piece joins the rounds as a third contender, and "sharded / one piece" is the median over rounds
of the ratio of the two (what the shards gain).

Before each block the script sleeps 0.25 s (0.05 s with --quick) so that the other contender's
idle threads have parked: OpenBLAS's spin for about 0.1 s after a product and would otherwise
take a core from PyTorch's first steps, and PyTorch's OpenMP threads from bpgpu's.

fit: ``Network.fit`` on a synthetic 60000 x 784 float32 set handed in as NumPy (1 epoch, batch
128, 784-256-256-10), plain and with ``metrics=["accuracy"]`` (issue 11's target: within 5 %
of plain), against the equivalent PyTorch loop (``torch.from_numpy`` once, ``randperm``
shuffling, the same step, the loss summed on the device and read once). Each side runs in a
fresh subprocess, alternating, so peak memory is clean: host peak RSS (VmHWM) and its growth
during fit; on the GPU the CuPy memory pool's size after fit and torch.cuda.max_memory_reserved().

Writes benchmarks/results/<backend>.json and .md unless --no-save, replacing the previous run's
(the results keep the latest run per backend; older ones live in the git history).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: name -> (layer sizes, batch size). "mlp-10x512": 512 inputs, ten Dense(512) + ReLU layers,
#: then Dense(512, 10): eleven Dense layers, 2.6 M parameters.
CASES = {
    "2-4-2": ([2, 4, 2], 1000),
    "1-64-32-2": ([1, 64, 32, 2], 100),
    "784-256-256-10": ([784, 256, 256, 10], 128),
    "784-1024-1024-10": ([784, 1024, 1024, 10], 512),
    "mlp-10x512": ([512] + [512] * 10 + [10], 256),
}

#: Target ratios bpgpu / JAX jit on the CPU (issue 16).
JAX_TARGET = 1.0

#: Target ratios bpgpu / PyTorch (issue 5).
TARGETS = {
    "numpy": {"2-4-2": 0.5, "1-64-32-2": 0.5, "784-256-256-10": 0.8, "784-1024-1024-10": 0.9,
              "mlp-10x512": 0.9},
    "cupy": {"2-4-2": 0.7, "1-64-32-2": 0.7, "784-256-256-10": 0.7, "784-1024-1024-10": 1.0,
             "mlp-10x512": 1.0},
}
IMPORT_BUDGET_S = 0.15
FIT_SIZES = [784, 256, 256, 10]
FIT_BATCH = 128


# -- machine and load ----------------------------------------------------------------------------
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None


class CpuMeter:
    """Fraction of the machine's CPU time used by processes other than this one (Linux)."""

    def __init__(self):
        self.ok = os.path.exists("/proc/stat") and os.path.exists("/proc/self/stat")
        self.tick = os.sysconf("SC_CLK_TCK") if self.ok else 100
        self.ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def _read(self):
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy_all = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
        with open("/proc/self/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        mine = int(parts[11]) + int(parts[12])  # utime + stime of all threads
        return busy_all, mine, time.perf_counter()

    def start(self):
        self._t0 = self._read() if self.ok else None

    def foreign(self):
        """Others' share of all CPUs since start() (0..1), or None when unknown."""
        if self._t0 is None:
            return None
        b0, m0, w0 = self._t0
        b1, m1, w1 = self._read()
        wall = (w1 - w0) * self.tick * self.ncpu
        return max(0.0, ((b1 - b0) - (m1 - m0)) / wall) if wall > 0 else None


# -- the two contenders --------------------------------------------------------------------------
def build_bpgpu(sizes, batch, backend, rng, fast=True, cuda_graphs=False):
    import bpgpu
    from bpgpu.optimizers import Adam

    net = bpgpu.Network.from_sizes(sizes, loss="cross_entropy", optimizer=Adam(1e-3),
                                   backend=backend, dtype="float32", seed=0, fast=fast,
                                   cuda_graphs=cuda_graphs)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    Xd, yd = net._data(X, y)

    engine = net.engine

    def step():
        return engine.train_step(Xd, yd)

    return net, step, (X, y)


def fast_step(net):
    """bpgpu's fast TrainStep serving ``net`` (None on the reference path)."""
    from bpgpu.kernels import train_step_for

    return train_step_for(net)


def bpgpu_shards(net, batch):
    """Row shards bpgpu's fast step uses for ``batch`` rows (1: none, or no fast step)."""
    step = fast_step(net)
    if step is None or not step.shardable:
        return 1
    return step.kernels.shard_count(batch, step.parameter_count)


def build_torch(net, data, device):
    import torch

    X, y = data
    layers = []
    for dense in [layer for layer in net.layers if type(layer).__name__ == "Dense"]:
        lin = torch.nn.Linear(dense.in_features, dense.out_features)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(net.backend.to_numpy(dense.params["W"]).T.copy()))
            lin.bias.copy_(torch.from_numpy(net.backend.to_numpy(dense.params["b"])))
        layers += [lin, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    loss_fn = torch.nn.functional.cross_entropy

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(Xt), yt)
        loss.backward()
        opt.step()
        return loss

    return step


def build_jax(net, data):
    """The same step in JAX, jit-compiled whole (forward, softmax cross-entropy, backward and
    the Adam update as ONE XLA program), with the parameters and Adam moments donated so XLA
    updates them in place. Same weights as ``net``; PyTorch's Adam formula (bpgpu's too)."""
    import jax
    import jax.numpy as jnp

    X, y = data
    cpu = jax.devices("cpu")[0]
    denses = [layer for layer in net.layers if type(layer).__name__ == "Dense"]
    params = [(jax.device_put(net.backend.to_numpy(d.params["W"]), cpu),
               jax.device_put(net.backend.to_numpy(d.params["b"]), cpu)) for d in denses]
    zeros = [(jnp.zeros_like(W), jnp.zeros_like(b)) for W, b in params]
    state = {"params": params, "m": zeros, "v": [(jnp.zeros_like(W), jnp.zeros_like(b))
                                                  for W, b in params],
             "t": jnp.zeros((), jnp.float32)}
    Xj, yj = jax.device_put(X, cpu), jax.device_put(y.astype(np.int32), cpu)
    lr, beta1, beta2, eps = 1e-3, 0.9, 0.999, 1e-8

    def loss_fn(params, x, labels):
        for W, b in params[:-1]:
            x = jax.nn.relu(x @ W + b)
        W, b = params[-1]
        logits = x @ W + b
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))

    def adam_step(params, m, v, t, x, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
        t = t + 1.0
        step_size = lr / (1.0 - beta1 ** t)
        root = jnp.sqrt(1.0 - beta2 ** t)
        m = jax.tree_util.tree_map(lambda m_, g: beta1 * m_ + (1.0 - beta1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v_, g: beta2 * v_ + (1.0 - beta2) * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m_, v_: p - step_size * m_ / (jnp.sqrt(v_) / root + eps), params, m, v)
        return params, m, v, t, loss

    jitted = jax.jit(adam_step, donate_argnums=(0, 1, 2))

    def step():
        state["params"], state["m"], state["v"], state["t"], loss = jitted(
            state["params"], state["m"], state["v"], state["t"], Xj, yj)
        return loss

    def sync():
        jax.block_until_ready(state["params"])

    return step, sync


def matmul_job(sizes, batch):
    """The matrix products of one fast-path step alone (NumPy, float32, preallocated outputs,
    the same shapes and layouts): the first layer x W, x^T dz and 1^T dz (bias gradient); every
    later layer [x 1] [W; b], [x 1]^T dz (weight and bias gradients at once) and dz W^T."""
    rng = np.random.default_rng(1)
    jobs = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        k = n_in if i == 0 else n_in + 1
        x = rng.standard_normal((batch, k)).astype(np.float32)
        W = rng.standard_normal((k, n_out)).astype(np.float32)
        dz = rng.standard_normal((batch, n_out)).astype(np.float32)
        jobs.append((x, W, np.empty((batch, n_out), np.float32)))
        jobs.append((x.T, dz, np.empty((k, n_out), np.float32)))
        if i == 0:
            jobs.append((np.ones(batch, np.float32), dz, np.empty(n_out, np.float32)))
        else:
            jobs.append((dz, W[:n_in].T, np.empty((batch, n_in), np.float32)))

    def run():
        for a, b, out in jobs:
            np.matmul(a, b, out=out)

    return run


#: The peers bpgpu's step is compared with; the ratios are bpgpu / peer.
PEERS = ("torch", "jax")


# -- timing --------------------------------------------------------------------------------------
def time_block(fn, steps, sync):
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - t0) / steps


def calibrate(fn, sync, block_s):
    """Steps per block so that one block takes about block_s seconds."""
    fn()
    sync()
    n, elapsed = 1, 0.0
    while elapsed < 0.05:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        elapsed = time.perf_counter() - t0
        n *= 2
    per = elapsed / (n // 2)
    return max(3, int(block_s / per))


def measure_case(contenders, rounds, block_s, meter, pause_s, max_foreign, wait_s):
    """contenders: {label: (fn, sync)}. Returns {label: [(seconds per step, foreign load)]}.

    Each round runs every contender once (order reversed every other round). With wait_s > 0, a
    round whose blocks saw more than max_foreign of the CPUs busy elsewhere makes the next round
    wait (up to wait_s seconds) until the machine is quiet."""
    steps = {label: calibrate(fn, sync, block_s) for label, (fn, sync) in contenders.items()}
    samples = {label: [] for label in contenders}
    labels = list(contenders)
    busy = wait_s > 0
    for r in range(rounds):
        if busy and wait_s > 0:
            wait_until_quiet(meter, max_foreign, wait_s)
        order = labels if r % 2 == 0 else labels[::-1]
        busy = False
        for label in order:
            fn, sync = contenders[label]
            time.sleep(pause_s)               # let the other library's idle threads park
            for _ in range(max(2, steps[label] // 10)):
                fn()                          # warm-up in this round
            sync()
            meter.start()
            t = time_block(fn, steps[label], sync)
            foreign = meter.foreign()
            busy = busy or (foreign is not None and foreign > max_foreign)
            samples[label].append((t, foreign))
    return samples


def wait_until_quiet(meter, max_foreign, wait_s):
    """Probe with half a second of matrix products on every core (time the hypervisor steals
    shows only while this machine computes) until others take at most max_foreign of it."""
    a = np.ones((384, 384), np.float32)
    deadline = time.perf_counter() + wait_s
    while time.perf_counter() < deadline:
        meter.start()
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:
            a @ a
        foreign = meter.foreign()
        if foreign is None or foreign <= max_foreign:
            return
        time.sleep(2.0)


def summarise(samples, max_foreign):
    """Medians over quiet rounds (all rounds when fewer than half are quiet), and the median of
    the per-round ratios to "torch" (each round pairs blocks run seconds apart, so the ratio
    follows the machine's drifting speed less than a ratio of overall medians)."""
    out = {}
    n_rounds = len(next(iter(samples.values())))
    quiet_rounds = [r for r in range(n_rounds)
                    if all(s[r][1] is None or s[r][1] <= max_foreign for s in samples.values())]
    use = quiet_rounds if len(quiet_rounds) * 2 >= n_rounds else list(range(n_rounds))
    peers = {peer: [samples[peer][r][0] for r in use] for peer in PEERS if peer in samples}
    for label, values in samples.items():
        times = [values[r][0] for r in use]
        out[label] = {"median_s": statistics.median(times), "min_s": min(times),
                      "max_s": max(times), "rounds_used": len(use), "rounds": n_rounds,
                      "per_round_s": [round(v[0], 7) for v in values], "rounds_used_index": use,
                      "foreign_load": [None if v[1] is None else round(v[1], 3) for v in values]}
        for peer, peer_times in peers.items():
            if label not in PEERS:
                ratios = [t / u for t, u in zip(times, peer_times, strict=True)]
                out[label][f"ratio_to_{peer}"] = statistics.median(ratios)
    return out, len(quiet_rounds)


# -- fit throughput and memory (subprocesses) ---------------------------------------------------------
def _rss_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def fit_child(side, backend, n_samples):
    """Runs in a subprocess: one epoch of fit; prints a JSON line."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, FIT_SIZES[0])).astype(np.float32)
    y = rng.integers(0, FIT_SIZES[-1], n_samples)
    result = {"side": side, "samples": n_samples, "data_mib": (X.nbytes + y.nbytes) / 2**20}
    if side.startswith("bpgpu"):
        import bpgpu
        from bpgpu.optimizers import Adam

        net = bpgpu.Network.from_sizes(FIT_SIZES, loss="cross_entropy", optimizer=Adam(1e-3),
                                       backend=backend, seed=0)
        net.fit(X[:FIT_BATCH * 4], y[:FIT_BATCH * 4], epochs=1, batch_size=FIT_BATCH, verbose=0)
        pool = None
        if backend == "cupy":
            import cupy

            pool = cupy.get_default_memory_pool()
        rss0 = _rss_kib("VmRSS")
        _reset_hwm()
        t0 = time.perf_counter()
        metrics = ["accuracy"] if side == "bpgpu_metrics" else None
        history = net.fit(X, y, epochs=1, batch_size=FIT_BATCH, verbose=0, metrics=metrics)
        net.backend.synchronize()
        elapsed = time.perf_counter() - t0
        result["loss"] = float(history["loss"][-1])
        if pool is not None:
            result["gpu_pool_bytes"] = pool.total_bytes()
    else:
        import torch

        device = "cuda" if backend == "cupy" else "cpu"
        sizes = FIT_SIZES
        layers = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1]).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def epoch(Xt, yt):
            n = Xt.shape[0]
            perm = torch.randperm(n, device=device)
            total = torch.zeros((), device=device)
            for start in range(0, n, FIT_BATCH):
                idx = perm[start:start + FIT_BATCH]
                xb, yb = Xt[idx], yt[idx]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                loss.backward()
                opt.step()
                total += loss.detach() * xb.shape[0]
            return total.item() / n

        small = FIT_BATCH * 4
        epoch(torch.from_numpy(X[:small]).to(device), torch.from_numpy(y[:small]).to(device))
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss0 = _rss_kib("VmRSS")
        _reset_hwm()
        t0 = time.perf_counter()
        Xt, yt = torch.from_numpy(X).to(device), torch.from_numpy(y).to(device)
        result["loss"] = epoch(Xt, yt)
        elapsed = time.perf_counter() - t0
        if device == "cuda":
            result["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            result["gpu_max_reserved_bytes"] = torch.cuda.max_memory_reserved()
    hwm = _rss_kib("VmHWM")
    result.update(seconds=elapsed, samples_per_s=n_samples / elapsed,
                  peak_rss_mib=None if hwm is None else hwm / 1024,
                  rss_growth_mib=None if hwm is None or rss0 is None else (hwm - rss0) / 1024)
    print(json.dumps(result))


def _reset_hwm():
    """Reset the peak-RSS counter (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


FIT_SIDES = ("bpgpu", "bpgpu_metrics", "torch")


def measure_fit(backend, n_samples, runs):
    results = {side: [] for side in FIT_SIDES}
    for r in range(runs):
        for side in (FIT_SIDES if r % 2 == 0 else FIT_SIDES[::-1]):
            cmd = [sys.executable, os.path.abspath(__file__), "--fit-child", side,
                   "--backend", backend, "--fit-samples", str(n_samples)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"fit child {side} failed:\n{proc.stderr}")
            results[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    summary = {}
    for side, runs_ in results.items():
        best = max(runs_, key=lambda d: d["samples_per_s"])
        summary[side] = {"samples_per_s_median": statistics.median(d["samples_per_s"] for d in runs_),
                         "data_mib": best["data_mib"],
                         "samples_per_s_runs": [round(d["samples_per_s"]) for d in runs_],
                         "peak_rss_mib": best["peak_rss_mib"], "rss_growth_mib": best["rss_growth_mib"],
                         **{k: best[k] for k in ("gpu_pool_bytes", "gpu_max_allocated_bytes",
                                                  "gpu_max_reserved_bytes") if k in best}}
    summary["samples"] = n_samples
    summary["ratio_throughput_bpgpu_over_torch"] = (summary["bpgpu"]["samples_per_s_median"]
                                                    / summary["torch"]["samples_per_s_median"])
    # issue 11's target: fit with metrics within 5 % of fit without (time ratio, lower is better)
    summary["metrics_time_over_plain"] = (summary["bpgpu"]["samples_per_s_median"]
                                          / summary["bpgpu_metrics"]["samples_per_s_median"])
    return summary


# -- import time ------------------------------------------------------------------------------------
IMPORT_PROBE = (
    "import sys, time\n"
    "t0 = time.perf_counter(); import numpy; t1 = time.perf_counter()\n"
    "import bpgpu; t2 = time.perf_counter()\n"
    "print(t1 - t0, t2 - t1, 'cupy' in sys.modules, 'torch' in sys.modules)\n"
)


def measure_import(runs):
    extra, numpy_s, heavy = [], [], set()
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True,
                             text=True, cwd=ROOT, check=True).stdout.split()
        numpy_s.append(float(out[0]))
        extra.append(float(out[1]))
        if out[2] == "True":
            heavy.add("cupy")
        if out[3] == "True":
            heavy.add("torch")
    return {"bpgpu_over_numpy_s_min": min(extra), "bpgpu_over_numpy_s_median": statistics.median(extra),
            "numpy_s_min": min(numpy_s), "runs": runs, "imports_heavy": sorted(heavy),
            "budget_s": IMPORT_BUDGET_S, "met": min(extra) <= IMPORT_BUDGET_S and not heavy}


# -- metadata ---------------------------------------------------------------------------------------
def metadata(backend, torch):
    import bpgpu

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                    "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else None, "memory_gib": _mem_total_gib(), "platform": platform.platform(),
                    "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "python": platform.python_version(),
        "bpgpu": bpgpu.__version__, "numpy": np.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                       "MKL_NUM_THREADS") if os.environ.get(k)},
        # OPENBLAS_CORETYPE forces an older kernel (e.g. Haswell on an AVX-512 CPU): recorded,
        # because it changes NumPy's matrix products, and so bpgpu's times, several-fold
        "env_openblas": {k: v for k, v in os.environ.items()
                         if k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    }
    if backend == "numpy":  # what runs the products of row-sharded steps (MKL where installed)
        from bpgpu.kernels import _mkl_blas

        info["shard_products"] = _mkl_blas.support()
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        info["numpy_blas"] = "unknown"
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{"api": p["internal_api"], "threads": p["num_threads"],
                                "lib": os.path.basename(p["filepath"]),
                                "kernel": p.get("architecture")} for p in threadpool_info()]
    except ImportError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                            capture_output=True, text=True).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    if backend == "cupy":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        from cupy._core import _routines_linalg as linalg

        info["tf32"] = {"bpgpu": linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32,
                        "torch": bool(torch.backends.cuda.matmul.allow_tf32)}
    return info


# -- report ------------------------------------------------------------------------------------------
def fmt_time(s):
    return f"{s * 1e6:.0f} us" if s < 1e-2 else f"{s * 1e3:.2f} ms"


def render(result):
    backend = result["backend"]
    meta = result["meta"]
    lines = [f"# bpgpu ({backend}) vs PyTorch ({'CUDA' if backend == 'cupy' else 'CPU'})"
             + (" and JAX jit" if "jax" in meta else ""), "",
             f"{meta['date_utc']}; {meta['machine']['cpu']}, {meta['machine']['usable_cpus']} "
             f"usable CPUs; Python {meta['python']}, numpy {meta['numpy']} ({meta['numpy_blas']}), "
             f"torch {meta['torch']} ({meta['torch_threads']} threads); bpgpu {meta['bpgpu']} "
             f"(commit {meta.get('git_commit')})" + (f"; GPU {meta['gpu']}" if "gpu" in meta else "")
             + (f"; jax {meta['jax']}" if "jax" in meta else "")
             + "".join(f"; {p['lib']} kernel {p['kernel']}" for p in meta.get("threadpools", [])
                       if p.get("kernel"))
             + (f" (forced by {meta['env_openblas']})" if meta.get("env_openblas") else "")
             + (f"; bpgpu's row-shard products: {meta['shard_products']}"
                if meta.get("shard_products") else ""),
             ""]
    has_ref = any("bpgpu_reference" in c["times"] for c in result["cases"].values())
    has_jax = any("jax" in c["times"] for c in result["cases"].values())
    head = "| case | batch | bpgpu | PyTorch | ratio | target | met | ratio of best times |"
    sep = "|---|---:|---:|---:|---:|---:|:---:|---:|"
    if has_jax:
        head += " JAX jit | bpgpu / JAX | target | met | ratio of best times |"
        sep += "---:|---:|---:|:---:|---:|"
    if has_ref:
        head += " reference path | fast / reference |"
        sep += "---:|---:|"
    if backend == "numpy":
        head += " matmuls alone | matmul share (median, best) | shards | sharded / one piece |"
        sep += "---:|---:|---:|---:|"
    lines += [head + " quiet rounds |", sep + "---:|"]
    for name, case in result["cases"].items():
        t = case["times"]
        row = (f"| {name} | {case['batch']} | {fmt_time(t['bpgpu']['median_s'])} | "
               f"{fmt_time(t['torch']['median_s'])} | {case['ratio']:.2f} | "
               f"{case['target']:.1f} | {'yes' if case['met'] else 'NO'} | "
               f"{case['ratio_of_best']:.2f} |")
        if has_jax:
            row += (f" {fmt_time(t['jax']['median_s'])} | {case['ratio_jax']:.2f} | "
                    f"{case['target_jax']:.1f} | {'yes' if case['met_jax'] else 'NO'} | "
                    f"{case['ratio_of_best_jax']:.2f} |" if "jax" in t else " | | | | |")
        if has_ref:
            row += (f" {fmt_time(t['bpgpu_reference']['median_s'])} | "
                    f"{case['fast_over_reference']:.2f} |" if "bpgpu_reference" in t else " | |")
        if backend == "numpy":
            row += (f" {fmt_time(t['matmuls']['median_s'])} | {case['matmul_share']:.0%}, "
                    f"{case['matmul_share_best']:.0%} | {case.get('bpgpu_shards', 1)} | "
                    + (f"{case['shards_over_one_piece']:.2f} |" if "shards_over_one_piece" in case
                       else "- |"))
        row += f" {case['quiet_rounds']}/{t['bpgpu']['rounds']} |"
        lines.append(row)
    if "fit" in result:
        fit = result["fit"]
        b, tq = fit["bpgpu"], fit["torch"]
        lines += ["", f"fit, 784-256-256-10, batch {FIT_BATCH}, {fit['samples']} samples, 1 epoch "
                  "(data handed in as NumPy; fresh process per run):", "",
                  "| | samples/s (median) | runs | peak RSS | RSS growth during fit | growth / data |"
                  + (" GPU memory |" if backend == "cupy" else ""),
                  "|---|---:|---|---:|---:|---:|" + ("---:|" if backend == "cupy" else "")]
        rows = [("bpgpu", b), ("bpgpu, metrics=['accuracy']", fit.get("bpgpu_metrics")),
                ("PyTorch", tq)]
        for label, d in rows:
            if d is None:
                continue
            gpu = ""
            if backend == "cupy":
                gpu = (f" pool {d['gpu_pool_bytes'] / 2**20:.0f} MiB |" if "gpu_pool_bytes" in d
                       else f" max reserved {d.get('gpu_max_reserved_bytes', 0) / 2**20:.0f} MiB |")
            lines.append(f"| {label} | {d['samples_per_s_median']:.0f} | {d['samples_per_s_runs']} | "
                         f"{d['peak_rss_mib']:.0f} MiB | {d['rss_growth_mib']:.0f} MiB | "
                         f"{d['rss_growth_mib'] / d['data_mib']:.2f} ({d['data_mib']:.0f} MiB) |{gpu}")
        lines.append(f"\nthroughput ratio bpgpu / PyTorch: "
                     f"{fit['ratio_throughput_bpgpu_over_torch']:.2f} (higher is better)")
        if "metrics_time_over_plain" in fit:
            ratio = fit["metrics_time_over_plain"]
            lines.append(f"fit with metrics / without (time): {ratio:.3f} (target <= 1.05: "
                         f"{'met' if ratio <= 1.05 else 'NOT met'})")
    if "import" in result:
        imp = result["import"]
        lines += ["", f"import bpgpu over import numpy: {imp['bpgpu_over_numpy_s_min'] * 1e3:.0f} ms "
                  f"(min of {imp['runs']} fresh processes; budget {imp['budget_s'] * 1e3:.0f} ms); "
                  f"imports CuPy/torch: {', '.join(imp['imports_heavy']) or 'neither'}; "
                  f"met: {'yes' if imp['met'] else 'NO'}"]
    return "\n".join(lines) + "\n"


def _has_jax():
    try:
        import jax  # noqa: F401
    except ImportError:
        return False
    return True


# -- main ----------------------------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description="\n\n".join(__doc__.split("\n\n")[:4]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("numpy", "cupy"), default="numpy")
    parser.add_argument("--quick", action="store_true", help="few rounds, short blocks, small fit")
    parser.add_argument("--rounds", type=int, help="timing rounds per case (default 15, quick 3)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="run only these cases")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=None,
                        help="peers to time against (default: torch, and jax when it is "
                             "installed; jax on the CPU backend only)")
    parser.add_argument("--reference", action="store_true",
                        help="also time bpgpu's reference path (fast=False)")
    parser.add_argument("--no-fit", action="store_true")
    parser.add_argument("--no-import", action="store_true")
    parser.add_argument("--max-foreign-load", type=float, default=0.15,
                        help="a round counts as quiet when other processes used at most this "
                             "share of all CPUs during it (default 0.15)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="after a busy round, wait up to this long for a quiet machine")
    parser.add_argument("--no-steps", action="store_true", help="skip the per-step cases")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--out", help="results path without extension "
                                      "(default benchmarks/results/<backend>, or <backend>-quick)")
    parser.add_argument("--fit-child", choices=FIT_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--fit-samples", type=int, default=60000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sys.path.insert(0, ROOT)
    if args.fit_child:
        fit_child(args.fit_child, args.backend, args.fit_samples)
        return 0
    import torch

    import bpgpu

    device = "cuda" if args.backend == "cupy" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--backend cupy compares against PyTorch CUDA, but torch.cuda.is_available() "
                 "is False")
    backend = bpgpu.get_backend(args.backend)
    peers = args.peers or ["torch"] + (["jax"] if device == "cpu" and _has_jax() else [])
    if "jax" in peers and (device != "cpu" or not _has_jax()):
        sys.exit("--peers jax needs the numpy backend and JAX installed: pip install 'jax[cpu]'")
    if "torch" not in peers:
        sys.exit("torch is the reference peer of every case; keep it in --peers")
    rounds = args.rounds or (3 if args.quick else 15)
    block_s = 0.08 if args.quick else 0.25
    meter = CpuMeter()

    def bp_sync():
        backend.synchronize()

    def torch_sync():
        if device == "cuda":
            torch.cuda.synchronize()

    meta = metadata(args.backend, torch)
    if "jax" in peers:
        import jax

        meta["jax"] = jax.__version__
    result = {"backend": args.backend, "meta": meta, "cases": {}, "peers": peers,
              "method": {"rounds": rounds, "block_seconds": block_s,
                         "max_foreign_load": args.max_foreign_load,
                         "step": "forward, softmax cross-entropy, backward, Adam(lr=1e-3); float32"}}
    names = [] if args.no_steps else (args.cases or list(CASES))
    for name in names:
        sizes, batch = CASES[name]
        rng = np.random.default_rng(0)
        net, bp_step, data = build_bpgpu(sizes, batch, backend, rng)
        t_step = build_torch(net, data, device)
        jax_step = build_jax(net, data) if "jax" in peers else None  # before bpgpu's first step
        first_bp = float(backend.to_float(bp_step()))
        first_t = float(t_step().item())
        contenders = {"bpgpu": (bp_step, bp_sync), "torch": (t_step, torch_sync)}
        first_jax = None
        if jax_step is not None:
            first_jax = float(jax_step[0]())
            contenders["jax"] = jax_step
        shards = bpgpu_shards(net, batch)
        if args.reference:
            _, ref_step, _ = build_bpgpu(sizes, batch, backend, np.random.default_rng(0),
                                         fast=False)
            contenders["bpgpu_reference"] = (ref_step, bp_sync)
        if shards > 1:  # the same fast step in one piece: what the shards gain
            one_net, one_step, _ = build_bpgpu(sizes, batch, backend, np.random.default_rng(0))
            one_step()
            fast_step(one_net).shardable = False
            contenders["bpgpu_one_piece"] = (one_step, bp_sync)
        if args.backend == "numpy":
            contenders["matmuls"] = (matmul_job(sizes, batch), lambda: None)
        else:  # the same fast step captured once and replayed as a CUDA graph
            _, graph_step, _ = build_bpgpu(sizes, batch, backend, np.random.default_rng(0),
                                           cuda_graphs=True)
            contenders["bpgpu_cuda_graphs"] = (graph_step, bp_sync)
        print(f"{name}: timing {', '.join(contenders)} over {rounds} rounds ...", flush=True)
        samples = measure_case(contenders, rounds, block_s, meter,
                               0.05 if args.quick else 0.25, args.max_foreign_load, args.wait_quiet)
        times, quiet = summarise(samples, args.max_foreign_load)
        ratio = times["bpgpu"]["ratio_to_torch"]
        target = TARGETS[args.backend][name]
        case = {"sizes": sizes, "batch": batch, "times": times, "ratio": ratio, "target": target,
                "met": ratio <= target, "quiet_rounds": quiet, "bpgpu_shards": shards,
                "first_loss": {"bpgpu": first_bp, "torch": first_t}}
        if abs(first_bp - first_t) > 1e-4 * max(1.0, abs(first_t)):
            print(f"  warning: first losses differ: bpgpu {first_bp} torch {first_t}")
        case["ratio_of_best"] = times["bpgpu"]["min_s"] / times["torch"]["min_s"]
        if "jax" in times:
            case["first_loss"]["jax"] = first_jax
            if abs(first_bp - first_jax) > 1e-4 * max(1.0, abs(first_jax)):
                print(f"  warning: first losses differ: bpgpu {first_bp} jax {first_jax}")
            case["ratio_jax"] = times["bpgpu"]["ratio_to_jax"]
            case["ratio_of_best_jax"] = times["bpgpu"]["min_s"] / times["jax"]["min_s"]
            case["target_jax"] = JAX_TARGET
            case["met_jax"] = case["ratio_jax"] <= JAX_TARGET
        if "matmuls" in times:
            used = times["bpgpu"]["rounds_used_index"]
            case["matmul_share"] = statistics.median(
                times["matmuls"]["per_round_s"][r] / times["bpgpu"]["per_round_s"][r] for r in used)
            case["matmul_share_best"] = times["matmuls"]["min_s"] / times["bpgpu"]["min_s"]
        if "bpgpu_reference" in times:
            case["fast_over_reference"] = (times["bpgpu"]["ratio_to_torch"]
                                           / times["bpgpu_reference"]["ratio_to_torch"])
        if "bpgpu_one_piece" in times:
            used = times["bpgpu"]["rounds_used_index"]
            case["shards_over_one_piece"] = statistics.median(
                times["bpgpu"]["per_round_s"][r] / times["bpgpu_one_piece"]["per_round_s"][r]
                for r in used)
        result["cases"][name] = case
        print(f"  bpgpu {fmt_time(times['bpgpu']['median_s'])}  torch "
              f"{fmt_time(times['torch']['median_s'])}  ratio {ratio:.2f} (target {target})"
              + (f"  jax {fmt_time(times['jax']['median_s'])}  ratio {case['ratio_jax']:.2f} "
                 f"(target {JAX_TARGET})" if "jax" in times else ""), flush=True)
        del net, bp_step, t_step, jax_step, contenders
    if not args.no_fit:
        n = 10000 if args.quick else args.fit_samples
        print(f"fit: {n} samples, alternating subprocesses ...", flush=True)
        result["fit"] = measure_fit(args.backend, n, 1 if args.quick else 5)
    if not args.no_import:
        result["import"] = measure_import(3 if args.quick else 9)
    text = render(result)
    print()
    print(text)
    if not args.no_save:
        stem = args.out or os.path.join(HERE, "results",
                                        args.backend + ("-quick" if args.quick else ""))
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=1, default=float)
        with open(stem + ".md", "w") as f:
            f.write(text)
        print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
