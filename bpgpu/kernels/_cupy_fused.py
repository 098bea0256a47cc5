"""CuPy fast path: one fused CUDA kernel per element-wise chain of the training step.

Kernels, generated per dtype (float32/float64) and per variant, compiled on first use (the
Dense element-wise kernels also for float16 storage with float32 arithmetic, and a few float16
kernels of the mixed-precision step, :mod:`bpgpu.kernels._mixed_step`: casts, softmax
cross-entropy and MSE on float16 output, the unscale-and-check kernel):

* Dense forward: cuBLAS writes z = x @ W into a reused buffer, then ONE kernel adds the bias and
  applies the activation in place: y = act(z + b)  (ReLU, LeakyReLU, Tanh, Sigmoid);
* activation gradient in one kernel: dz = dy * act'(y)  (ReLU and LeakyReLU select like the
  reference ``where``, so a non-finite dy under a closed unit gives 0);
* softmax cross-entropy: one warp per row (coalesced loads, shuffle reductions) finds the row
  maximum, the log-sum-exp, the row's loss and its row of the gradient; one reduction kernel sums
  and divides by N;
* MSE: one kernel writes the gradient 2 (p - t) / size, one reduction the loss;
* the optimizer update: ONE kernel over the whole flat parameter buffer (SGD, RMSprop, Adam,
  AdamW, clipping included; the global norm for ``clip_norm`` comes from one reduction kernel whose
  result stays on the device).

Nothing here reads a value back to the host: a step queues its kernels and returns its loss as a
0-d device array, so ``fit`` runs without host synchronisation until it reads the epoch's loss.
Each kernel writes the reference formula in the same order of operations; the CUDA compiler may
contract a multiply and an add into one FMA, so results agree with the reference path to rounding.
One difference beyond rounding, float32 only: CuPy compiles every kernel with ``-ftz=true`` (and
offers no way to turn it off), so a float32 value below 1.18e-38 (a subnormal) read or produced by
a fused kernel becomes zero, where the reference path keeps it. Such values are far below
anything a loss, a gradient or an update can resolve at float32 precision; float64 is unaffected.

Matrix products go to cuBLAS through ``cupy.matmul(..., out=)``; TensorFloat-32 stays off unless
enabled (exact float32, see ``CuPyBackend.set_tf32``).
"""

import contextlib
import functools
import math
import threading

import cupy
import numpy as np

from ..losses import MSE, CrossEntropy
from ._plan import KernelSet
from ._plan import cached as _cached
from ._update_rules import flat_rule_name

__all__ = ["CuPyKernels"]

def _names(dtype):
    """(NumPy type name, C type name) for a floating dtype."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "float32", "float"
    if dtype == np.float64:
        return "float64", "double"
    raise TypeError(f"fused kernels take float32 or float64, got {dtype}")


def _storage(dtype):
    """(storage type name, compute type name, compute C type) of an element-wise kernel: float16
    data is computed on in float32 registers (read once, rounded once when written back, to
    nearest even); float32 and float64 compute in their own type."""
    if np.dtype(dtype) == np.float16:
        return "float16", "float32", "float"
    d, t = _names(dtype)
    return d, d, t


# -- Dense + activation ------------------------------------------------------------------------------
_FORWARD = {
    None: "",
    "relu": "if (z <= ({t})0) z = ({t})0;\n",                    # max(z, 0); NaN stays NaN
    "leaky_relu": "if (!(z > ({t})0)) z = slope * z;\n",         # where(z > 0, z, a z)
    "tanh": "z = tanh(z);\n",
    "sigmoid": ("{t} e = exp(-fabs(z));\n{t} r = ({t})1 / (({t})1 + e);\n"
                "z = z >= ({t})0 ? r : e * r;\n"),              # the reference stable_sigmoid
}

_BACKWARD = {
    "relu": "dz = y > ({t})0 ? dy : ({t})0;",                    # y > 0 exactly where z > 0
    "leaky_relu": "dz = y > ({t})0 ? dy : slope * dy;",           # (0 <= a <= 1)
    "tanh": "dz = dy * (({t})1 - y * y);",
    "sigmoid": "dz = dy * y * (({t})1 - y);",
}


@functools.lru_cache(maxsize=None)
def _bias_activation(act, has_bias, dtype):
    """In place on y (holding x @ W): y = act(y + b). For float16 y and b, the sum and the
    activation run in float and y is rounded once."""
    d, c, t = _storage(dtype)
    params = f"{d} b, {c} slope" if has_bias else f"{c} slope"
    body = (f"{t} z = {t}(y){f' + {t}(b)' if has_bias else ''};\n" + _FORWARD[act].format(t=t)
            + "y = z;")
    return cupy.ElementwiseKernel(params, f"{d} y", body,
                                  f"bpgpu_{'bias_' if has_bias else ''}{act or 'linear'}_{d}")


@functools.lru_cache(maxsize=None)
def _activation_grad(act, dtype):
    """dz = dy * act'(y) (float16 data: read into float, computed there, rounded once)."""
    d, c, t = _storage(dtype)
    if d == c:
        return cupy.ElementwiseKernel(f"{d} dy, {d} y, {d} slope", f"{d} dz",
                                      _BACKWARD[act].format(t=t), f"bpgpu_{act}_grad_{d}")
    body = (f"{t} dy = {t}(dy_s), y = {t}(y_s), dz;\n" + _BACKWARD[act].format(t=t)
            + "\ndz_s = dz;")
    return cupy.ElementwiseKernel(f"{d} dy_s, {d} y_s, {c} slope", f"{d} dz_s", body,
                                  f"bpgpu_{act}_grad_{d}")


