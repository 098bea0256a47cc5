"""The CuPy kernel set on the CPU: each kernel's real CUDA source, compiled with g++ by the
emulation in tests/cuda_emu, run through bpgpu's own call sites and compared with the reference
path. An emulation, not a GPU: it checks the kernels' arithmetic, argument order and types and
the thread/warp logic, not launch limits, the memory model, races or speed (docs/guide/gpu.md).

The fast-versus-reference tests of test_kernels.py run here again with the emulated backend;
the tests below add every update-kernel flag combination, every activation with and without a
bias, wide cross-entropy rows, and show that the comparison catches a broken kernel.
"""

import inspect

import numpy as np
import pytest
import test_kernels
from cuda_emu import EmulationError, cuda
from cuda_emu.backend import EmulatedCuPy, EmulatedCuPyBackend

import bpgpu
from bpgpu.kernels import train_step_for
from bpgpu.layers import Dense, LeakyReLU, ReLU, Sigmoid, Tanh
from bpgpu.losses import CrossEntropy
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop

OWN_BACKEND_FIXTURE = True  # conftest: ``backend`` below is the emulated CuPy backend


@pytest.fixture(scope="module")
def emulated():
    """bpgpu's CuPy modules on the fake ``cupy``, with every kernel variant compiled up front
    (one g++ call; cached by source hash across runs)."""
    cuda.reset()
    emu = EmulatedCuPy()
    assert emu.build_all() > 100
    return emu


@pytest.fixture
def backend(emulated):
    cuda.reset()
    return EmulatedCuPyBackend(emulated)


# The fast-versus-reference tests of test_kernels.py, collected again here with ``backend`` the
# emulated CuPy backend (the one test about backends WITHOUT a fast path does not apply).
for _name, _test in vars(test_kernels).items():
    if _name.startswith("test_") and "backend" in inspect.signature(_test).parameters \
            and _name != "test_backends_without_fast_path_use_the_reference":
        globals()[_name] = _test

TOL = test_kernels.TOL


def _compare(backend, make_layers, make_opt, dtype, X, y, steps=3, loss="cross_entropy"):
    nets = [bpgpu.Network(make_layers(), loss=loss, optimizer=make_opt(), backend=backend,
                          dtype=dtype, seed=3, fast=fast) for fast in (True, False)]
    losses = [[net.train_step(X, y) for _ in range(steps)] for net in nets]
    assert train_step_for(nets[0]) is not None and train_step_for(nets[1]) is None
    np.testing.assert_allclose(losses[0], losses[1], **TOL[dtype])
    for a, b in zip(nets[0].get_weights(), nets[1].get_weights(), strict=True):
        np.testing.assert_allclose(a, b, **TOL[dtype])


def _small_mlp():
    return [Dense(4, 6), Tanh(), Dense(6, 3)]


_XY = (np.random.default_rng(0).standard_normal((10, 4)), np.arange(10) % 3)


def _flags(n):
    return [tuple(bool(k >> i & 1) for i in range(n)) for k in range(2 ** n)]


