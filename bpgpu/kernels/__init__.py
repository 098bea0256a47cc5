"""Fast paths for the training step, one per backend, each checked against the reference path.

The reference path is the layer, loss and optimizer code written against the Array API
standard: it runs everywhere and defines the numbers. A fast path computes the same step with one
library's own tools, where the standard has no way to say it:

* every parameter lives in ONE flat buffer (each layer's ``params`` entries are views into it),
  and so does every gradient, so the optimizer update is a handful of whole-buffer operations
  however many parameters the network has (:mod:`bpgpu.kernels._plan`);
* ``Dense`` followed by ``ReLU``, ``LeakyReLU`` or ``Tanh`` (or ``Sigmoid``, on CuPy), softmax
  cross-entropy and MSE write into buffers that are allocated once per batch size and reused (no
  temporaries per step);
* NumPy (:mod:`bpgpu.kernels._numpy_fast`): ``out=`` everywhere, BLAS for bias gradients,
  large steps split into row shards, one thread per core (:mod:`bpgpu.kernels._cpu_threads`),
  and the optimizer update in one pass of C compiled on first use
  (:mod:`bpgpu.kernels._c_kernels`; NumPy passes, :mod:`bpgpu.kernels._numpy_update`, where
  there is no C compiler);
* CuPy (:mod:`bpgpu.kernels._cupy_fused`): one fused CUDA kernel per element-wise chain
  (bias + activation, activation gradient, softmax cross-entropy, the whole optimizer update over
  the flat buffer) and no host synchronisation inside a step; with ``precision="mixed_float16"``
  the same kernels on float16 data (:mod:`bpgpu.kernels._mixed_step`).

Layers, losses and optimizers without a fast version run their reference code inside the same
step, so every network gets the flat optimizer update. Torch and array-api-strict always use the
reference path.

Choosing: one place decides, :func:`bpgpu._engine.select_engine`; ``net.engine.reason`` says
which path serves a network and why (``summary()`` prints it). ``Network(..., fast=None)``
(default) uses the fast path where it applies; ``fast=False``, or the environment variable
``BPGPU_REFERENCE=1`` when ``fast`` is None, forces the reference path. Results agree with the
reference path to rounding (tests/test_kernels.py; on CuPy float32 subnormals flush to zero, see
:mod:`bpgpu.kernels._cupy_fused`). One visible difference: the fast path updates
parameter arrays in place, where the reference path replaces them; take copies
(``get_weights()``) to keep a snapshot.
"""

__all__ = ["kernels_for", "train_step_for"]


def kernels_for(backend):
    """The fast kernel set of ``backend``, or None when it has none (torch, array_api_strict).

    The modules are imported here, on first use, so ``import bpgpu`` stays light.
    """
    if backend.name == "numpy":
        from ._numpy_fast import NumPyKernels

        return NumPyKernels()
    if backend.name == "cupy":
        from ._cupy_fused import CuPyKernels

        return CuPyKernels(backend)
    return None


def train_step_for(net):
    """The :class:`~bpgpu.kernels._plan.TrainStep` serving ``net``, or None when the reference
    engine serves it (``net.engine.reason`` says why)."""
    return getattr(net.engine, "plan", None)