@functools.lru_cache(maxsize=None)
def _add_scaled(dtype):
    """out = out + c * x  (Dense l2: dW + (2 l2 S) W, S the loss scale; 1 outside mixed
    precision)."""
    d, c, t = _storage(dtype)
    return cupy.ElementwiseKernel(f"{d} x, {c} c", f"{d} out", f"out = {t}(out) + c * {t}(x)",
                                  f"bpgpu_add_scaled_{d}")


class _Dense:
    """``Dense`` and the activation after it (see the module docstring)."""

    def __init__(self, layer, act, W, dW, b, db):
        self.layer, self.W, self.dW, self.b, self.db = layer, W, dW, b, db
        self.act, self.slope = act if act is not None else (None, 0.0)
        dtype = W.dtype
        self.forward_kernel = (_bias_activation(self.act, b is not None, dtype.name)
                               if self.act is not None or b is not None else None)
        self.grad_kernel = _activation_grad(self.act, dtype.name) if self.act else None
        self.buffers = {}
        self.x = self.y = self.buf = None

    def _make(self, n):
        shape, dtype = (n, self.W.shape[1]), self.W.dtype
        return {"y": cupy.empty(shape, dtype),
                "dz": cupy.empty(shape, dtype) if self.act else None, "dx": None}

    def forward(self, x):
        buf = _cached(self.buffers, x.shape[0], self._make)
        y = buf["y"]
        cupy.matmul(x, self.W, out=y)
        if self.forward_kernel is not None:
            if self.b is not None:
                self.forward_kernel(self.b, self.slope, y)
            else:
                self.forward_kernel(self.slope, y)
        self.x, self.y, self.buf = x, y, buf
        return y

    def backward(self, dy):
        buf = self.buf
        dz = dy if self.grad_kernel is None else self.grad_kernel(dy, self.y, self.slope,
                                                                  buf["dz"])
        cupy.matmul(self.x.T, dz, out=self.dW)
        if self.layer.l2:  # read at every step, as the reference does
            _add_scaled(self.W.dtype.name)(self.W, 2.0 * self.layer.l2, self.dW)
        grads = self.layer.grads
        grads["W"] = self.dW
        if self.b is not None:
            cupy.sum(dz, axis=0, out=self.db)
            grads["b"] = self.db
        return _input_gradient(self.layer, self.W, buf, dz)


def _input_gradient(layer, W, buf, dz):
    """dx = dz W^T (n, in) into the batch's buffer ``buf["dx"]``, made on first use; None when
    ``layer`` needs no input gradient. Reference: ``Dense.backward``."""
    if not layer.input_grad:
        return None
    dx = buf["dx"]
    if dx is None:
        dx = buf["dx"] = cupy.empty((dz.shape[0], W.shape[0]), dz.dtype)
    cupy.matmul(dz, W.T, out=dx)
    return dx


# -- losses ---------------------------------------------------------------------------------------------
#: Butterfly reductions over the 32 lanes of a warp (every lane ends with the result), for
#: values of type ``{t}``; pasted into the cross-entropy kernels' sources as ``{warp}``.
_WARP_REDUCTIONS = r"""
// Butterfly reductions over the 32 lanes of a warp: every lane ends with the result.
__device__ __forceinline__ {t} warp_max({t} v) {{
    for (int offset = 16; offset > 0; offset >>= 1) {{
        {t} other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = other > v ? other : v;
    }}
    return v;
}}

__device__ __forceinline__ {t} warp_sum({t} v) {{
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}}
"""