_SGD_FLAGS = [f for f in _flags(5) if f[3] or not f[4]]  # SGD refuses nesterov without momentum


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", _SGD_FLAGS, ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_sgd_kernel_variant_matches_reference(backend, flags, dtype):
    clip_value, clip_norm, decay, momentum, nesterov = flags

    def make():
        return SGD(0.05, momentum=0.9 if momentum else 0.0, dampening=0.0 if nesterov else 0.2,
                   weight_decay=0.01 if decay else 0.0, nesterov=nesterov,
                   clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("flags", _flags(5), ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_rmsprop_kernel_variant_matches_reference(backend, flags, dtype):
    clip_value, clip_norm, decay, momentum, centered = flags

    def make():
        return RMSprop(1e-2, momentum=0.5 if momentum else 0.0, centered=centered,
                       weight_decay=0.1 if decay else 0.0,
                       clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("decay", [None, "l2", "decoupled"])
@pytest.mark.parametrize("flags", _flags(2), ids=lambda f: "".join(str(int(b)) for b in f))
def test_every_adam_kernel_variant_matches_reference(backend, flags, decay, dtype):
    clip_value, clip_norm = flags
    kind = AdamW if decay == "decoupled" else Adam

    def make():
        return kind(1e-2, weight_decay=0.1 if decay else 0.0,
                    clip_value=0.05 if clip_value else None, clip_norm=0.3 if clip_norm else None)
    _compare(backend, _small_mlp, make, dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("act", [None, ReLU, Tanh, Sigmoid, lambda: LeakyReLU(0.2)],
                         ids=["linear", "relu", "tanh", "sigmoid", "leaky"])
def test_every_activation_without_bias_matches_reference(backend, act, dtype):
    def make():
        layers = [Dense(4, 7, bias=False)] + ([act()] if act else []) + [Dense(7, 3, bias=False)]
        return layers
    _compare(backend, make, lambda: Adam(1e-2), dtype, *_XY)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [False, True], ids=["class_ids", "probability_rows"])
def test_cross_entropy_warp_kernel_on_wide_rows(backend, emulated, rows, dtype):
    """More classes than a warp has lanes (each lane loops), a row count that leaves the last
    block's warps idle, and values that make the row maximum matter."""
    rng = np.random.default_rng(4)
    n, c = 7, 77
    z = (rng.standard_normal((n, c)) * 30).astype(dtype)
    t = rng.dirichlet(np.ones(c), n).astype(dtype) if rows else rng.integers(0, c, n)
    op = emulated.fused._SoftmaxCrossEntropy()
    value = op.forward(z, t)
    ref = CrossEntropy().bind(bpgpu.get_backend("numpy"))
    expected = ref.forward(z, t)
    np.testing.assert_allclose(value, expected, **TOL[dtype])
    np.testing.assert_allclose(op.grad, ref.backward(), **TOL[dtype])


# -- the comparison bites: a wrong kernel is caught ---------------------------------------------------
def test_a_broken_kernel_fails_the_comparison(backend, emulated, monkeypatch):
    """The tanh gradient kernel built with 1 + y^2 instead of 1 - y^2 makes the fast path
    disagree with the reference: the emulated comparisons test the kernels' code."""
    fused = emulated.fused
    monkeypatch.setitem(fused._BACKWARD, "tanh", "dz = dy * (({t})1 + y * y);")
    fused._activation_grad.cache_clear()
    try:
        with pytest.raises(AssertionError):
            _compare(backend, _small_mlp, lambda: Adam(1e-2), "float64", *_XY)
    finally:
        monkeypatch.undo()
        fused._activation_grad.cache_clear()


def test_emulation_refuses_a_mismatched_argument(emulated):
    kernel = emulated.fused._add_scaled("float32")
    with pytest.raises(TypeError, match="dtype float64"):
        kernel(np.zeros(3), 1.0, np.zeros(3, np.float32))
    raw = emulated.fused._xent_kernel(True, "float32")
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="int64, the kernel declares int32"):
        raw((1,), (64,), (z, np.zeros(2, np.int64), z.copy(), np.zeros(2, np.float32), 2,
                          np.int32(3)))


def test_emulation_refuses_shuffles_it_does_not_model(emulated):
    """A shuffle after some lanes of the warp returned is undefined on a GPU: refused."""
    from cuda_emu.kernels import RawKernel

    source = r"""
    extern "C" __global__ void emu_test_half_warp(float* x, const int n) {
        if (threadIdx.x >= n) return;
        x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
    }
    """
    kernel = RawKernel(source, "emu_test_half_warp")
    x = np.arange(32, dtype=np.float32)
    kernel((1,), (32,), (x, np.int32(32)))
    np.testing.assert_array_equal(x, np.arange(32, dtype=np.float32).reshape(16, 2)[:, ::-1]
                                  .reshape(-1))
    with pytest.raises(EmulationError, match="exited"):
        kernel((1,), (32,), (x, np.int32(20)))


def test_emulation_refuses_an_array_read_in_post_map(emulated):
    """CuPy binds a reduction's array inputs only inside its element loop; post-map code that
    reads one does not compile (the NVRTC check found this in a CUDA-graph variant)."""
    kernel = emulated.fused._norm_scale_kernel(False, "float64")
    with pytest.raises(EmulationError, match="post_map_expr reads max_norm"):
        kernel(np.ones(4), 0.0, np.array(1.0))
    assert float(kernel(np.ones(4), 0.0, 1.0)) == pytest.approx(1.0 / (2.0 + 1e-6))


# -- mixed precision: the float16 kernels of the fast mixed step (bpgpu.kernels._mixed_step) ------
# Tolerances. The fused kernels compute in float32 what the reference computes op by op in
# float16, so each fused chain rounds to float16 once where the reference rounds after every
# operation: bias add, activation, 1 - y^2, the product with dy... Float16's unit roundoff is
# u = 2^-11 ~ 4.9e-4; a few extra roundings per layer, carried through three layers and their
# GEMMs, stay well within 20 u ~ 1e-2 of the tensor's largest gradient (measured: <= 4e-3 with
# Tanh, 0 with ReLU, where the chains round alike). Losses see the same output up to those
# roundings, scaled down by the softmax: rtol 2e-3 (measured <= 5e-5). SGD moves the weights by
# lr * g, so after 3 steps at lr 0.1 they differ by at most 3 * 0.1 * 1e-2 * max|g| << 1e-3.
MIXED_GRAD_RTOL = 1e-2
MIXED_LOSS_RTOL = 2e-3
MIXED_WEIGHT_ATOL = 1e-3

_MIXED_X = np.random.default_rng(5).standard_normal((24, 8)).astype(np.float32)
_MIXED_IDS = np.arange(24) % 3


def _mixed_pair(backend, act, loss="cross_entropy", scaler=None, l2=0.0, out=3, opt=None,
                bias=True):
    """A fast and a reference mixed-precision network with the same seed."""
    from bpgpu.precision import LossScaler, MixedPrecision

    def layers():
        a = [act()] if act else []
        b = [act()] if act else []
        return [Dense(8, 16, l2=l2, bias=bias), *a, Dense(16, 16, bias=bias), *b,
                Dense(16, out)]

    nets = []
    for fast in (True, False):
        policy = MixedPrecision("float16", LossScaler(**scaler) if scaler else "auto")
        nets.append(bpgpu.Network(layers(), loss=loss, optimizer=(opt or (lambda: SGD(0.1)))(),
                                  backend=backend, seed=2, fast=fast, precision=policy))
    assert nets[0].engine.fast and nets[0].engine.reason.startswith("fast: mixed float16")
    assert not nets[1].engine.fast
    return nets


def _grads(net):
    return [net.backend.to_numpy(layer.grads[key]).copy() for layer in net.layers
            for key in layer.params]


def _assert_mixed_steps_agree(nets, X, y, steps=3):
    for _ in range(steps):
        losses = [float(net.train_step(X, y)) for net in nets]
        np.testing.assert_allclose(losses[0], losses[1], rtol=MIXED_LOSS_RTOL)
        for g_fast, g_ref in zip(_grads(nets[0]), _grads(nets[1]), strict=True):
            assert g_fast.dtype == g_ref.dtype == np.float32
            scale = float(np.max(np.abs(g_ref))) or 1.0
            np.testing.assert_allclose(g_fast, g_ref, rtol=0, atol=MIXED_GRAD_RTOL * scale)
        scalers = [net.precision.scaler.state_dict() for net in nets]
        assert scalers[0] == scalers[1]
    for w_fast, w_ref in zip(nets[0].get_weights(), nets[1].get_weights(), strict=True):
        assert w_fast.dtype == np.float32
        np.testing.assert_allclose(w_fast, w_ref, rtol=0, atol=MIXED_WEIGHT_ATOL)


@pytest.mark.parametrize("act", [None, ReLU, Tanh, Sigmoid, lambda: LeakyReLU(0.2)],
                         ids=["linear", "relu", "tanh", "sigmoid", "leaky"])
def test_mixed_step_matches_reference_mixed_step(backend, act):
    """float16 Dense kernels (bias + activation, activation gradient), float16 softmax
    cross-entropy, float32 bias sums, the unscale-and-check kernel, the float32 update."""
    _assert_mixed_steps_agree(_mixed_pair(backend, act), _MIXED_X, _MIXED_IDS)


@pytest.mark.parametrize("act", [None, Tanh, Sigmoid], ids=["linear", "tanh", "sigmoid"])
def test_mixed_step_without_bias_matches_reference(backend, act):
    """The activation kernels without a bias operand (and a plain GEMM for the linear case)."""
    _assert_mixed_steps_agree(_mixed_pair(backend, act, bias=False), _MIXED_X, _MIXED_IDS)


@pytest.mark.parametrize("target", ["probability_rows", "mse"])
def test_mixed_step_other_losses_match_reference(backend, target):
    rng = np.random.default_rng(6)
    if target == "mse":
        nets = _mixed_pair(backend, Tanh, loss="mse", out=2)
        y = rng.standard_normal((24, 2)).astype(np.float32)
    else:
        nets = _mixed_pair(backend, ReLU)
        y = rng.dirichlet(np.ones(3), 24).astype(np.float32)
    _assert_mixed_steps_agree(nets, _MIXED_X, y)


def test_mixed_step_with_l2_and_adam_matches_reference(backend):
    """The l2 term 2 l2 S W of the scaled float16 gradient; Adam's update on the unscaled
    gradient (one step: Adam divides by sqrt(v), which turns float16-level differences of
    near-zero gradients into lr-sized ones later on)."""
    nets = _mixed_pair(backend, Tanh, l2=1e-2, opt=lambda: Adam(1e-3))
    _assert_mixed_steps_agree(nets, _MIXED_X, _MIXED_IDS, steps=1)


def test_mixed_step_skips_the_same_steps_as_reference(backend):
    """A loss scale far too large: dL/dout * S overflows float16 (inf) until the scale has
    halved enough; then it grows every 2 good steps and overflows again. The fast step must
    skip exactly the reference's steps, leave the weights alone on those, and move the scale
    alike."""
    nets = _mixed_pair(backend, Tanh, scaler={"init_scale": 2.0 ** 24, "growth_interval": 2})
    history = [[], []]
    for _ in range(12):
        before = [net.get_weights() for net in nets]
        for k, net in enumerate(nets):
            net.train_step(_MIXED_X, _MIXED_IDS)
            scaler = net.precision.scaler
            history[k].append((scaler.scale, scaler.skipped_steps))
            if history[k][-1][1] > (history[k][-2][1] if len(history[k]) > 1 else 0):
                for w_old, w_new in zip(before[k], net.get_weights(), strict=True):
                    np.testing.assert_array_equal(w_old, w_new)  # skipped: untouched
    assert history[0] == history[1]
    skipped = history[1][-1][1]
    assert 3 <= skipped < 12  # the case really skips, and really trains in between
    for w_fast, w_ref in zip(nets[0].get_weights(), nets[1].get_weights(), strict=True):
        np.testing.assert_allclose(w_fast, w_ref, rtol=0, atol=MIXED_WEIGHT_ATOL)


def _scale_history(net, steps):
    """``(scale, skipped steps)`` after each of ``steps`` train steps on the mixed test batch."""
    out = []
    for _ in range(steps):
        net.train_step(_MIXED_X, _MIXED_IDS)
        out.append((net.precision.scaler.scale, net.precision.scaler.skipped_steps))
    return out


def test_mixed_step_honours_the_data_parallel_batch_fraction(backend):
    """In a data-parallel fit the policy's ``batch_fraction`` n_r / G multiplies the loss scale
    of the backward pass (bpgpu.distributed). The fast step must use it as the reference does:
    the same skipped steps and scale sequence, and ones that differ from fraction 1 (so the
    fraction is really applied), with the same unscaled gradients."""
    scaler = {"init_scale": 2.0 ** 24, "growth_interval": 2}
    nets = _mixed_pair(backend, Tanh, scaler=scaler)
    for net in nets:
        net.precision.batch_fraction = 1.0 / 64
    histories = [_scale_history(net, 8) for net in nets]
    assert histories[0] == histories[1]
    plain = _scale_history(_mixed_pair(backend, Tanh, scaler=scaler)[1], 8)
    assert plain != histories[1]
    for net in nets:
        net.train_step(_MIXED_X, _MIXED_IDS)
    for g_fast, g_ref in zip(_grads(nets[0]), _grads(nets[1]), strict=True):
        scale = float(np.max(np.abs(g_ref))) or 1.0
        np.testing.assert_allclose(g_fast, g_ref, rtol=0, atol=MIXED_GRAD_RTOL * scale)


def test_mixed_forward_and_evaluate_match_reference(backend):
    nets = _mixed_pair(backend, Sigmoid)
    outs = [np.array(net.predict(_MIXED_X)) for net in nets]
    assert outs[0].dtype == np.float32
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=2e-3)
    losses = [net.evaluate(_MIXED_X, _MIXED_IDS)["loss"] for net in nets]
    np.testing.assert_allclose(losses[0], losses[1], rtol=MIXED_LOSS_RTOL)


def test_mixed_step_reads_one_flag_instead_of_scanning(backend, monkeypatch):
    """The policy's hook takes the unscale kernel's flag; no isfinite scan of the gradient."""
    net = _mixed_pair(backend, ReLU)[0]
    calls = []
    monkeypatch.setattr(net.precision, "allow_update",
                        lambda grads: calls.append(grads) or True)
    net.train_step(_MIXED_X, _MIXED_IDS)
    assert calls == [] and net.precision.scaler.growth_tracker == 1


def test_mixed_precision_reference_reasons_on_emulated_cupy(backend):
    from bpgpu.layers import Dropout

    net = bpgpu.Network([Dense(8, 4), Dropout(0.5), Dense(4, 3)], loss="cross_entropy",
                        backend=backend, seed=0, precision="mixed_float16")
    assert net.engine.reason == ("reference: mixed precision runs fast only on float16 kernels, "
                                 "and Dropout has no float16 kernel (only Dense + activation)")
    net = bpgpu.Network([Dense(8, 3)], loss="bce_with_logits", backend=backend, seed=0,
                        precision="mixed_float16")
    assert "BinaryCrossEntropy has no float16 loss kernel" in net.engine.reason


@pytest.mark.parametrize("broken", ["tanh_grad", "unscale_flag"])
def test_a_broken_float16_kernel_fails_the_mixed_comparison(backend, emulated, monkeypatch,
                                                             broken):
    """(1) the float16 tanh gradient with 1 + y^2: the gradients disagree; (2) an unscale
    kernel that never raises its flag: the overflowing steps are not skipped."""
    fused = emulated.fused
    if broken == "tanh_grad":
        monkeypatch.setitem(fused._BACKWARD, "tanh", "dz = dy * (({t})1 + y * y);")
        builder = fused._activation_grad
        check = test_mixed_step_matches_reference_mixed_step
    else:
        monkeypatch.setattr(fused, "_UNSCALE_SOURCE",
                            fused._UNSCALE_SOURCE.replace("if (bad) *found = 1;", ""))
        builder = fused._unscale_kernel
        check = test_mixed_step_skips_the_same_steps_as_reference
    builder.cache_clear()
    try:
        with pytest.raises(AssertionError):
            if broken == "tanh_grad":
                check(backend, Tanh)
            else:
                check(backend)
    finally:
        monkeypatch.undo()
        builder.cache_clear()


def test_mixed_step_scans_the_gradient_when_a_hook_runs_first(backend):
    """A hook before the policy's (a distributed all-reduce) may change the gradient after the
    kernel checked it: the policy then scans the gradient it is given, as the reference does."""
    net = _mixed_pair(backend, ReLU)[0]

    def poison(flat, rows):
        flat[0] = float("inf")  # what an all-reduce with a rank whose gradient overflowed gives
    net.gradient_hooks.insert(0, poison)
    before = net.get_weights()
    net.train_step(_MIXED_X, _MIXED_IDS)
    assert net.precision.scaler.skipped_steps == 1
    for w_old, w_new in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(w_old, w_new)


def test_mixed_fit_with_metrics_matches_reference(backend):
    """``fit`` drives the fast mixed step (outputs for the metrics from the step itself): same
    history as the reference's, skipped steps and loss scale included."""
    nets = _mixed_pair(backend, Tanh, scaler={"init_scale": 2.0 ** 22, "growth_interval": 3})
    histories = [net.fit(_MIXED_X, _MIXED_IDS, epochs=3, batch_size=8, metrics=["accuracy"],
                         verbose=0, shuffle=False).history for net in nets]
    assert histories[0]["skipped_steps"] == histories[1]["skipped_steps"]
    assert sum(histories[1]["skipped_steps"]) >= 1
    assert histories[0]["loss_scale"] == histories[1]["loss_scale"]
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=MIXED_LOSS_RTOL)
    np.testing.assert_allclose(histories[0]["accuracy"], histories[1]["accuracy"], atol=1 / 24)


