"""Optimizers: 20-step trajectories equal torch.optim's (float64, 1e-9) on every backend, defaults
equal torch's, invalid hyperparameters are refused, clipping equals torch.nn.utils."""

import numpy as np
import pytest

from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop, deserialize_optimizer, get_optimizer, serialize_optimizer

SHAPES = [(3, 4), (4,), (2, 3)]
STEPS = 20

CONFIGS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.8, "dampening": 0.3}),
    ("SGD", {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.7, "weight_decay": 0.05, "nesterov": True}),
    ("RMSprop", {"lr": 0.01}),
    ("RMSprop", {"lr": 0.01, "centered": True}),
    ("RMSprop", {"lr": 0.01, "momentum": 0.9}),
    ("RMSprop", {"lr": 0.01, "weight_decay": 0.1, "alpha": 0.9}),
    ("RMSprop", {"lr": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.01, "eps": 1e-6}),
    ("Adam", {"lr": 0.05}),
    ("Adam", {"lr": 0.05, "weight_decay": 0.1}),
    ("Adam", {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6}),
    ("AdamW", {"lr": 0.05}),
    ("AdamW", {"lr": 0.05, "weight_decay": 0.1, "betas": (0.85, 0.995)}),
]

OURS = {"SGD": SGD, "RMSprop": RMSprop, "Adam": Adam, "AdamW": AdamW}


def _initial_params():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape) for shape in SHAPES]


def _gradient(i, p):
    """A fixed, non-linear gradient field: g = c_i p + 0.3 sin(3 p) + d_i (host float64)."""
    c = (0.5, 2.0, 1.0)[i]
    d = (0.1, -0.2, 0.05)[i]
    return c * p + 0.3 * np.sin(3.0 * p) + d


def _assert_close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name, kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k)}" for n, k in CONFIGS])
def test_trajectory_matches_torch(backend, torch, name, kwargs):
    f64 = backend.dtype("float64")
    opt = OURS[name](**kwargs).bind(backend)
    params = [backend.asarray(p, dtype=f64) for p in _initial_params()]
    ref_params = [torch.nn.Parameter(torch.tensor(p)) for p in _initial_params()]
    ref = getattr(torch.optim, name)(ref_params, **kwargs)
    for _ in range(STEPS):
        grads = [_gradient(i, backend.to_numpy(p)) for i, p in enumerate(params)]
        params = opt.step(params, [backend.asarray(g, dtype=f64) for g in grads])
        for i, p in enumerate(ref_params):
            p.grad = torch.tensor(_gradient(i, p.detach().numpy()))
        ref.step()
        for mine, theirs in zip(params, ref_params, strict=True):
            _assert_close(backend.to_numpy(mine), theirs.detach().numpy())
    assert opt.step_count == STEPS
    moved = [np.abs(backend.to_numpy(p) - p0).max() for p, p0 in zip(params, _initial_params(), strict=True)]
    assert min(moved) > 1e-3  # the trajectory really went somewhere


def test_float32_parameters_stay_float32(backend):
    f32 = backend.dtype("float32")
    for name, kwargs in CONFIGS:
        opt = OURS[name](**kwargs, clip_norm=1.0, clip_value=0.5).bind(backend)
        params = [backend.asarray(p, dtype=f32) for p in _initial_params()]
        for _ in range(2):
            grads = [backend.asarray(_gradient(i, backend.to_numpy(p)), dtype=f32)
                     for i, p in enumerate(params)]
            params = opt.step(params, grads)
        assert all(p.dtype == backend.xp.float32 for p in params), (name, kwargs)


# -- defaults -----------------------------------------------------------------------------------------
DEFAULT_KEYS = {
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "nesterov"],
    "RMSprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered"],
    "Adam": ["lr", "betas", "eps", "weight_decay"],
    "AdamW": ["lr", "betas", "eps", "weight_decay"],
}


@pytest.mark.parametrize("name", list(OURS))
def test_defaults_equal_torch(torch, name):
    theirs = getattr(torch.optim, name)([torch.nn.Parameter(torch.zeros(2))]).defaults
    mine = OURS[name]()
    for key in DEFAULT_KEYS[name]:
        value = getattr(mine, key)
        assert (tuple(value) if key == "betas" else value) == theirs[key], key


# -- invalid hyperparameters --------------------------------------------------------------------------
INVALID = [
    (SGD, {"lr": -0.1}, r"lr must be a finite number >= 0\.0, got -0\.1"),
    (Adam, {"lr": float("nan")}, r"lr must be a finite number >= 0\.0, got nan"),
    (RMSprop, {"lr": "0.1"}, r"lr must be a finite number >= 0\.0, got '0\.1'"),
    (Adam, {"betas": (1.0, 0.999)}, r"betas\[0\] must be a finite number in \[0\.0, 1\.0\), got 1\.0"),
    (AdamW, {"betas": (0.9, 1.5)}, r"betas\[1\] must be a finite number in \[0\.0, 1\.0\), got 1\.5"),
    (Adam, {"betas": (-0.1, 0.999)}, r"betas\[0\] must be a finite number in \[0\.0, 1\.0\)"),
    (Adam, {"betas": (0.9,)}, r"betas must be a pair \(beta1, beta2\)"),
    (Adam, {"betas": 0.9}, r"betas must be a pair"),
    (Adam, {"eps": -1e-8}, r"eps must be a finite number >= 0\.0"),
    (RMSprop, {"eps": -1.0}, r"eps must be a finite number >= 0\.0"),
    (SGD, {"weight_decay": -0.01}, r"weight_decay must be a finite number >= 0\.0"),
    (AdamW, {"weight_decay": -1.0}, r"weight_decay must be a finite number >= 0\.0"),
    (RMSprop, {"weight_decay": -1.0}, r"weight_decay must be a finite number >= 0\.0"),
    (SGD, {"momentum": -0.5}, r"momentum must be a finite number >= 0\.0"),
    (RMSprop, {"momentum": -0.5}, r"momentum must be a finite number >= 0\.0"),
    (RMSprop, {"alpha": -0.1}, r"alpha must be a finite number in \[0\.0, 1\.0\]"),
    (SGD, {"nesterov": True}, r"nesterov momentum requires momentum > 0 and dampening = 0"),
    (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, r"nesterov momentum requires"),
    (SGD, {"dampening": -0.1}, r"dampening must be a finite number >= 0\.0"),
    (SGD, {"clip_norm": -1.0}, r"clip_norm must be a finite number >= 0\.0"),
    (Adam, {"clip_value": float("inf")}, r"clip_value must be a finite number >= 0\.0"),
]