_XENT_SOURCE = r"""
typedef {t} T;
{warp}
// One warp per row: lane l handles columns l, l + 32, l + 64, ... so each of the warp's loads
// reads 32 consecutive elements (coalesced). blockDim.x is a multiple of 32, so a warp's lanes
// share one row and leave together when it is past the last row.
extern "C" __global__ void bpgpu_xent_{variant}_{d}(const T* z, const {target_type}* y, T* grad,
                                               T* row_loss, const int n, const int c)
{{
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n) return;
    const T* zi = z + row * c;
    T* gi = grad + row * c;
    T m = zi[0];
    for (int j = lane; j < c; j += 32) {{ if (zi[j] > m) m = zi[j]; }}
    m = warp_max(m);
    T s = 0;
    for (int j = lane; j < c; j += 32) {{ T e = exp(zi[j] - m); gi[j] = e; s += e; }}
    s = warp_sum(s);
{body}
}}
"""

# Class ids: loss_i = log(s) - (z_iy - m); grad = (softmax - onehot) / N.
_XENT_IDS = r"""
    const long long t = y[row];
    if (lane == 0) row_loss[row] = log(s) - (zi[t] - m);
    for (int j = lane; j < c; j += 32) {
        T p = gi[j] / s;
        gi[j] = (j == t ? p - (T)1 : p) / (T)n;
    }
"""

# Probability rows: loss_i = t_sum log(s) - sum_j t_j (z_j - m); grad = (softmax t_sum - t) / N.
_XENT_ROWS = r"""
    const T* ti = y + row * c;
    T t_sum = 0, dot = 0;
    for (int j = lane; j < c; j += 32) { t_sum += ti[j]; dot += ti[j] * (zi[j] - m); }
    t_sum = warp_sum(t_sum);
    dot = warp_sum(dot);
    if (lane == 0) row_loss[row] = t_sum * log(s) - dot;
    for (int j = lane; j < c; j += 32) gi[j] = (gi[j] / s * t_sum - ti[j]) / (T)n;
"""

#: Rows per block of the cross-entropy kernel (one warp each).
_XENT_ROWS_PER_BLOCK = 4


@functools.lru_cache(maxsize=None)
def _xent_kernel(ids, dtype):
    d, t = _names(dtype)
    variant = "ids" if ids else "rows"
    source = _XENT_SOURCE.format(t=t, d=d, variant=variant, warp=_WARP_REDUCTIONS.format(t="T"),
                                 target_type="long long" if ids else "T",
                                 body=_XENT_IDS if ids else _XENT_ROWS)
    return cupy.RawKernel(source, f"bpgpu_xent_{variant}_{d}")


@functools.lru_cache(maxsize=None)
def _mean_kernel(dtype):
    """sum(x) / n as a 0-d array, in one reduction."""
    d, _ = _names(dtype)
    return cupy.ReductionKernel(f"{d} x, {d} n", f"{d} out", "x", "a + b", "out = a / n", "0",
                                f"bpgpu_mean_{d}")


