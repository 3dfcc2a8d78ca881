"""Shared numerics: optimizers with their own parameters, LR schedules, L1, early stopping."""

from __future__ import annotations

import math

import pytest
import torch

from ftray.numerics import improved, l1_penalty, lr_factor, make_optimizer, make_scheduler
from ftray.spec import JobSpec
from tests.conftest import mlp_spec


def spec_with(tmp_path, **train):
    return JobSpec.model_validate(mlp_spec(tmp_path / "d.parquet", tmp_path, train=train))


@pytest.mark.parametrize("optimizer, cls, check", [
    ({"name": "sgd"}, torch.optim.SGD, lambda g: g["momentum"] == 0),
    ({"name": "sgd", "momentum": 0.9, "nesterov": True}, torch.optim.SGD, lambda g: g["nesterov"]),
    ({"name": "rmsprop", "alpha": 0.9, "centered": True}, torch.optim.RMSprop, lambda g: g["centered"]),
    ({"name": "adam", "betas": [0.8, 0.99], "weight_decay": 0.1}, torch.optim.Adam,
     lambda g: g["betas"] == (0.8, 0.99) and g["weight_decay"] == 0.1),
    ({"name": "adamw"}, torch.optim.AdamW, lambda g: g["weight_decay"] == 0.01),
])
def test_optimizers_carry_their_parameters(tmp_path, optimizer, cls, check):
    spec = spec_with(tmp_path, optimizer=optimizer, lr=0.1)
    w, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    opt = make_optimizer(spec, [{"params": [w], "lr_scale": 1.0}, {"params": [b], "lr_scale": 0.1}])
    assert isinstance(opt, cls) and check(opt.param_groups[0])
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])


def test_no_trainable_parameters_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no parameter trainable"):
        make_optimizer(spec_with(tmp_path), [{"params": [], "lr_scale": 1.0}])


def test_schedules(tmp_path):
    steps = 10  # per epoch; 3 epochs
    f = lr_factor(spec_with(tmp_path, epochs=3, schedule={"name": "cosine", "warmup_steps": 5}), steps)
    assert [round(f(s), 3) for s in range(5)] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert f(5) == pytest.approx(1.0) and f(30) == pytest.approx(0.0, abs=1e-9)
    assert f(17) == pytest.approx(0.5 * (1 + math.cos(math.pi * 12 / 25)))  # 12 of the 25 steps after warmup
    f = lr_factor(spec_with(tmp_path, epochs=3, schedule={"name": "step", "step_epochs": 1, "gamma": 0.5}), steps)
    assert (f(0), f(10), f(25)) == (1.0, 0.5, 0.25)
    f = lr_factor(spec_with(tmp_path, epochs=2, schedule={"name": "linear", "min_lr_ratio": 0.1}), steps)
    assert f(0) == 1.0 and f(20) == pytest.approx(0.1)
    assert lr_factor(spec_with(tmp_path, schedule={"name": "constant"}), steps)(999) == 1.0


def test_plateau_cuts_the_rate_after_patience(tmp_path):
    spec = spec_with(tmp_path, lr=1.0, schedule={"name": "plateau", "factor": 0.5, "patience": 1})
    opt = make_optimizer(spec, [{"params": [torch.nn.Parameter(torch.ones(1))], "lr_scale": 1.0}])
    sched = make_scheduler(spec, opt, steps_per_epoch=5)
    for loss in (1.0, 1.0, 1.0):
        sched.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_l1_penalises_weights_not_biases():
    layer = torch.nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0]]))
        layer.bias.fill_(5.0)
    assert float(l1_penalty(layer)) == 3.0


def test_improved():
    assert improved(1.0, None, "min", 0.0)
    assert improved(0.5, 1.0, "min", 0.1) and not improved(0.95, 1.0, "min", 0.1)
    assert improved(0.9, 0.8, "max", 0.0) and not improved(0.8, 0.8, "max", 0.0)