# -- the emulated float16 ---------------------------------------------------------------------------
def test_emulated_half_conversions_match_numpy_float16(emulated):
    """__float2half rounds to nearest even (ties, subnormals, overflow to inf at 65520, NaN)
    exactly as NumPy's astype(float16); __half2float is exact. The cast kernels use them."""
    rng = np.random.default_rng(7)
    ties = (np.arange(1, 200, dtype=np.float32) + 0.5) * np.float32(2.0 ** -10)  # halfway cases
    x = np.concatenate([rng.standard_normal(2000).astype(np.float32) * 10.0 ** rng.integers(
        -9, 6, 2000), ties, np.array([65504, 65519.99, 65520, -70000, 6e-8, 3e-8, 2.98e-8,
                                      np.inf, -np.inf, np.nan], np.float32)]).astype(np.float32)
    to_half, to_float = (emulated.fused._cast_kernel(*pair) for pair in
                         (("float32", "float16"), ("float16", "float32")))
    h = np.empty(x.shape, np.float16)
    to_half(x, h)
    with np.errstate(over="ignore"):  # NumPy warns where it rounds to inf
        expected = x.astype(np.float16)
    np.testing.assert_array_equal(h.view(np.uint16), expected.view(np.uint16))
    back = np.empty(x.shape, np.float32)
    to_float(h, back)
    np.testing.assert_array_equal(back, h.astype(np.float32))


