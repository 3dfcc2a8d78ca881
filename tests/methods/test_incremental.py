"""`incremental`: the grown head keeps the old model, the EWC term anchors to it, bad inputs stop
before Ray starts, and jobs/incremental.yaml forgets less than the same run without its defences."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli
from ftray.methods import get_method
from ftray.models import ModelInfo, load_exported
from ftray.models.mlp import MLP
from ftray.spec import JobSpec, MLPModel
from tests.conftest import REPO, blobs, job_summary, mlp_spec, write_spec

OLD = ModelInfo("classification", 8, [0, 1, 2])
NEW = ModelInfo("classification", 8, [0, 1, 2, 3, 4])


@pytest.fixture
def world(tmp_path):
    """An earlier run (an mlp on classes 0-2), its old rows, and new rows of classes 3-4."""
    MLP(MLPModel(layers=1, units=16), OLD).export(tmp_path / "old_run" / "model")
    pq.write_table(blobs(60, classes=3), tmp_path / "old.parquet")
    pq.write_table(blobs(60, classes=2, seed=1, label_offset=3), tmp_path / "new.parquet")
    return tmp_path


def spec_of(w: Path, **method) -> dict:
    raw = mlp_spec(w / "new.parquet", w / "runs", "inc", method={
        "name": "incremental", "replay_path": str(w / "old.parquet"), "old_val_path": str(w / "old.parquet"),
        **method})
    raw["model"]["init_from"] = str(w / "old_run")
    raw["data"]["classes"] = [0, 1, 2, 3, 4]
    return raw


def test_the_head_grows_and_keeps_the_old_model(world):
    m = get_method(JobSpec.model_validate(spec_of(world)))
    m.check_source(NEW)
    model = m.build(NEW, None)
    old = load_exported(str(world / "old_run"))
    assert model.classifier.weight.shape == (5, 16)
    assert torch.equal(model.classifier.weight[:3], old.classifier.weight)
    assert torch.equal(model.backbone[0][0].weight, old.backbone[0][0].weight)
    x = torch.randn(4, 8)
    assert torch.allclose(model({"x": x})[:, :3], old({"x": x}))  # the old classes' logits are unchanged


def test_ewc_penalty_is_zero_at_the_old_weights_and_pulls_back_to_them(world):
    m = get_method(JobSpec.model_validate(spec_of(world, ewc_lambda=10.0)))
    model = m.build(NEW, None)
    m.attach(torch.device("cpu"))
    fisher = torch.ones(16, 8)
    w = model.backbone[0][0].weight
    m.ewc = [(w, w.detach().clone(), fisher)]
    batch = {"x": torch.randn(6, 8), "y": torch.tensor([3, 4, 3, 4, 3, 4])}
    plain = get_method(JobSpec.model_validate(spec_of(world, ewc_lambda=0.0)))
    plain.ewc = None
    assert float(m.loss(model, batch)[0].detach()) == pytest.approx(float(plain.loss(model, batch)[0].detach()))
    with torch.no_grad():
        w += 0.5
    penalty = float(m.loss(model, batch)[0].detach()) - float(plain.loss(model, batch)[0].detach())
    assert penalty == pytest.approx(10.0 / 2 * 16 * 8 * 0.25, rel=1e-4)
    w.grad = None
    m.loss(model, batch)[0].backward()
    assert (w.grad > 0).float().mean() > 0.9  # the gradient points back toward the old weights


def test_forgetting_is_how_much_the_old_metric_got_worse(world):
    m = get_method(JobSpec.model_validate(spec_of(world)))
    extra = m.epoch_summary({"continual": {"old_before": 0.9}}, {"val_accuracy": 0.95, "old_val_accuracy": 0.8})
    assert extra["continual"] == pytest.approx({"old_before": 0.9, "old_after": 0.8, "new_after": 0.95,
                                                "forgetting": 0.1})




@pytest.mark.parametrize("change, message", [
    ({"model.init_from": "NOPE"}, ("model.init_from: ", "NOPE' holds no exported ftray model")),
    ({"method.replay_path": "NOPE.parquet"}, ("method.replay_path: ", "NOPE.parquet': no such file")),
    ({"data.classes": [3, 4, 0, 1, 2]}, ("data.classes: must start with the earlier model's classes [0, 1, 2]",)),
    ({"model.init_from": None}, ("method.name: incremental continues an earlier run: set model.init_from",)),
    ({"old_val_labels": 7}, ("method.old_val_path: ", "bad.parquet: row 0: label 7 is not one of the classes")),
], ids=["missing run", "missing replay", "classes reordered", "no init_from", "old label unknown"])
def test_bad_input_exits_2_before_ray(world, capsys, no_ray, change, message):
    raw = spec_of(world)
    for key, value in change.items():
        if key == "old_val_labels":
            table = blobs(10, classes=3)
            pq.write_table(table.set_column(1, "label", [[value] * 10]), world / "bad.parquet")
            raw["method"]["old_val_path"] = str(world / "bad.parquet")
            continue
        section, field = key.split(".")
        raw[section][field] = value
    path = write_spec(world / "job.yaml", raw)
    for command in ("validate", "run"):
        assert cli.main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftray: error: ") and all(m in err for m in message), err
        assert "Traceback" not in err


def test_incremental_job_forgets_less_than_plain_fine_tuning(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the job names its data relative to the repository root
    pre = job_summary(capsys, "run", "pretrain_digits.yaml", tmp_path, "--set", "train.epochs=3")
    start = ("--set", f"model.init_from={tmp_path}/pretrain_digits", "--set", "train.epochs=2")
    s = job_summary(capsys, "run", "incremental.yaml", tmp_path, *start)
    plain = job_summary(capsys, "run", "incremental.yaml", tmp_path, *start, "--set", "method.replay_ratio=0",
                        "--set", "method.ewc_lambda=0", "--set", "run.name=plain")
    c, p = s["continual"], plain["continual"]
    assert s["data"]["classes"] == list(range(10))
    assert c["old_before"] == pytest.approx(p["old_before"]) and c["old_before"] > 0.9
    assert c["old_after"] == pytest.approx(s["history"][-1]["old_val_accuracy"])
    assert c["forgetting"] == pytest.approx(c["old_before"] - c["old_after"])
    assert c["new_after"] > 0.8 and p["new_after"] > 0.8
    assert p["forgetting"] > 0.5  # without replay or EWC the old digits are lost
    assert c["forgetting"] < 0.15
    assert pre["metrics"]["val_accuracy"] == pytest.approx(c["old_before"])  # the same held-out rows
