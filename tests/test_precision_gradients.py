"""Gradients of every layer computed in 16 bits match float32 within the tolerance 16 bits allow.

Setup: a network ``[Identity(), layer]`` (the Identity makes the layer's input gradient count)
with an MSE loss, run once in float32 and once in mixed precision on the same inputs and weights,
both rounded to float16 first, so the two runs see the same numbers and differ only in how
results are rounded. Compared: dL/dX and every parameter gradient (unscaled, float32).

Tolerance, derived: every 16-bit operation rounds its result with a relative error of at most
u (2^-11 for float16, 2^-8 for bfloat16); a matrix product or a sum accumulates in float32 and
rounds once. An error carried through k roundings is at most about k u relative to the
magnitudes involved (first order). We measure the largest absolute difference relative to the
largest reference entry and allow ``k * eps``, eps = 2u (the machine epsilon: a factor 2 for
second-order terms, float32 steps and cancellation), where k counts the 16-bit operations of
the layer's forward formula (its output feeds the loss gradient), of its backward formula, and
one for casting the scaled loss gradient to 16 bits. The float32 reference's own error (2^-24
per operation) is negligible against it.
"""

import numpy as np
import pytest

import bpgpu
from bpgpu.layers import (
    GELU,
    AvgPool2D,
    BatchNorm,
    Checkpoint,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    MaxPool2D,
    ReLU,
    Residual,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from bpgpu.precision import LossScaler, MixedPrecision

EPS = {"float16": 2.0 ** -10, "bfloat16": 2.0 ** -7}
FLAT, IMAGES = (16, 5), (4, 2, 6, 6)

# name: (layer factory, input shape, k = 16-bit operations forward + backward + 1)
CASES = {
    "Dense": (lambda: Dense(5, 4), FLAT, 2 + 1 + 1),
    "ReLU": (ReLU, FLAT, 1 + 1 + 1),
    "LeakyReLU": (lambda: LeakyReLU(0.1), FLAT, 2 + 2 + 1),
    "Sigmoid": (Sigmoid, FLAT, 4 + 3 + 1),
    "Tanh": (Tanh, FLAT, 1 + 3 + 1),
    "SiLU": (SiLU, FLAT, 5 + 5 + 1),
    "GELU": (GELU, FLAT, 9 + 13 + 1),
    "Softmax": (Softmax, FLAT, 4 + 4 + 1),
    "Identity": (Identity, FLAT, 0 + 0 + 1),
    "Dropout": (lambda: Dropout(0.5), FLAT, 1 + 1 + 1),
    "BatchNorm1d": (lambda: BatchNorm(5), FLAT, 1 + 1 + 1),  # float32 inside: casts only
    "BatchNorm2d": (lambda: BatchNorm(2), IMAGES, 1 + 1 + 1),
    "LayerNorm": (lambda: LayerNorm(5), FLAT, 1 + 1 + 1),
    # the input gradient sums up to 3x3 = 9 window entries in 16 bits (col2im): 8 roundings
    "Conv2D": (lambda: Conv2D(2, 3, 3, padding=1), IMAGES, 2 + (1 + 8) + 1),
    "MaxPool2D": (lambda: MaxPool2D(2), IMAGES, 1 + 1 + 1),
    "AvgPool2D": (lambda: AvgPool2D(2), IMAGES, 1 + 1 + 1),
    "Flatten": (Flatten, IMAGES, 0 + 0 + 1),
    "Residual": (lambda: Residual(Dense(5, 5)), FLAT, 3 + 2 + 1),
    "Sequential": (lambda: Sequential([Dense(5, 4), Tanh()]), FLAT, 3 + 4 + 1),
    "Checkpoint": (lambda: Checkpoint(Sequential([Dense(5, 4), ReLU()])), FLAT, 3 + 2 + 1),
}
TORCH_CASES = ["Dense", "GELU", "Softmax", "BatchNorm1d", "Conv2D"]


def _round16(a):
    return np.asarray(a, dtype=np.float16).astype(np.float32)


def _gradients(net, X, y):
    out = net.forward(X, training=True)
    net.compute_loss(out, y)
    return [net.backend.to_numpy(net.backward()), *net.gradients()]


def _errors(backend, name, compute_dtype="float16"):
    factory, shape, _ = CASES[name]
    rng = np.random.default_rng(0)
    X = _round16(rng.standard_normal(shape))
    # A smaller initial scale: this test is about rounding, not about overflow (tested elsewhere).
    policy = MixedPrecision(compute_dtype, LossScaler(init_scale=2.0 ** 8))
    mixed = bpgpu.Network([Identity(), factory()], loss="mse", backend=backend, seed=1,
                          precision=policy)
    plain = bpgpu.Network([Identity(), factory()], loss="mse", backend=backend, seed=1)
    weights = [_round16(w + 0.3 * rng.standard_normal(w.shape)) for w in plain.get_weights()]
    for net in (mixed, plain):
        net.set_weights(weights)
    out_shape = plain.predict(X).shape
    y = rng.standard_normal(out_shape).astype(np.float32)
    ours, reference = _gradients(mixed, X, y), _gradients(plain, X, y)
    assert len(ours) == len(reference) and all(np.all(np.isfinite(g)) for g in ours)
    return [float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(ours, reference, strict=True)]


@pytest.mark.parametrize("name", list(CASES))
def test_float16_gradients_match_float32_on_numpy(name):
    errors = _errors(bpgpu.get_backend("numpy"), name)
    tolerance = CASES[name][2] * EPS["float16"]
    assert max(errors) <= tolerance, f"{name}: errors {errors} above {tolerance:.2e}"


@pytest.mark.parametrize("compute_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", TORCH_CASES)
def test_16_bit_gradients_match_float32_on_torch(torch, name, compute_dtype):
    errors = _errors(bpgpu.get_backend("torch:cpu"), name, compute_dtype)
    tolerance = CASES[name][2] * EPS[compute_dtype]
    assert max(errors) <= tolerance, f"{name}: errors {errors} above {tolerance:.2e}"