def test_emulated_float16_refuses_what_it_does_not_model(emulated):
    """CuPy's float16 converts other types (double, int) through paths the emulation does not
    model: such kernels fail to compile here instead of running with a guess."""
    from cuda_emu.kernels import ElementwiseKernel

    kernel = ElementwiseKernel("float16 x", "float16 y", "y = x * 2.0", "emu_test_half_double")
    with pytest.raises(EmulationError, match="could not compile"):
        kernel(np.ones(3, np.float16), np.empty(3, np.float16))


@pytest.mark.parametrize("rows", [False, True], ids=["class_ids", "probability_rows"])
def test_half_cross_entropy_warp_kernel_on_wide_rows(emulated, rows):
    """The float16 softmax cross-entropy with more classes than a warp has lanes and an idle
    last warp: the loss is the float32 reference loss of the float16 logits read as float32;
    the gradient is the reference gradient times S, rounded to float16 (at most one float16
    unit in the last place apart: exp and log are the host's here, the GPU's on a GPU)."""
    rng = np.random.default_rng(8)
    n, c, scale = 7, 77, 2.0 ** 12
    z = (rng.standard_normal((n, c)) * 8).astype(np.float16)
    t = rng.dirichlet(np.ones(c), n).astype(np.float32) if rows else rng.integers(0, c, n)
    op = emulated.fused._HalfSoftmaxCrossEntropy()
    op.scale = scale
    value = op.forward(z, t)
    ref = CrossEntropy().bind(bpgpu.get_backend("numpy"))
    expected = ref.forward(z.astype(np.float32), t)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert op.grad.dtype == np.float16
    want = (ref.backward() * np.float32(scale)).astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(op.grad.astype(np.float32), want, rtol=2.0 ** -10, atol=2.0 ** -24)
