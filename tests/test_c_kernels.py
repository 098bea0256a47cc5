"""The compiled C update rules of the NumPy fast path (bpgpu.kernels._c_kernels).

Oracle: the NumPy passes of the same rules (bpgpu.kernels._numpy_fast), themselves compared with
the optimizers' reference rules and PyTorch elsewhere (tests/test_kernels.py,
tests/test_optimizers.py). The C rules repeat those passes' operations in the same order, so
every comparison here is bit for bit: parameters and every state buffer, float32 and float64,
with each weight decay, momentum, dampening, Nesterov, centering, each clip, partial gradients of
row shards, and buffer lengths around the kernels' 2048-element chunk.
"""

import functools
import os
import shutil
import stat

import numpy as np
import pytest

import bpgpu
from bpgpu.kernels import _c_kernels as c_kernels
from bpgpu.kernels import _numpy_fast as numpy_fast
from bpgpu.kernels import _numpy_update as numpy_update
from bpgpu.kernels import train_step_for
from bpgpu.kernels._update_rules import flat_rule_name
from bpgpu.layers import Dense, ReLU, Tanh
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop

from layer_helpers import flat_update_setup


@pytest.fixture
def c_library():
    """Skips where this machine has no C compiler; fails where one is here but the kernels could
    not be built or failed their check (a broken kernel must not pass as skips)."""
    if c_kernels.library() is None:
        why = c_kernels.support()
        if "no C compiler" in why:
            pytest.skip(f"the C kernels need a C compiler: {why}")
        pytest.fail(f"a C compiler is here, but the C kernels are {why}")


needs_c = pytest.mark.usefixtures("c_library")

OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "sgd_wd": lambda: SGD(0.1, weight_decay=0.01),
    "sgd_momentum_dampening_wd": lambda: SGD(0.05, momentum=0.9, dampening=0.2,
                                             weight_decay=0.01),
    "sgd_nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "sgd_clipnorm": lambda: SGD(0.1, clip_norm=0.5),
    "sgd_momentum_clipvalue": lambda: SGD(0.05, momentum=0.9, clip_value=0.3),
    "rmsprop": lambda: RMSprop(1e-2),
    "rmsprop_centered_momentum_wd": lambda: RMSprop(1e-2, momentum=0.5, centered=True,
                                                    weight_decay=0.1),
    "adam": lambda: Adam(1e-2),
    "adam_l2_clipnorm": lambda: Adam(1e-2, weight_decay=0.1, clip_norm=0.5),
    "adamw_clipvalue": lambda: AdamW(1e-2, weight_decay=0.05, clip_value=0.02),
    "adam_clip_both": lambda: Adam(1e-2, clip_value=0.02, clip_norm=0.5),
}


def _updates(make, rule_of, dtype, size, partial_count, steps=3):
    """``steps`` flat updates of one buffer of ``size`` parameters by the rule ``rule_of(name)``,
    each after ``partial_count`` partial gradients were handed to it (added into g first); the
    parameters, every state buffer and the summed gradient after them."""
    kernels = numpy_fast.NumPyKernels
    optimizer, params, work, rng = flat_update_setup(make, dtype, size)
    rule = rule_of(flat_rule_name(optimizer))
    for _ in range(steps):
        grads = kernels.zeros(size, dtype)
        grads[:] = rng.standard_normal(size)
        partials = [rng.standard_normal(size).astype(dtype) for _ in range(partial_count)]
        optimizer.step_count += 1
        state = {key: values[0] for key, values in optimizer.state.items()}
        if partials and (optimizer.clip_value is not None or optimizer.clip_norm is not None):
            for partial in partials:  # the plan sums before a clip (it reads the whole sum)
                np.add(grads, partial, out=grads)
            partials = []
        clipped = kernels.clip(optimizer, grads, work)
        rule(optimizer, optimizer.learning_rate(), params, clipped, state, work,
             partials=partials)
    return [params, grads] + [values[0] for _, values in sorted(optimizer.state.items())]


def _numpy_rule(name):
    return numpy_update.passes(name)


def _c_rule(name):
    rule = c_kernels.update_rule(name, _numpy_rule(name))
    assert isinstance(rule, c_kernels.CompiledRule)
    return rule


