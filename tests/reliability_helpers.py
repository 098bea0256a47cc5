"""Helpers shared by the reliability tests: a snapshot of everything a call could change."""

import numpy as np


def network_state(net):
    """Weights, buffers, optimizer counters and state, random generator states, epoch counter
    and history of ``net``, on the host (compare two with ``numpy.testing.assert_equal``)."""
    opt = net.optimizer.state_dict()
    return {"weights": net.get_weights(),
            "buffers": [{k: net.backend.to_numpy(v) for k, v in layer.buffers.items()}
                        for layer in net._all_layers],
            "optimizer": (opt["step_count"], opt["schedule_step"], net.optimizer.lr,
                          {k: [net.backend.to_numpy(a) for a in v] for k, v in opt["state"].items()}),
            "shuffle": net.shuffle_rng.bit_generator.state,
            "device": net.backend.rng_state(net.device_rng),
            "epoch": net.epoch, "history": net.history.to_dict()}


def assert_same_state(a, b):
    np.testing.assert_equal(a, b)
