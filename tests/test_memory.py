"""Checkpoint's memory contract, counted exactly: after a training forward pass a checkpointed
block holds its input and nothing else. (The measured savings on a deep MLP, with tracemalloc
peaks, are in benchmarks/checkpoint_memory.py.)"""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import Checkpoint, Dense, ReLU, Sequential

BATCH, WIDTH, BLOCKS = 8, 16, 8


def held_bytes(net):
    """Bytes of the distinct backend arrays held by the layers outside params, grads, buffers."""
    seen, total = set(), 0
    for layer in net._all_layers:
        for name, value in vars(layer).items():
            if name in ("params", "grads", "buffers") or not net.backend.is_native(value):
                continue
            if id(value) not in seen:
                seen.add(id(value))
                total += net.backend.to_numpy(value).nbytes
    return total


def _network(backend, group):
    """BLOCKS x (Dense + ReLU) then Dense(WIDTH, 2); ``group`` blocks per Checkpoint (0: none)."""
    blocks = [[Dense(WIDTH, WIDTH), ReLU()] for _ in range(BLOCKS)]
    if group:
        layers = [Checkpoint(Sequential([layer for block in blocks[i:i + group] for layer in block]))
                  for i in range(0, BLOCKS, group)]
    else:
        layers = [layer for block in blocks for layer in block]
    return bpgpu.Network(layers + [Dense(WIDTH, 2)], loss="cross_entropy", backend=backend,
                         dtype="float64", seed=0)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_checkpointed_blocks_hold_only_their_inputs(backend, group):
    X, y = np.random.default_rng(0).standard_normal((BATCH, WIDTH)), np.arange(BATCH) % 2
    plain, ckpt = _network(backend, 0), _network(backend, group)
    one = BATCH * WIDTH * 8  # bytes of one float64 activation
    for net in (plain, ckpt):
        net.train_step(X, y)
        net.forward(X, training=True)
    # one input per Checkpoint, plus the last Dense layer's input
    assert held_bytes(ckpt) == (BLOCKS // group + 1) * one
    assert held_bytes(plain) > held_bytes(ckpt)
    assert held_bytes(plain) >= (BLOCKS + 1) * one  # at least every Dense input