class _SoftmaxCrossEntropy:
    """Reference: ``CrossEntropy.forward/backward`` (formulas in the kernel sources above)."""

    def __init__(self):
        self.buffers = {}
        self.grad = None

    @staticmethod
    def _make(key):
        (n, c), dtype = key
        return cupy.empty((n, c), dtype), cupy.empty(n, dtype)

    def forward(self, z, t):
        z = cupy.ascontiguousarray(z)
        t = cupy.ascontiguousarray(t)
        n, c = z.shape
        grad, rows = _cached(self.buffers, (z.shape, z.dtype), self._make)
        ids = t.ndim == 1
        if ids and t.dtype != cupy.int64:
            t = t.astype(cupy.int64)
        elif not ids and t.dtype != z.dtype:  # the raw kernel reads t as z's type
            t = t.astype(z.dtype)
        if n:  # a grid of zero blocks is a launch error; the mean of nothing stays NaN
            blocks = -(-n // _XENT_ROWS_PER_BLOCK)
            _xent_kernel(ids, z.dtype.name)((blocks,), (32 * _XENT_ROWS_PER_BLOCK,),
                                            (z, t, grad, rows, np.int32(n), np.int32(c)))
        self.grad = grad
        return _mean_kernel(z.dtype.name)(rows, float(n))


@functools.lru_cache(maxsize=None)
def _mse_kernels(dtype):
    d, _ = _names(dtype)
    grad = cupy.ElementwiseKernel(f"{d} p, {d} t, {d} scale", f"{d} g", "g = (p - t) * scale",
                                  f"bpgpu_mse_grad_{d}")
    loss = cupy.ReductionKernel(f"{d} p, {d} t, {d} size", f"{d} out", "(p - t) * (p - t)",
                                "a + b", "out = a / size", "0", f"bpgpu_mse_{d}")
    return grad, loss


class _MeanSquaredError:
    """Reference: ``MSE.forward/backward``: loss = sum((p - t)^2) / size, grad = (p - t) (2 / size)."""

    def __init__(self):
        self.buffers = {}
        self.grad = None

    def forward(self, pred, t):
        grad = _cached(self.buffers, (pred.shape, pred.dtype),
                       lambda key: cupy.empty(key[0], key[1]))
        size = grad.size
        grad_kernel, loss_kernel = _mse_kernels(pred.dtype.name)
        grad_kernel(pred, t, 2.0 / size, grad)
        self.grad = grad
        return loss_kernel(pred, t, float(size))


# -- mixed precision (float16 data, float32 arithmetic; bpgpu.precision's policy) ------------------
@functools.lru_cache(maxsize=None)
def _cast_kernel(src, dst):
    """dst = src between float32 and float16 (to float16: round to nearest even, as
    ``astype``); the compute copies of the master weights, the batch, the output."""
    return cupy.ElementwiseKernel(f"{src} x", f"{dst} y", "y = float(x)",
                                  f"bpgpu_cast_{src}_to_{dst}")


_UNSCALE_SOURCE = r"""
#include <cuda_fp16.h>

// The scaled gradient of each flat slot lives in ONE of two staging buffers (float16 where a
// GEMM wrote it, float32 where a float32 sum did); the other holds zero there, so their sum is
// the scaled gradient exactly. out = that * inv_scale (1/S, a power of two: exact unless it
// underflows); *found = 1 when any result is inf or NaN (written only then: reset it before).
extern "C" __global__ void bpgpu_unscale_check(const __half* g16, const float* g32, float* out,
                                               const float inv_scale, int* found,
                                               const long long n)
{
    bool bad = false;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float v = (__half2float(g16[i]) + g32[i]) * inv_scale;
        out[i] = v;
        if (!isfinite(v)) bad = true;
    }
    if (bad) *found = 1;
}
"""


@functools.lru_cache(maxsize=None)
def _unscale_kernel():
    return cupy.RawKernel(_UNSCALE_SOURCE, "bpgpu_unscale_check")


#: Threads per block and the most blocks of the unscale kernel (a grid-stride loop).
_UNSCALE_THREADS, _UNSCALE_BLOCKS = 256, 1024


def unscale_check(g16, g32, out, inv_scale, found):
    """out = (g16 + g32) / S and found[0] = 1 if any is inf/NaN (module docstring)."""
    cupy.copyto(found, 0)
    n = out.shape[0]
    blocks = max(1, min(_UNSCALE_BLOCKS, -(-n // _UNSCALE_THREADS)))
    _unscale_kernel()((blocks,), (_UNSCALE_THREADS,),
                      (g16, g32, out, np.float32(inv_scale), found, np.int64(n)))


_XENT_HALF_SOURCE = r"""
#include <cuda_fp16.h>
{warp}
// The float32 kernel's warp-per-row scheme on float16 logits: each logit is read into float
// (exactly the reference's cast of the output to float32) and everything runs in float; the
// exponentials are recomputed in the second pass rather than parked in the float16 gradient.
// The gradient row leaves multiplied by the loss scale and rounded once to float16.
extern "C" __global__ void bpgpu_xent_{variant}_float16(const __half* z, const {target_type}* y,
                                                       __half* grad, float* row_loss,
                                                       const float loss_scale, const int n,
                                                       const int c)
{{
    const long long row = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= n) return;
    const __half* zi = z + row * c;
    __half* gi = grad + row * c;
    float m = __half2float(zi[0]);
    for (int j = lane; j < c; j += 32) {{ float v = __half2float(zi[j]); if (v > m) m = v; }}
    m = warp_max(m);
    float s = 0;
    for (int j = lane; j < c; j += 32) s += exp(__half2float(zi[j]) - m);
    s = warp_sum(s);
{body}
}}
"""

_XENT_HALF_IDS = r"""
    const long long t = y[row];
    if (lane == 0) row_loss[row] = log(s) - (__half2float(zi[t]) - m);
    for (int j = lane; j < c; j += 32) {
        float p = exp(__half2float(zi[j]) - m) / s;
        gi[j] = __float2half((j == t ? p - 1.0f : p) / (float)n * loss_scale);
    }
"""

_XENT_HALF_ROWS = r"""
    const float* ti = y + row * c;
    float t_sum = 0, dot = 0;
    for (int j = lane; j < c; j += 32) { t_sum += ti[j]; dot += ti[j] * (__half2float(zi[j]) - m); }
    t_sum = warp_sum(t_sum);
    dot = warp_sum(dot);
    if (lane == 0) row_loss[row] = t_sum * log(s) - dot;
    for (int j = lane; j < c; j += 32) {
        float p = exp(__half2float(zi[j]) - m) / s;
        gi[j] = __float2half((p * t_sum - ti[j]) / (float)n * loss_scale);
    }
"""


@functools.lru_cache(maxsize=None)
def _xent_half_kernel(ids):
    variant = "ids" if ids else "rows"
    source = _XENT_HALF_SOURCE.format(variant=variant, warp=_WARP_REDUCTIONS.format(t="float"),
                                      target_type="long long" if ids else "float",
                                      body=_XENT_HALF_IDS if ids else _XENT_HALF_ROWS)
    return cupy.RawKernel(source, f"bpgpu_xent_{variant}_float16")


class _HalfSoftmaxCrossEntropy:
    """Softmax cross-entropy on float16 logits: the loss (float32, 0-d) as the reference's
    float32 loss of the float32 output, and in ``grad`` (float16) dL/dz times ``scale``."""

    def __init__(self):
        self.buffers = {}
        self.grad = None
        self.scale = 1.0

    @staticmethod
    def _make(key):
        n, c = key
        return cupy.empty((n, c), cupy.float16), cupy.empty(n, cupy.float32)

    def forward(self, z, t):
        n, c = z.shape
        grad, rows = _cached(self.buffers, (n, c), self._make)
        t = cupy.ascontiguousarray(t)
        ids = t.ndim == 1
        if ids and t.dtype != cupy.int64:
            t = t.astype(cupy.int64)
        elif not ids and t.dtype != cupy.float32:
            t = t.astype(cupy.float32)
        if n:
            blocks = -(-n // _XENT_ROWS_PER_BLOCK)
            _xent_half_kernel(ids)((blocks,), (32 * _XENT_ROWS_PER_BLOCK,),
                                   (z, t, grad, rows, np.float32(self.scale), np.int32(n),
                                    np.int32(c)))
        self.grad = grad
        return _mean_kernel("float32")(rows, float(n))


@functools.lru_cache(maxsize=None)
def _mse_half_kernels():
    """MSE on float16 predictions p and float32 targets t, in float: the gradient
    ((p - t) (2 / size)) S rounded to float16, the loss sum((p - t)^2) / size in float32."""
    grad = cupy.ElementwiseKernel("float16 p, float32 t, float32 scale, float32 loss_scale",
                                  "float16 g", "g = (float(p) - t) * scale * loss_scale",
                                  "bpgpu_mse_grad_float16")
    loss = cupy.ReductionKernel("float16 p, float32 t, float32 size", "float32 out",
                                "(float(p) - t) * (float(p) - t)", "a + b", "out = a / size",
                                "0", "bpgpu_mse_float16")
    return grad, loss


class _HalfMeanSquaredError:
    """MSE on float16 predictions (see :func:`_mse_half_kernels`)."""

    def __init__(self):
        self.buffers = {}
        self.grad = None
        self.scale = 1.0

    def forward(self, pred, t):
        grad = _cached(self.buffers, pred.shape, lambda shape: cupy.empty(shape, cupy.float16))
        if t.dtype != cupy.float32:
            t = t.astype(cupy.float32)
        size = grad.size
        grad_kernel, loss_kernel = _mse_half_kernels()
        grad_kernel(pred, t, 2.0 / size, self.scale, grad)
        self.grad = grad
        return loss_kernel(pred, t, float(size))


class _HalfDense(_Dense):
    """``Dense`` and its activation on float16 data: W and b are the float16 compute copies,
    dW (float16) and db (float32, summed in float32) the scaled gradients; ``scale`` is the
    loss scale S (the l2 term of dW is 2 l2 S W, as in the reference)."""

    def __init__(self, layer, act, W, dW, b, db):
        super().__init__(layer, act, W, dW, b, db)
        self.scale = 1.0

    def backward(self, dy):
        buf = self.buf
        dz = dy if self.grad_kernel is None else self.grad_kernel(dy, self.y, self.slope,
                                                                  buf["dz"])
        cupy.matmul(self.x.T, dz, out=self.dW)
        if self.layer.l2:
            _add_scaled("float16")(self.W, 2.0 * self.layer.l2 * self.scale, self.dW)
        if self.b is not None:
            cupy.sum(dz, axis=0, dtype=cupy.float32, out=self.db)
        return _input_gradient(self.layer, self.W, buf, dz)


# -- update rules: one kernel over the flat buffer ------------------------------------------------------
def _clip_prologue(clip_value, clip_norm):
    """Code turning the raw gradient g into gg, the clipped gradient the rule uses."""
    code = "REAL gg = g;\n"
    if clip_value:
        code += "gg = gg < -clip_value ? -clip_value : (gg > clip_value ? clip_value : gg);\n"
    if clip_norm:
        code += "gg = gg * norm_scale;\n"
    return code


def _clip_params(d, clip_value, clip_norm):
    params = []
    if clip_value:
        params.append(f"{d} clip_value")
    if clip_norm:
        params.append(f"{d} norm_scale")
    return params


@functools.lru_cache(maxsize=None)
def _norm_scale_kernel(clip_value, dtype):
    """min(max_norm / (||clip(g)|| + 1e-6), 1) as a 0-d array (reference: Optimizer.clip). NaN
    propagates as in ``xp.minimum`` (CUDA's ``min`` is ``fmin``, which would drop it)."""
    d, t = _names(dtype)
    clipped = ("(g < -clip_value ? -clip_value : (g > clip_value ? clip_value : g))"
               if clip_value else "g")
    params = f"{d} g, {d} clip_value, {d} max_norm"
    scale = f"(max_norm / (sqrt(a) + ({t})1e-6))"
    return cupy.ReductionKernel(
        params, f"{d} out", f"{clipped} * {clipped}", "a + b",
        f"out = !({scale} >= ({t})1) ? {scale} : ({t})1", "0",
        f"bpgpu_clip_scale_{int(clip_value)}_{d}")


@functools.lru_cache(maxsize=None)
def _sgd_kernel(dtype, clip_value, clip_norm, weight_decay, momentum, nesterov):
    d, t = _names(dtype)
    params = [f"{d} g"] + _clip_params(d, clip_value, clip_norm) + [
        f"{d} lr", f"{d} weight_decay", f"{d} momentum", f"{d} one_minus_dampening",
        f"{d} first_step"]
    outs = [f"{d} p"] + ([f"{d} momentum_buffer"] if momentum else [])
    body = _clip_prologue(clip_value, clip_norm)
    if weight_decay:
        body += "gg = gg + weight_decay * p;\n"
    if momentum:
        body += ("REAL b = first_step != (REAL)0 ? gg\n"
                 "    : momentum * momentum_buffer + one_minus_dampening * gg;\n"
                 "momentum_buffer = b;\n")
        body += "gg = gg + momentum * b;\n" if nesterov else "gg = b;\n"
    body += "p = p - lr * gg;"
    flags = f"{int(clip_value)}{int(clip_norm)}{int(weight_decay)}{int(momentum)}{int(nesterov)}"
    return cupy.ElementwiseKernel(", ".join(params), ", ".join(outs), body.replace("REAL", t),
                                  f"bpgpu_sgd_{flags}_{d}")


@functools.lru_cache(maxsize=None)
def _rmsprop_kernel(dtype, clip_value, clip_norm, weight_decay, momentum, centered):
    d, t = _names(dtype)
    params = [f"{d} g"] + _clip_params(d, clip_value, clip_norm) + [
        f"{d} lr", f"{d} weight_decay", f"{d} alpha", f"{d} one_minus_alpha", f"{d} eps",
        f"{d} momentum"]
    outs = [f"{d} p", f"{d} square_avg"] + ([f"{d} grad_avg"] if centered else []) \
        + ([f"{d} momentum_buffer"] if momentum else [])
    body = _clip_prologue(clip_value, clip_norm)
    if weight_decay:
        body += "gg = gg + weight_decay * p;\n"
    body += "REAL v = alpha * square_avg + one_minus_alpha * (gg * gg);\nsquare_avg = v;\n"
    if centered:
        body += ("REAL mean = alpha * grad_avg + one_minus_alpha * gg;\ngrad_avg = mean;\n"
                 "REAL denom = sqrt(v - mean * mean) + eps;\n")
    else:
        body += "REAL denom = sqrt(v) + eps;\n"
    if momentum:
        body += ("REAL b = momentum * momentum_buffer + gg / denom;\nmomentum_buffer = b;\n"
                 "p = p - lr * b;")
    else:
        body += "p = p - lr * (gg / denom);"
    flags = f"{int(clip_value)}{int(clip_norm)}{int(weight_decay)}{int(momentum)}{int(centered)}"
    return cupy.ElementwiseKernel(", ".join(params), ", ".join(outs), body.replace("REAL", t),
                                  f"bpgpu_rmsprop_{flags}_{d}")


@functools.lru_cache(maxsize=None)
def _adam_kernel(dtype, clip_value, clip_norm, decay_mode):
    """decay_mode: 0 none, 1 L2 (Adam), 2 decoupled (AdamW).

    p <- p * decay_factor (AdamW), m <- beta1 m + (1 - beta1) g, v <- beta2 v + (1 - beta2) g^2,
    p <- p - step_size * m / (sqrt(v) / bias_correction2_sqrt + eps), with
    step_size = lr / (1 - beta1^t) and bias_correction2_sqrt = sqrt(1 - beta2^t)."""
    d, t = _names(dtype)
    params = [f"{d} g"] + _clip_params(d, clip_value, clip_norm) + [
        f"{d} weight_decay", f"{d} decay_factor", f"{d} beta1", f"{d} one_minus_beta1",
        f"{d} beta2", f"{d} one_minus_beta2", f"{d} bias_correction2_sqrt", f"{d} step_size",
        f"{d} eps"]
    outs = [f"{d} p", f"{d} exp_avg", f"{d} exp_avg_sq"]
    body = _clip_prologue(clip_value, clip_norm) + "REAL pp = p;\n"
    if decay_mode == 1:
        body += "gg = gg + weight_decay * pp;\n"
    elif decay_mode == 2:
        body += "pp = pp * decay_factor;\n"
    body += ("REAL m = beta1 * exp_avg + one_minus_beta1 * gg;\n"
             "REAL v = beta2 * exp_avg_sq + one_minus_beta2 * (gg * gg);\n"
             "exp_avg = m;\nexp_avg_sq = v;\n"
             "p = pp - step_size * (m / (sqrt(v) / bias_correction2_sqrt + eps));")
    flags = f"{int(clip_value)}{int(clip_norm)}{decay_mode}"
    return cupy.ElementwiseKernel(", ".join(params), ", ".join(outs), body.replace("REAL", t),
                                  f"bpgpu_adam_{flags}_{d}")


class DeviceScalars:
    """The per-step numbers of the update kernels (learning rate, bias corrections...) read from
    a small device buffer instead of being passed by value, so a captured CUDA graph replays
    with each step's values (:mod:`bpgpu.kernels._cuda_graphs`).

    While one is active (:func:`_scalars_from`), every update kernel launch takes its k-th
    scalar argument from ``device[k]`` (a 0-d view) and records the value in ``host[k]``.
    ``launch=False`` only records (a replay's bookkeeping); ``upload=True`` copies each value
    to the device before the launch that reads it (an uncaptured step in this mode)."""

    CAPACITY = 32

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.device = cupy.zeros(self.CAPACITY, self.dtype)
        self.host = np.zeros(self.CAPACITY, self.dtype)
        self.views = [self.device[k:k + 1].reshape(()) for k in range(self.CAPACITY)]
        self.used = 0
        self.launch = True
        self.upload = False

    def view(self, value):
        """The device slot holding the next scalar ``value``."""
        k = self.used
        if k >= self.CAPACITY:
            raise RuntimeError(f"more than {self.CAPACITY} per-step scalars in one update")
        self.host[k] = value
        self.used = k + 1
        return self.views[k]


_ACTIVE = threading.local()  # .scalars: the DeviceScalars in use by this thread, or None


@contextlib.contextmanager
def _scalars_from(slots, launch=True, upload=False):
    """Within the block, update kernels take their scalars from ``slots`` (DeviceScalars)."""
    slots.used, slots.launch, slots.upload = 0, launch, upload
    _ACTIVE.scalars = slots
    try:
        yield slots
    finally:
        _ACTIVE.scalars = None


def _launch(kernel, *args):
    """Run an update-path kernel (see :class:`DeviceScalars`); its result, or None when only
    recording."""
    slots = getattr(_ACTIVE, "scalars", None)
    if slots is None:
        return kernel(*args)
    routed = [slots.view(a) if isinstance(a, (int, float, np.generic)) else a for a in args]
    if not slots.launch:
        return None
    if slots.upload:
        slots.device.set(slots.host)
    return kernel(*routed)


def _clip_args(opt, g):
    """(flags, extra kernel arguments) for the optimizer's clipping settings."""
    clip_value = opt.clip_value is not None
    clip_norm = opt.clip_norm is not None
    args = []
    if clip_value:
        args.append(opt.clip_value)
    if clip_norm:
        # clip_value and clip_norm are settings, not per-step numbers: passed by value even in
        # a captured step (a change of settings drops the graph)
        scale = _norm_scale_kernel(clip_value, g.dtype.name)(
            g, opt.clip_value if clip_value else 0.0, opt.clip_norm)
        args.append(scale)
    return clip_value, clip_norm, args


def _sgd(opt, lr, p, g, state, work):
    cv, cn, clip = _clip_args(opt, g)
    kernel = _sgd_kernel(p.dtype.name, cv, cn, bool(opt.weight_decay), bool(opt.momentum),
                         opt.nesterov)
    outs = (p, state["momentum_buffer"]) if opt.momentum else (p,)
    _launch(kernel, g, *clip, lr, opt.weight_decay, opt.momentum, 1.0 - opt.dampening,
            float(opt.step_count == 1), *outs)


def _rmsprop(opt, lr, p, g, state, work):
    cv, cn, clip = _clip_args(opt, g)
    kernel = _rmsprop_kernel(p.dtype.name, cv, cn, bool(opt.weight_decay), bool(opt.momentum),
                             opt.centered)
    outs = [p, state["square_avg"]]
    if opt.centered:
        outs.append(state["grad_avg"])
    if opt.momentum:
        outs.append(state["momentum_buffer"])
    _launch(kernel, g, *clip, lr, opt.weight_decay, opt.alpha, 1.0 - opt.alpha, opt.eps,
            opt.momentum, *outs)


def _adam(opt, lr, p, g, state, work):
    cv, cn, clip = _clip_args(opt, g)
    beta1, beta2 = opt.betas
    t = opt.step_count
    mode = 0 if not opt.weight_decay else (2 if opt.decoupled else 1)
    kernel = _adam_kernel(p.dtype.name, cv, cn, mode)
    _launch(kernel, g, *clip, opt.weight_decay, 1.0 - lr * opt.weight_decay, beta1, 1.0 - beta1,
            beta2, 1.0 - beta2, math.sqrt(1.0 - beta2 ** t), lr / (1.0 - beta1 ** t), opt.eps,
            p, state["exp_avg"], state["exp_avg_sq"])


_KERNEL_RULES = {"sgd": _sgd, "rmsprop": _rmsprop, "adam": _adam}


class CuPyKernels(KernelSet):
    """The CuPy kernel set used by :class:`~bpgpu.kernels._plan.TrainStep`."""

    name = "cupy"
    activations = ("relu", "leaky_relu", "tanh", "sigmoid")
    features = frozenset({"mixed precision"})
    loss_ops = {CrossEntropy: _SoftmaxCrossEntropy, MSE: _MeanSquaredError}
    #: float16 versions for mixed precision (:mod:`bpgpu.kernels._mixed_step`).
    half_loss_ops = {CrossEntropy: _HalfSoftmaxCrossEntropy, MSE: _HalfMeanSquaredError}
    unscale_check = staticmethod(unscale_check)

    #: The module the kernels compute with (for :mod:`bpgpu.kernels._cuda_graphs`).
    cupy = cupy
    scalars_from = staticmethod(_scalars_from)

    def __init__(self, backend):
        self.backend = backend

    @staticmethod
    def device_scalars(dtype):
        """A :class:`DeviceScalars` buffer for the update kernels of a captured step."""
        return DeviceScalars(dtype)

    @staticmethod
    def pinned_like(array):
        """A host array in page-locked memory, shaped like ``array`` (asynchronous uploads)."""
        memory = cupy.cuda.alloc_pinned_memory(array.nbytes)
        return np.frombuffer(memory, array.dtype, array.size).reshape(array.shape)

    @staticmethod
    def zeros(n, dtype):
        """A zeroed 1-D device buffer (CuPy's pool aligns allocations to 512 bytes)."""
        return cupy.zeros(n, dtype=dtype)

    @staticmethod
    def copy(dst, src):
        cupy.copyto(dst, src)

    @staticmethod
    def dense_op(layer, act, W, dW, b, db, joint, primary):
        return _Dense(layer, act, W, dW, b, db)

    @staticmethod
    def half_dense_op(layer, act, W, dW, b, db):
        """The float16 operation of ``Dense`` ``layer`` (+ ``act``) in a mixed-precision step."""
        return _HalfDense(layer, act, W, dW, b, db)

    @staticmethod
    def cast(src, dst):
        """dst = src, float32 <-> float16 (rounding to nearest even)."""
        _cast_kernel(src.dtype.name, dst.dtype.name)(src, dst)

    @staticmethod
    def link(ops, loss_op):
        """Nothing to chain: each fused kernel already makes one pass."""

    @staticmethod
    def update_rule(optimizer):
        """The fused update for ``optimizer``, or None (same support rules as NumPy's)."""
        name = flat_rule_name(optimizer)
        return None if name is None else _KERNEL_RULES[name]

    @staticmethod
    def clip(optimizer, g, work):
        """Clipping happens inside the update kernels; the raw flat gradient goes in."""
        return g