@pytest.mark.parametrize("cls, kwargs, message", INVALID,
                         ids=[f"{c.__name__}-{'-'.join(k)}-{i}" for i, (c, k, _) in enumerate(INVALID)])
def test_invalid_hyperparameters(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# -- clipping -----------------------------------------------------------------------------------------
def _grads(scale):
    rng = np.random.default_rng(3)
    return [scale * rng.standard_normal(shape) for shape in SHAPES]


@pytest.mark.parametrize("clip", [
    {"clip_norm": 1.0, "scale": 2.0},     # total norm ~ 9: rescaled
    {"clip_norm": 50.0, "scale": 2.0},    # below the threshold: untouched
    {"clip_value": 0.3, "scale": 1.0},
    {"clip_value": 0.3, "clip_norm": 0.5, "scale": 1.0},
    {"clip_norm": 0.0, "scale": 1.0},     # clips to zero
])
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_clipping_matches_torch_utils(backend, torch, clip, name):
    clip = dict(clip)
    scale = clip.pop("scale")
    f64 = backend.dtype("float64")
    kwargs = {"lr": 0.5} if name == "SGD" else {"lr": 0.1}
    opt = OURS[name](**kwargs, **clip).bind(backend)
    grads = _grads(scale)
    params = opt.step([backend.asarray(p, dtype=f64) for p in _initial_params()],
                      [backend.asarray(g, dtype=f64) for g in grads])

    ref_params = [torch.nn.Parameter(torch.tensor(p)) for p in _initial_params()]
    for p, g in zip(ref_params, grads, strict=True):
        p.grad = torch.tensor(g)
    if "clip_value" in clip:
        torch.nn.utils.clip_grad_value_(ref_params, clip["clip_value"])
    if "clip_norm" in clip:
        torch.nn.utils.clip_grad_norm_(ref_params, clip["clip_norm"])
    getattr(torch.optim, name)(ref_params, **kwargs).step()
    for mine, theirs in zip(params, ref_params, strict=True):
        _assert_close(backend.to_numpy(mine), theirs.detach().numpy())


def test_clip_value_bounds_every_element(backend):
    opt = SGD(lr=1.0, clip_value=0.25).bind(backend)
    f64 = backend.dtype("float64")
    clipped = [backend.to_numpy(g) for g in opt.clip([backend.asarray(g, dtype=f64) for g in _grads(3.0)])]
    assert max(np.abs(g).max() for g in clipped) == 0.25
    for g, original in zip(clipped, _grads(3.0), strict=True):
        np.testing.assert_array_equal(g, np.clip(original, -0.25, 0.25))


# -- names and serialisation ----------------------------------------------------------------------------
def test_optimizer_names():
    for name, cls in {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam, "adamw": AdamW}.items():
        assert type(get_optimizer(name)) is cls
        assert type(get_optimizer(name.upper())) is cls
    opt = Adam(lr=0.1)
    assert get_optimizer(opt) is opt


@pytest.mark.parametrize("bad", ["adagrad", "", None, 0.1])
def test_unknown_optimizer_name(bad):
    with pytest.raises(ValueError, match="unknown optimizer") as info:
        get_optimizer(bad)
    for name in ("sgd", "rmsprop", "adam", "adamw"):
        assert name in str(info.value)


@pytest.mark.parametrize("name, kwargs", CONFIGS[::3] + [("SGD", {"lr": 0.1, "clip_norm": 2.0, "clip_value": 1.0})])
def test_config_round_trip(name, kwargs):
    opt = OURS[name](**kwargs)
    copy = deserialize_optimizer(serialize_optimizer(opt))
    assert type(copy) is type(opt)
    assert copy.get_config() == opt.get_config()
    for key, value in kwargs.items():
        assert getattr(copy, key) == value


def test_state_dict_round_trip(backend):
    f64 = backend.dtype("float64")
    opt = Adam(lr=0.1).bind(backend)
    params = [backend.asarray(p, dtype=f64) for p in _initial_params()]
    grads = [backend.asarray(_gradient(i, p), dtype=f64) for i, p in enumerate(_initial_params())]
    params = opt.step(params, grads)
    state = opt.state_dict()
    assert state["step_count"] == 1 and set(state["state"]) == {"exp_avg", "exp_avg_sq"}
    twin = Adam(lr=0.1).bind(backend)
    twin.load_state_dict(state)
    a, b = opt.step(params, grads), twin.step(params, grads)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(backend.to_numpy(x), backend.to_numpy(y))
