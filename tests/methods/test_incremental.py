"""`incremental`: the grown head keeps the old model, the EWC term anchors to it, bad inputs stop
before Ray starts, and jobs/incremental.yaml forgets less than the same run without its defences."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli
from ftray.methods import get_method
from ftray.models import ModelInfo, load_exported
from ftray.models.mlp import MLP
from ftray.numerics import make_optimizer
from ftray.spec import JobSpec, MLPModel
from tests.conftest import REPO, blobs, job_summary, mlp_spec, write_spec
from tests.figures import FIGURES
from tests.methods.shards import rows

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


LINEAR_OLD = ModelInfo("classification", 4, [0, 1, 2])
LINEAR_NEW = ModelInfo("classification", 4, [0, 1, 2, 3, 4])


@pytest.fixture
def linear_world(tmp_path):
    """An earlier linear softmax classifier (an mlp of no hidden layer) over 4 features, classes 0-2,
    and 10 old rows whose labels it does not all get right."""
    torch.manual_seed(3)
    MLP(MLPModel(layers=0), LINEAR_OLD).export(tmp_path / "old_run" / "model")
    rng = np.random.default_rng(0)
    return tmp_path, rng.normal(0, 1.5, (10, 4)).astype(np.float32), np.arange(10) % 3


def linear_method(w: Path, info: ModelInfo, ewc_lambda: float):
    raw = spec_of(w, ewc_lambda=ewc_lambda, fisher_rows=10)
    raw["model"] = {"name": "mlp", "layers": 0, "init_from": str(w / "old_run")}
    raw["data"]["classes"] = list(info.classes)
    raw["train"]["batch_size"] = 4  # the Fisher rows come in batches of 4, 4 and 2
    m = get_method(JobSpec.model_validate(raw))
    model = m.build(info, None)
    m.prepare(model)
    m.attach(torch.device("cpu"))
    return m, model


def fisher_terms(m, model, x, y):
    loop = SimpleNamespace(model=model, worker=SimpleNamespace(device=torch.device("cpu")),
                           data=lambda name: {"fisher": rows(x=x, y=y)}[name])
    m.run_epoch(loop, 1)  # estimates the Fisher once, before the first epoch
    return {id(p): (p, a, f) for p, a, f in m.ewc}


def logistic_fisher(w, b, x, y):
    """The closed form for a linear softmax model: the gradient of example i's cross-entropy is
    e_i x_i^T for the weights and e_i for the bias, e_i = softmax(W x_i + b) - onehot(y_i). The
    empirical Fisher (with the data's labels) averages their squares; the expected one averages
    over labels drawn from the model's own prediction instead."""
    z = x @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = p - np.eye(len(b))[y]
    empirical = ((e[:, :, None] * x[:, None, :]) ** 2).mean(0), (e ** 2).mean(0)
    # E_{c ~ p_i} (p_i - onehot(c))^2 = p_i (1 - p_i)^2 + (1 - p_i) p_i^2 = p_i (1 - p_i), per output
    v = p * (1 - p)
    expected = (v[:, :, None] * x[:, None, :] ** 2).mean(0), v.mean(0)
    return empirical, expected


def test_ewc_fisher_is_the_empirical_fisher_of_the_earlier_model(ray_session, linear_world):
    w, x, y = linear_world
    m, model = linear_method(w, LINEAR_OLD, ewc_lambda=3.0)
    old = load_exported(str(w / "old_run"))
    (fw, fb), (ew, eb) = logistic_fisher(old.classifier.weight.detach().double().numpy(),
                                         old.classifier.bias.detach().double().numpy(), x.astype(np.float64), y)
    terms = fisher_terms(m, model, x, y)
    assert set(terms) == {id(model.classifier.weight), id(model.classifier.bias)}
    for name, f in (("weight", fw), ("bias", fb)):
        _, anchor, fisher = terms[id(getattr(model.classifier, name))]
        assert torch.equal(anchor, old.state_dict()[f"classifier.{name}"])
        np.testing.assert_allclose(fisher.numpy(), f, rtol=1e-5, atol=1e-8)
    # The two estimates differ here, so the check above tells which one ftray computes.
    assert np.abs(fw - ew).max() > 0.1 * np.abs(fw).max()


def test_ewc_penalty_and_its_pull_are_lambda_f_delta(ray_session, linear_world):
    """loss = task loss + lambda/2 * sum F (theta - theta_old)^2, and so its gradient adds
    lambda * F * (theta - theta_old): weights that mattered for the old task are pulled back
    hardest. With a grown head, only the old classes' rows are anchored."""
    w, x, y = linear_world
    lam = 7.0
    m, model = linear_method(w, LINEAR_NEW, ewc_lambda=lam)
    plain, _ = linear_method(w, LINEAR_NEW, ewc_lambda=0.0)
    terms = fisher_terms(m, model, x, y)
    fw = terms[id(model.classifier.weight)][2].double().numpy()
    fb = terms[id(model.classifier.bias)][2].double().numpy()
    batch = {"x": torch.randn(6, 4), "y": torch.tensor([3, 4, 3, 4, 3, 4])}

    def penalty_and_pull():
        grads = []
        for method in (m, plain):
            loss = method.loss(model, batch)[0]
            grads.append((float(loss.detach()),
                          *torch.autograd.grad(loss, [model.classifier.weight, model.classifier.bias])))
        (with_ewc, gw, gb), (without, pw, pb) = grads
        return with_ewc - without, (gw - pw).double().numpy(), (gb - pb).double().numpy()

    assert penalty_and_pull()[0] == pytest.approx(0.0, abs=1e-6)  # at the old weights: no penalty
    dw, db = np.random.default_rng(1).normal(0, 0.5, (5, 4)), np.random.default_rng(2).normal(0, 0.5, 5)
    with torch.no_grad():
        model.classifier.weight += torch.tensor(dw, dtype=torch.float32)
        model.classifier.bias += torch.tensor(db, dtype=torch.float32)
    penalty, pull_w, pull_b = penalty_and_pull()
    assert penalty == pytest.approx(lam / 2 * ((fw * dw[:3] ** 2).sum() + (fb * db[:3] ** 2).sum()), rel=1e-4)
    np.testing.assert_allclose(pull_w[:3], lam * fw * dw[:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pull_b[:3], lam * fb * db[:3], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pull_w[3:], 0, atol=1e-7)  # the new classes' rows are free
    np.testing.assert_allclose(pull_b[3:], 0, atol=1e-7)


def features(table):
    return np.stack(table.column("x").to_numpy(zero_copy_only=False)), table.column("label").to_numpy()


def test_ewc_alone_forgets_less_than_no_defence(ray_session, tmp_path):
    """No replay: an mlp fit to old blobs of classes 0-2 continues on new blobs of the same classes
    (30 SGD steps, the method's own loss and Fisher). Without a defence it loses a fifth of the old
    task; the EWC penalty alone keeps nearly all of it and still learns the new one."""
    xo, yo = features(blobs(90, classes=3))
    xn, yn = features(blobs(90, classes=3, seed=1))
    torch.manual_seed(0)
    old = MLP(MLPModel(layers=1, units=16), OLD)
    opt = torch.optim.SGD(old.parameters(), lr=0.1)
    for _ in range(100):
        torch.nn.functional.cross_entropy(old({"x": torch.tensor(xo)}), torch.tensor(yo)).backward()
        opt.step()
        opt.zero_grad()
    old.export(tmp_path / "old_run" / "model")

    def continued(ewc_lambda):
        raw = spec_of(tmp_path, replay_ratio=0, ewc_lambda=ewc_lambda, fisher_rows=90)
        raw["data"]["classes"] = [0, 1, 2]
        raw["train"] = {"batch_size": 30, "lr": 0.1, "optimizer": {"name": "sgd"}}
        m = get_method(JobSpec.model_validate(raw))
        model = m.build(OLD, None)
        m.prepare(model)
        m.attach(torch.device("cpu"))
        m.run_epoch(SimpleNamespace(model=model, worker=SimpleNamespace(device=torch.device("cpu")),
                                    data=lambda name: rows(x=xo, y=yo)), 1)
        opt = make_optimizer(m.spec, m.param_groups(model))
        for step in range(30):
            part = slice(step * 30 % 90, step * 30 % 90 + 30)
            m.loss(model, {"x": torch.tensor(xn[part]), "y": torch.tensor(yn[part])})[0].backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            return [float((model({"x": torch.tensor(x)}).argmax(-1).numpy() == y).mean()) for x, y in
                    ((xo, yo), (xn, yn))]

    old_before = float((old({"x": torch.tensor(xo)}).argmax(-1).numpy() == yo).mean())
    (plain_old, plain_new), (ewc_old, ewc_new) = continued(0.0), continued(1e4)
    assert old_before == 1.0
    assert old_before - plain_old > 0.15  # without a defence it forgets
    assert old_before - ewc_old < (old_before - plain_old) / 4
    assert ewc_new > 0.95 and plain_new > 0.95


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


@pytest.mark.slow  # ~2 min; incremental end to end stays in the default run through tests/test_runner.py (a run and a packed trial, equal metrics)
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


@pytest.mark.slow
def test_incremental_job_figures(ray_session, tmp_path, capsys, monkeypatch):
    """README's `jobs/incremental.yaml` figures, on the jobs as shipped (deterministic runs)."""
    monkeypatch.chdir(REPO)
    job_summary(capsys, "run", "pretrain_digits.yaml", tmp_path)
    start = ("--set", f"model.init_from={tmp_path}/pretrain_digits")
    c = job_summary(capsys, "run", "incremental.yaml", tmp_path, *start)["continual"]
    p = job_summary(capsys, "run", "incremental.yaml", tmp_path, *start, "--set", "method.replay_ratio=0",
                    "--set", "method.ewc_lambda=0", "--set", "run.name=incremental_plain")["continual"]
    FIGURES["incremental.old_before"].check(c["old_before"])
    FIGURES["incremental.old_after"].check(c["old_after"])
    FIGURES["incremental.forgetting"].check(c["forgetting"])
    FIGURES["incremental.new_after"].check(c["new_after"])
    FIGURES["incremental.plain_old_after"].check(p["old_after"])
    FIGURES["incremental.plain_forgetting"].check(p["forgetting"])
    FIGURES["incremental.plain_new_after"].check(p["new_after"])
