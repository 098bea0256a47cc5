"""What the checks of bpgpu.load cost: checked loading against an unchecked read of the same file.

For MLPs of growing size (Adam state included, so a file holds about three times the weights),
each round times, in alternating order:

* ``load``: ``bpgpu.load(path, backend="numpy")``, every check of the loader (directory, probe of
  the architecture, headers, exact reads, finiteness, variances) plus building the network;
* ``peer``: ``numpy.load`` of every member plus ``json.loads`` of the description, the raw read
  the checks sit on (no network is built).

``build ms`` is the time to construct the described network (drawing its initial weights), which
any loader pays and the peer does not: the checks cost about load - peer - build.

The ratio load / peer is the median over rounds of the per-round ratio. It also reports the peak
memory of one load (tracemalloc) relative to the file size, and the time to refuse a 1 KB file
that describes a Dense(10^6, 10^6) (4 TB of weights).

    python benchmarks/bench_load.py [--rounds 7] [--widths 256 1024 2048]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc

import numpy as np

import bpgpu
from bpgpu.layers import Dense, ReLU
from bpgpu.optimizers import Adam


def _network(width):
    return bpgpu.Network([Dense(width, width), ReLU(), Dense(width, width), ReLU(),
                          Dense(width, 10)], optimizer=Adam(), backend="numpy", seed=0)


def _model(width, folder):
    net = _network(width)
    rng = np.random.default_rng(0)
    net.fit(rng.normal(size=(64, width)), rng.normal(size=(64, 10)), epochs=1, batch_size=32,
            verbose=0)
    path = os.path.join(folder, f"mlp-{width}.npz")
    net.save(path)
    return path


def _peer(path):
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def _time(fn, path, repeat):
    start = time.perf_counter()
    for _ in range(repeat):
        fn(path)
    return (time.perf_counter() - start) / repeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024, 2048])
    args = parser.parse_args()
    print("| width | file MB | load ms | peer ms | ratio load/peer | build ms | load peak / file |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for width in args.widths:
            path = _model(width, folder)
            size = os.path.getsize(path)
            repeat = max(1, int(2e7 // size))
            contenders = {"load": lambda p: bpgpu.load(p, backend="numpy"), "peer": _peer,
                          "build": lambda p, w=width: _network(w)}
            times = {name: [] for name in contenders}
            ratios = []
            for r in range(args.rounds):
                order = list(contenders) if r % 2 == 0 else list(contenders)[::-1]
                measured = {name: _time(contenders[name], path, repeat) for name in order}
                for name, value in measured.items():
                    times[name].append(value)
                ratios.append(measured["load"] / measured["peer"])
            tracemalloc.start()
            bpgpu.load(path, backend="numpy")
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"| {width} | {size / 1e6:.1f} | {statistics.median(times['load']) * 1e3:.2f} | "
                  f"{statistics.median(times['peer']) * 1e3:.2f} | {statistics.median(ratios):.2f} | "
                  f"{statistics.median(times['build']) * 1e3:.2f} | {peak / size:.2f} |")
        hostile = os.path.join(folder, "hostile.npz")
        _model(8, folder)
        with np.load(os.path.join(folder, "mlp-8.npz")) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays["meta"]))
        meta["layers"][0]["config"].update(in_features=10**6, out_features=10**6)
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(hostile, **arrays)
        start = time.perf_counter()
        try:
            bpgpu.load(hostile, backend="numpy")
        except bpgpu.ModelFileError as error:
            print(f"\nrefused a {os.path.getsize(hostile)} B file describing 4 TB of weights in "
                  f"{(time.perf_counter() - start) * 1e3:.2f} ms: {error}")


if __name__ == "__main__":
    main()
