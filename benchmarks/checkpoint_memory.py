"""Activation memory saved by gradient checkpointing (bpgpu.layers.Checkpoint) on a deep MLP.

The network: 20 blocks of Dense(512, 512) + ReLU, then Dense(512, 10), cross-entropy, batch 256,
float32, NumPy backend, in three variants with identical weights:

* plain: every layer keeps its input for the backward pass (Dense and ReLU: one (256, 512)
  array each, 40 in all);
* per block: each Dense+ReLU block wrapped in Checkpoint (only the 20 block inputs are kept);
* segments: 5 Checkpoints of 4 blocks each (5 inputs kept; a backward pass recomputes one
  segment at a time).

Two figures per variant:

* held after forward: bytes of the arrays the layers keep between the forward and the backward
  pass (every NumPy array attribute of every layer, parameters, gradients and buffers excluded);
* pass peak: tracemalloc's peak of the memory allocated during one forward and backward pass
  started with no activation or gradient held (NumPy reports its allocations to tracemalloc):
  kept activations, the gradients (the same for every variant) and the backward pass's
  temporaries, recomputations included. The optimizer update is not part of it.

It also checks that the three variants compute the same gradients, and times a training step
(forward, backward, Adam update; on a busy machine the times are rough).

    python benchmarks/checkpoint_memory.py [--blocks 20] [--width 512] [--batch 256]
"""

import argparse
import time
import tracemalloc

import numpy as np

import bpgpu
from bpgpu._engine import run_backward, run_forward
from bpgpu.layers import Checkpoint, Dense, ReLU, Sequential

_LAYER_STATE = ("params", "grads", "buffers")


def held_bytes(net):
    """Bytes of the distinct NumPy arrays held as attributes by the network's layers."""
    seen, total = set(), 0
    for layer in net.structure.all_layers:
        for name, value in vars(layer).items():
            if name not in _LAYER_STATE and isinstance(value, np.ndarray) and id(value) not in seen:
                seen.add(id(value))
                total += value.nbytes
    return total


def blocks(n, width):
    return [[Dense(width, width), ReLU()] for _ in range(n)]


def build(variant, n_blocks, width, seed=0):
    parts = blocks(n_blocks, width)
    if variant == "plain":
        layers = [layer for block in parts for layer in block]
    elif variant == "per block":
        layers = [Checkpoint(Sequential(block)) for block in parts]
    else:
        size = max(1, round(n_blocks ** 0.5))
        layers = [Checkpoint(Sequential([layer for block in parts[i:i + size] for layer in block]))
                  for i in range(0, n_blocks, size)]
    layers.append(Dense(width, 10))
    return bpgpu.Network(layers, loss="cross_entropy", optimizer="adam", backend="numpy",
                         dtype="float32", seed=seed)


def forget_pass(net):
    """Drop every cached activation and gradient, as before a network's first pass."""
    for layer in net.structure.all_layers:
        for name, value in list(vars(layer).items()):
            if name not in _LAYER_STATE and isinstance(value, np.ndarray):
                delattr(layer, name)
        layer.grads = {}


def measure(variant, X, y, args):
    net = build(variant, args.blocks, args.width)
    Xd, yd = net._data(X, y)
    net.train_step(X, y)  # warm-up: optimizer state allocated
    run_forward(net.structure, Xd, True)
    held = held_bytes(net)
    grads = net.compute_gradients(X, y)[1]
    forget_pass(net)
    tracemalloc.start()
    net.loss.forward(run_forward(net.structure, Xd, True), yd)
    run_backward(net.structure, net.loss)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    start = time.perf_counter()
    for _ in range(args.repeat):
        net.train_step(X, y)
    seconds = (time.perf_counter() - start) / args.repeat
    return held, peak, seconds, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5, help="timed steps per variant")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.batch, args.width)).astype(np.float32)
    y = rng.integers(0, 10, args.batch)
    activation = args.batch * args.width * 4
    print(f"{args.blocks} x [Dense({args.width}) + ReLU], batch {args.batch}, float32, NumPy; "
          f"one activation = {activation / 2**20:.2f} MiB")
    n_params = sum(layer.params[k].size for layer, k in build("plain", args.blocks, args.width).structure.slots)
    print(f"gradients: {n_params * 4 / 2**20:.1f} MiB in every variant")
    print(f"{'variant':<10} {'held after forward':>20} {'pass peak':>12} {'step time':>10}")
    reference = None
    for variant in ("plain", "per block", "segments"):
        held, peak, seconds, grads = measure(variant, X, y, args)
        if reference is None:
            reference = grads
        worst = max(float(np.max(np.abs(g - r)) / (np.max(np.abs(r)) or 1.0))
                    for g, r in zip(grads, reference, strict=True))
        assert worst < 1e-5, f"{variant}: gradients differ from the plain network's by {worst:.2g}"
        print(f"{variant:<10} {held / 2**20:>16.1f} MiB {peak / 2**20:>8.1f} MiB "
              f"{seconds * 1e3:>7.1f} ms")
    print("gradients of all variants agree with the plain network's")


if __name__ == "__main__":
    main()