@needs_c
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("size", [1, 2047, 2048, 5000, 70_000])
def test_c_rule_is_bit_identical_to_numpy_passes(optimizer, dtype, size):
    """Sizes: one element, one chunk short of and exactly 2048, ragged chunks, and enough for
    the NumPy passes to run block by block (a single clip deferred into the blocks)."""
    expected = _updates(OPTIMIZERS[optimizer], _numpy_rule, dtype, size, 0)
    got = _updates(OPTIMIZERS[optimizer], _c_rule, dtype, size, 0)
    assert len(got) == len(expected) >= 2
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


@needs_c
@pytest.mark.parametrize("partial_count", [1, 3])
@pytest.mark.parametrize("optimizer", ["adam", "sgd_nesterov", "rmsprop_centered_momentum_wd",
                                       "adamw_clipvalue"])
def test_c_rule_adds_partial_gradients_like_numpy(optimizer, partial_count):
    """Row shards' partial gradients are added into g in the rule's own pass: g holds the same sum
    afterwards and the update equals the NumPy sum-then-update (with a clip the plan sums
    first, as _updates does)."""
    expected = _updates(OPTIMIZERS[optimizer], _numpy_rule, "float32", 4100, partial_count)
    got = _updates(OPTIMIZERS[optimizer], _c_rule, "float32", 4100, partial_count)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_c
def test_c_rule_keeps_nan_like_numpy():
    """A NaN gradient passes the clip by value and the rule as NaN, as NumPy's min/max do (a C
    fmax would drop it)."""
    def run(rule_of):
        optimizer = Adam(1e-2, clip_value=0.5)
        optimizer.step_count = 1
        p, g = np.ones(3, np.float32), np.array([np.nan, 2.0, -2.0], np.float32)
        state = {"exp_avg": np.zeros(3, np.float32), "exp_avg_sq": np.zeros(3, np.float32)}
        clipped = numpy_update.DeferredClip(g, 0.5, None)  # the C rule clips it in its pass
        rule_of("adam")(optimizer, 1e-2, p, clipped, state, lambda *a: np.empty(3, np.float32))
        return p
    got, expected = run(_c_rule), run(_numpy_rule)
    assert np.isnan(got[0]) and np.isnan(expected[0])
    np.testing.assert_array_equal(got, expected)


@needs_c
def test_other_dtypes_fall_back_to_numpy_passes():
    calls = []

    def fallback(*args, **kwargs):
        calls.append(args[2].dtype)
    rule = c_kernels.update_rule("sgd", fallback)
    optimizer = SGD(0.1)
    optimizer.step_count = 1
    p = np.ones(4, np.float16)
    rule(optimizer, 0.1, p, p, {}, None)
    assert calls == [np.dtype(np.float16)]


def _net(fast=True, l2=0.0, optimizer=None):
    return bpgpu.Network([Dense(6, 64, l2=l2), ReLU(), Dense(64, 64), Tanh(), Dense(64, 4)],
                         loss="cross_entropy", optimizer=optimizer or Adam(1e-2),
                         backend="numpy", dtype="float32", seed=3, fast=fast)


def _train(net, steps=5, n=256):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((n, 6)).astype(np.float32)
    y = rng.integers(0, 4, n)
    return [net.train_step(X, y) for _ in range(steps)]


@needs_c
@pytest.mark.parametrize("shards", ["1", "2", "3"])
@pytest.mark.parametrize("optimizer", ["adam_l2_clipnorm", "sgd_momentum_dampening_wd",
                                       "rmsprop_centered_momentum_wd", "adam"])
def test_training_with_c_rules_equals_numpy_passes(monkeypatch, shards, optimizer):
    """Whole fast steps, in one piece and in 2 or 3 row shards (each range job adding the other
    shards' partial gradients in its C pass): losses and weights equal bit for bit with the C
    kernels on and off."""
    monkeypatch.setenv("BPGPU_CPU_SHARDS", shards)
    results = []
    for switch in ("1", "0"):
        monkeypatch.setenv(c_kernels.ENV, switch)
        net = _net(l2=0.01, optimizer=OPTIMIZERS[optimizer]())
        assert ("update (C kernels)" in net.engine.reason) == (switch == "1"), net.engine.reason
        assert ("NumPy passes" in net.engine.reason) == (switch == "0"), net.engine.reason
        results.append((_train(net), net.get_weights()))
        assert len(train_step_for(net)._shards) == int(shards)
    (loss_c, weights_c), (loss_np, weights_np) = results
    assert loss_c == loss_np
    for a, b in zip(weights_c, weights_np, strict=True):
        np.testing.assert_array_equal(a, b)


