"""Learning-rate schedules against torch.optim.lr_scheduler, and how optimizers step them.

Schedules are pure Python, so they are tested once (no backend fixture); stepping inside ``fit``
on every backend is tested against a PyTorch training run in test_training.py.
"""

import json
import math
import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu.callbacks import ReduceLROnPlateau
from bpgpu.optimizers import SGD, Adam, AdamW, RMSprop, deserialize_optimizer, serialize_optimizer
from bpgpu.schedules import (
    CosineAnnealingLR,
    ExponentialLR,
    LinearWarmup,
    Schedule,
    StepLR,
    deserialize_schedule,
    serialize_schedule,
)

STEPS = 45


def _torch_rates(torch, make_scheduler, lr, steps=STEPS):
    """The rate a torch optimizer uses at steps 0..steps-1, stepping the scheduler after each."""
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make_scheduler(optimizer)
    rates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    return rates


def _assert_same_rates(ours, theirs):
    ours = np.array(ours)
    theirs = np.array(theirs)
    # 1e-12 relative; the absolute floor only matters where the rate is exactly 0 (cosine at T_max).
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-18)


CASES = [
    ("StepLR", lambda: StepLR(0.1, step_size=7, gamma=0.5),
     lambda L, o: L.StepLR(o, step_size=7, gamma=0.5), 0.1),
    ("StepLR-1", lambda: StepLR(3e-4, step_size=1, gamma=0.9),
     lambda L, o: L.StepLR(o, step_size=1, gamma=0.9), 3e-4),
    ("ExponentialLR", lambda: ExponentialLR(0.05, gamma=0.93),
     lambda L, o: L.ExponentialLR(o, gamma=0.93), 0.05),
    ("Cosine", lambda: CosineAnnealingLR(0.1, T_max=10),
     lambda L, o: L.CosineAnnealingLR(o, T_max=10), 0.1),
    ("Cosine-eta_min", lambda: CosineAnnealingLR(1e-3, T_max=17, eta_min=1e-5),
     lambda L, o: L.CosineAnnealingLR(o, T_max=17, eta_min=1e-5), 1e-3),
    ("Warmup-cosine", lambda: LinearWarmup(5, CosineAnnealingLR(0.1, T_max=20)),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=1 / 6, total_iters=5),
                                     L.CosineAnnealingLR(o, T_max=20)], milestones=[5]), 0.1),
    ("Warmup-step-f", lambda: LinearWarmup(8, StepLR(0.02, 4, 0.5), start_factor=0.25),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.25, total_iters=8),
                                     L.StepLR(o, 4, 0.5)], milestones=[8]), 0.02),
    ("Warmup-exp", lambda: LinearWarmup(1, ExponentialLR(0.3, 0.8)),
     lambda L, o: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.5, total_iters=1),
                                     L.ExponentialLR(o, 0.8)], milestones=[1]), 0.3),
]


@pytest.mark.parametrize("name,ours,theirs,lr", CASES, ids=[c[0] for c in CASES])
def test_schedule_equals_torch_sequence(torch, name, ours, theirs, lr):
    schedule = ours()
    expected = _torch_rates(torch, lambda o: theirs(torch.optim.lr_scheduler, o), lr)
    _assert_same_rates([schedule(t) for t in range(STEPS)], expected)


def test_closed_forms():
    s = StepLR(0.1, 3, 0.5)
    assert [s(t) for t in (0, 2, 3, 5, 6)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    c = CosineAnnealingLR(0.2, T_max=8, eta_min=0.01)
    assert c(0) == 0.2 and math.isclose(c(8), 0.01, rel_tol=1e-15)
    assert math.isclose(c(4), 0.105, rel_tol=1e-15)  # halfway: the mean of lr and eta_min
    w = LinearWarmup(4, 0.5)  # a number: constant after the warm-up
    assert [w(t) for t in range(7)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5], rel=1e-15)
    assert all(isinstance(s(t), float) for t in range(3))


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None, True])
def test_schedule_rejects_bad_steps(bad):
    with pytest.raises(ValueError, match="integer steps t >= 0"):
        StepLR(0.1, 2)(bad)


@pytest.mark.parametrize("make,message", [
    (lambda: StepLR(0.0, 2), "lr must be a finite number > 0"),
    (lambda: StepLR(0.1, 0), "step_size must be an integer >= 1"),
    (lambda: StepLR(0.1, 2.0), "step_size must be an integer >= 1"),
    (lambda: ExponentialLR(0.1, -0.5), "gamma must be a finite number > 0"),
    (lambda: ExponentialLR(math.inf, 0.5), "lr must be a finite number > 0"),
    (lambda: CosineAnnealingLR(0.1, T_max=0), "T_max must be an integer >= 1"),
    (lambda: CosineAnnealingLR(0.1, T_max=5, eta_min=0.2), r"eta_min must be a number in \[0, lr"),
    (lambda: LinearWarmup(0, 0.1), "warmup_steps must be an integer >= 1"),
    (lambda: LinearWarmup(3, "fast"), "then"),
    (lambda: LinearWarmup(3, 0.1, start_factor=0.0), r"start_factor must be a number in \(0, 1\]"),
    (lambda: StepLR(0.1, 2, per="step"), "per must be 'epoch' or 'batch'"),
])
def test_schedule_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedules_serialize_to_json_and_back():
    schedules = [StepLR(0.1, 3, 0.5, per="batch"), ExponentialLR(0.1, 0.9),
                 CosineAnnealingLR(0.1, 9, 1e-4), LinearWarmup(3, CosineAnnealingLR(0.1, 9)),
                 LinearWarmup(2, 0.05, start_factor=0.5, per="batch")]
    for schedule in schedules:
        back = deserialize_schedule(json.loads(json.dumps(serialize_schedule(schedule))))
        assert back == schedule and type(back) is type(schedule) and back.per == schedule.per
        assert [back(t) for t in range(20)] == [schedule(t) for t in range(20)]
    assert LinearWarmup(3, StepLR(0.1, 2, per="batch")).per == "batch"  # inherited from `then`


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="unknown schedule class 'os.system'"):
        deserialize_schedule({"class": "os.system", "config": {}})
    with pytest.raises(ValueError, match="a schedule description must be"):
        deserialize_schedule(["StepLR"])


