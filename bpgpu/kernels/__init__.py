"""Fast paths for the training step, one per backend, each checked against the reference path.

The reference path is the layer, loss and optimizer code written against the Array API
standard: it runs everywhere and defines the numbers. A fast path computes the same step with one
library's own tools, where the standard has no way to say it:

* every parameter lives in ONE flat buffer (each layer's ``params`` entries are views into it),
  and so does every gradient, so the optimizer update is a handful of whole-buffer operations
  however many parameters the network has (:mod:`bpgpu.kernels.plan`);
* ``Dense`` followed by ``ReLU``, ``LeakyReLU`` or ``Tanh`` (or ``Sigmoid``, on CuPy), softmax
  cross-entropy and MSE write into buffers that are allocated once per batch size and reused (no
  temporaries per step);
* NumPy (:mod:`bpgpu.kernels.numpy_fast`): ``out=`` everywhere, BLAS for bias gradients, and
  large steps split into row shards, one thread per core (:mod:`bpgpu.kernels.cpu_threads`);
* CuPy (:mod:`bpgpu.kernels.cupy_fused`): one fused CUDA kernel per element-wise chain
  (bias + activation, activation gradient, softmax cross-entropy, the whole optimizer update over
  the flat buffer) and no host synchronisation inside a step.

Layers, losses and optimizers without a fast version run their reference code inside the same
step, so every network gets the flat optimizer update. Torch and array-api-strict always use the
reference path.

Choosing: ``Network(..., fast=None)`` (default) uses the fast path where it applies;
``fast=False``, or the environment variable ``BPGPU_REFERENCE=1`` when ``fast`` is None, forces the
reference path. Results agree with the reference path to rounding (tests/test_kernels.py). One
visible difference: the fast path updates parameter arrays in place, where the reference path
replaces them; take copies (``get_weights()``) to keep a snapshot.
"""

import os

__all__ = ["kernels_for", "reference_forced", "train_step_for"]


def reference_forced():
    """True when the environment variable ``BPGPU_REFERENCE`` asks for the reference path."""
    return os.environ.get("BPGPU_REFERENCE", "").strip() not in ("", "0")


def kernels_for(backend):
    """The fast kernel set of ``backend``, or None when it has none (torch, array_api_strict).

    The modules are imported here, on first use, so ``import bpgpu`` stays light.
    """
    if backend.name == "numpy":
        from .numpy_fast import NumPyKernels

        return NumPyKernels()
    if backend.name == "cupy":
        from .cupy_fused import CuPyKernels

        return CuPyKernels(backend)
    return None


def train_step_for(net):
    """The :class:`~bpgpu.kernels.plan.TrainStep` serving ``net``, or None for the reference path.

    Built on first use and cached on the network; rebuilt when its layers (``net._slots``) or its
    loss object change.
    """
    key = (net._slots, net.loss, net.fast)
    cached = net.__dict__.get("_train_step")
    if cached is not None and all(a is b for a, b in zip(cached[0], key)):
        return cached[1]
    step = None
    if net.fast and getattr(net, "precision", None) is None:  # mixed precision: reference only
        kernels = net.backend.kernels
        if kernels is not None:
            from .plan import TrainStep

            step = TrainStep.build(net, kernels)
    net._train_step = (key, step)
    return step