def test_switch_off_and_bad_value(monkeypatch):
    monkeypatch.setenv(c_kernels.ENV, "0")
    assert c_kernels.library() is None
    assert c_kernels.support() == f"off ({c_kernels.ENV}=0)"
    rule = numpy_fast.update_rule(Adam(1e-3))
    assert isinstance(rule, functools.partial) and rule.func is numpy_update.in_blocks
    assert "NumPy passes" in _net().engine.reason
    monkeypatch.setenv(c_kernels.ENV, "yes")
    with pytest.raises(ValueError, match="BPGPU_C_KERNELS must be 0"):
        c_kernels.library()


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """A process state in which the kernels were never loaded, with its own cache directory."""
    monkeypatch.setattr(c_kernels, "_loaded", None)
    monkeypatch.setenv(c_kernels.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(c_kernels.ENV, raising=False)
    return tmp_path / "cache"


def test_without_a_compiler_training_runs_the_numpy_passes(monkeypatch, fresh_load):
    monkeypatch.setenv("PATH", str(fresh_load.parent / "empty"))  # no cc, gcc or clang on it
    monkeypatch.delenv("CC", raising=False)
    assert c_kernels.library() is None
    assert c_kernels.support().startswith("unavailable: no C compiler")
    net = _net()
    assert "NumPy passes" in net.engine.reason and "no C compiler" in net.engine.reason
    losses = _train(net, steps=3)
    assert losses[-1] < losses[0]


def test_a_named_compiler_that_is_missing_is_reported(monkeypatch, fresh_load):
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert c_kernels.library() is None
    assert c_kernels.support() == ("unavailable: no C compiler: CC='no-such-compiler-here' is "
                                   "not on the PATH")


@needs_c
def test_a_damaged_cached_library_is_compiled_again(fresh_load):
    """A cached file that does not load (cut short, overwritten) is replaced, not trusted."""
    fresh_load.mkdir(mode=0o700)
    cached = fresh_load / c_kernels._library_name(c_kernels._compiler()[0])
    cached.write_bytes(b"not a shared library")
    assert c_kernels.library() is not None
    assert "compiled into" in c_kernels.support()
    assert cached.stat().st_size > 1000


def test_a_failing_compiler_is_reported(monkeypatch, fresh_load):
    monkeypatch.setenv("CC", shutil.which("false") or "false")
    if shutil.which("false") is None:
        pytest.skip("no `false` command to stand in for a failing compiler")
    assert c_kernels.library() is None
    assert "failed" in c_kernels.support()
    assert not list(fresh_load.glob("*.so")) and not list(fresh_load.glob("*.partial"))


@needs_c
def test_compiled_once_into_the_cache_then_loaded(fresh_load, monkeypatch):
    assert c_kernels.library() is not None
    assert "compiled into" in c_kernels.support()
    files = list(fresh_load.glob("cpu_kernels-*.so"))
    assert len(files) == 1 and not list(fresh_load.glob("*.partial"))
    assert stat.S_IMODE(os.stat(fresh_load).st_mode) == 0o700
    monkeypatch.setattr(c_kernels, "_loaded", None)
    monkeypatch.setattr(c_kernels, "_compile", lambda *a: pytest.fail("compiled again"))
    assert c_kernels.library() is not None
    assert "loaded from" in c_kernels.support()


@needs_c
def test_an_untrusted_cache_directory_is_not_used(fresh_load):
    fresh_load.mkdir()
    os.chmod(fresh_load, 0o777)  # anyone may write: a planted library could be loaded
    assert c_kernels.library() is not None
    assert "private temporary directory" in c_kernels.support()
    assert list(fresh_load.iterdir()) == []


@needs_c
def test_the_self_check_rejects_kernels_that_differ(fresh_load, monkeypatch, tmp_path):
    """A mutated copy of the sources (Adam's second moment weighted by 1 - beta1) compiles, but
    its check against the NumPy rules fails, so it is not used."""
    mutated = tmp_path / "src"
    mutated.mkdir()
    for name in c_kernels._SOURCES:
        shutil.copy(os.path.join(c_kernels._HERE, name), mutated / name)
    header = mutated / "_cpu_update.h"
    text = header.read_text()
    assert text.count("(gi * gi) * omb2") == 1
    header.write_text(text.replace("(gi * gi) * omb2", "(gi * gi) * omb1"))
    monkeypatch.setattr(c_kernels, "_HERE", str(mutated))
    assert c_kernels.library() is None
    assert "differ from the NumPy rules (adam, float32)" in c_kernels.support()