def test_custom_schedule_subclass_registers_and_round_trips():
    class HalvingLR(Schedule):
        def __init__(self, lr, per="epoch"):
            super().__init__(per)
            self.lr = lr

        def rate(self, t):
            return self.lr / 2 ** t

        def get_config(self):
            return {"lr": self.lr, "per": self.per}

    optimizer = deserialize_optimizer(json.loads(json.dumps(serialize_optimizer(SGD(lr=HalvingLR(0.4))))))
    assert isinstance(optimizer.lr, HalvingLR) and optimizer.learning_rate() == 0.4


# -- optimizers holding a schedule ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [SGD, RMSprop, Adam, AdamW])
def test_every_optimizer_accepts_a_schedule(cls):
    schedule = ExponentialLR(0.1, 0.5)
    optimizer = cls(lr=schedule)
    assert optimizer.learning_rate() == 0.1
    optimizer.advance_schedule("epoch")
    optimizer.advance_schedule("batch")  # not this schedule's unit: no effect
    assert optimizer.schedule_step == 1 and optimizer.learning_rate() == 0.05
    back = deserialize_optimizer(json.loads(json.dumps(serialize_optimizer(optimizer))))
    assert back.lr == schedule and back.learning_rate() == 0.1  # the position is state, not config
    assert "ExponentialLR(lr=0.1" in repr(optimizer)


def test_per_batch_schedule_advances_with_each_step():
    net = bpgpu.Network.from_sizes([2, 1], optimizer=SGD(lr=StepLR(0.1, 2, 0.5, per="batch")),
                                   backend="numpy", dtype="float64", seed=0)
    X, y = np.ones((4, 2)), np.zeros(4)
    rates = []
    for _ in range(5):
        rates.append(net.optimizer.learning_rate())
        net.train_step(X, y)
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert net.optimizer.schedule_step == 5 == net.optimizer.step_count


def test_plain_number_lr_is_unchanged_by_advancing():
    optimizer = Adam(lr=0.01)
    optimizer.advance_schedule("epoch")
    assert optimizer.learning_rate() == 0.01 and optimizer.schedule_step == 0


# -- ReduceLROnPlateau against torch ------------------------------------------------------------------
VALUES = [1.0, 0.9, 0.95, 0.95, 0.96, 0.97, 0.899, 0.8999, 0.9, 0.91, 0.92, 0.93, 0.7, 0.71,
          0.72, 0.73, 0.74, 0.75, 0.76, 0.69995, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]

PLATEAU_CASES = [
    dict(factor=0.5, patience=2),
    dict(factor=0.1, patience=0),
    dict(factor=0.5, patience=1, cooldown=2),
    dict(factor=0.3, patience=1, threshold=0.05, threshold_mode="abs"),
    dict(factor=0.5, patience=1, min_lr=0.02),
    dict(factor=0.5, patience=1, mode="max"),
    dict(factor=0.5, patience=2, threshold=0.0),
    dict(factor=0.9999, patience=0, eps=1e-3),  # changes smaller than eps are skipped
]


@pytest.mark.parametrize("kwargs", PLATEAU_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
def test_reduce_lr_on_plateau_equals_torch(torch, kwargs):
    mode = kwargs.get("mode", "min")
    theirs_kwargs = {**kwargs, "mode": mode}
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    torch_optimizer = torch.optim.SGD([param], lr=0.1)
    torch_scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(torch_optimizer, **theirs_kwargs)
    net = bpgpu.Network.from_sizes([1, 1], optimizer=SGD(lr=0.1), backend="numpy", seed=0)
    callback = ReduceLROnPlateau(monitor="val_loss", **{**kwargs, "mode": mode})
    callback.set_network(net)
    callback.on_train_begin()
    ours, theirs = [], []
    for epoch, value in enumerate(VALUES):
        callback.on_epoch_end(epoch, {"loss": 0.0, "val_loss": value})
        torch_scheduler.step(value)
        ours.append(net.optimizer.lr)
        theirs.append(torch_optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(ours, theirs, rtol=1e-15)
    # The sequence does exercise reductions (or, with the large eps, skipped ones).
    assert (len(set(theirs)) == 1) == ("eps" in kwargs)


def test_reduce_lr_on_plateau_arguments():
    with pytest.raises(ValueError, match=r"factor must be a number in \(0, 1\)"):
        ReduceLROnPlateau(factor=1.0)
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):
        ReduceLROnPlateau(patience=-1)
    with pytest.raises(ValueError, match="threshold_mode must be 'rel' or 'abs'"):
        ReduceLROnPlateau(threshold_mode="relative")
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max'"):
        ReduceLROnPlateau(mode="down")
    assert ReduceLROnPlateau(monitor="val_accuracy").mode == "max"
    assert ReduceLROnPlateau(monitor="val_loss").mode == "min"
    assert bpgpu.schedules.ReduceLROnPlateau is ReduceLROnPlateau
