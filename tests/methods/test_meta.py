"""`meta`: tasks are held out whole, adaptation fits a task, bad task data stops before Ray starts,
and jobs/meta.yaml (on two workers) meta-learns a start that beats the jointly trained baseline."""

from __future__ import annotations

import itertools
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli, data
from ftray.methods import get_method
from ftray.methods.meta.hooks import task_tables
from ftray.models import ModelInfo
from ftray.numerics import make_optimizer, make_scheduler
from ftray.spec import JobSpec
from ftray.train import Loop, Worker, _optimizer_step
from tests.conftest import REPO, cli_summary, job_summary, write_spec
from tests.figures import FIGURES
from tests.methods.shards import rows

INFO = ModelInfo("regression", 1)


def sines(path: Path, tasks: int = 12, rows: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5, 5, (tasks, rows))
    y = rng.uniform(0.1, 5, (tasks, 1)) * np.sin(x - rng.uniform(0, np.pi, (tasks, 1)))
    pq.write_table(pa.table({"task": np.repeat(np.arange(tasks), rows), "x": x.reshape(-1).astype(np.float32),
                             "y": y.reshape(-1).astype(np.float32)}), path)
    return path


def spec_of(tmp_path: Path, **method) -> dict:
    return {"model": {"name": "mlp", "layers": 2, "units": 16},
            "data": {"path": str(tmp_path / "sines.parquet"), "task": "regression", "features": ["x"], "label": "y",
                     "val_fraction": 0.25},
            "method": {"name": "meta", "shots": 3, **method},
            "train": {"batch_size": 4},
            "run": {"name": "meta", "storage_path": str(tmp_path / "runs")}}


def test_held_out_tasks_are_whole_tasks(tmp_path):
    sines(tmp_path / "sines.parquet")
    spec = JobSpec.model_validate(spec_of(tmp_path))
    train_tasks, held = task_tables(spec, data.inspect(spec))
    assert len(train_tasks) == 9 and len(held) == 3
    assert not {n for n, _ in train_tasks} & {n for n, _ in held}
    assert all(rows.num_rows == 8 for _, rows in train_tasks + held)


def test_adaptation_fits_the_support_rows(tmp_path):
    spec = JobSpec.model_validate(spec_of(tmp_path, inner_lr=0.05))
    m = get_method(spec)
    model = m.build(INFO, None)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}  # a copy: adaptation must not write it
    x, y = torch.linspace(-2, 2, 5).unsqueeze(1), 2 * torch.sin(torch.linspace(-2, 2, 5))
    before = float(m._loss(model, start, x, y))
    after = float(m._loss(model, m._adapt(model, start, x, y, steps=20), x, y))
    assert after < 0.5 * before
    assert all(torch.equal(start[n], p) for n, p in model.named_parameters())  # the start is untouched




# Two tasks of four rows for a linear model y = w x + b under squared loss: one meta-batch of both.
TASKS = {"x": [np.array([[-1.0], [0.5], [2.0], [1.0]], np.float32), np.array([[0.0], [-2.0], [1.5], [3.0]], np.float32)],
         "y": [np.array([1.0, 0.0, -2.0, 3.0], np.float32), np.array([0.5, 2.0, -1.0, 1.0], np.float32)]}
W0, B0, INNER_LR, INNER_STEPS, META_LR = 0.5, -0.2, 0.1, 3, 0.5


def mse_grad(w, b, x, y):
    r = w * x + b - y  # d/dw mean(r^2) = 2 mean(r x), d/db = 2 mean(r)
    return 2 * np.mean(r * x), 2 * np.mean(r)


def by_hand(algorithm, split):
    """One meta-step from (W0, B0) with each task's (support, query) rows as `split` says, in float64:
    INNER_STEPS plain SGD steps on the support rows give the adapted (w_j, b_j); the meta-gradient is
    Reptile's (w, b) - mean_j (w_j, b_j) or first-order MAML's mean_j of the query-loss gradient at
    (w_j, b_j); SGD at META_LR applies it. Also the summed query loss at the adapted weights."""
    adapted, grads, query_loss = [], [], 0.0
    for x, y, (support, query) in zip(TASKS["x"], TASKS["y"], split):
        x, y = x[:, 0].astype(np.float64), y.astype(np.float64)
        w, b = W0, B0
        for _ in range(INNER_STEPS):
            gw, gb = mse_grad(w, b, x[support], y[support])
            w, b = w - INNER_LR * gw, b - INNER_LR * gb
        adapted.append((w, b))
        grads.append(mse_grad(w, b, x[query], y[query]))
        query_loss += np.mean((w * x[query] + b - y[query]) ** 2)
    if algorithm == "reptile":
        meta = np.array([W0, B0]) - np.mean(adapted, 0)
    else:
        meta = np.mean(grads, 0)
    return np.array([W0, B0]) - META_LR * meta, query_loss


def splits():
    """Every way to draw 2 support and 2 query rows from each task (the epoch draws them at random)."""
    halves = [(list(s), [i for i in range(4) if i not in s]) for s in itertools.combinations(range(4), 2)]
    return itertools.product(halves, repeat=2)


@pytest.mark.parametrize("algorithm", ["reptile", "fomaml"])
def test_one_meta_step_matches_the_hand_computed_one(ray_session, tmp_path, algorithm):
    raw = spec_of(tmp_path, algorithm=algorithm, shots=2, inner_steps=INNER_STEPS, inner_lr=INNER_LR)
    raw["model"] = {"name": "mlp", "layers": 0}
    raw["data"]["shuffle_buffer"] = 0
    raw["train"] = {"batch_size": 2, "lr": META_LR, "optimizer": {"name": "sgd"}}
    spec = JobSpec.model_validate(raw)
    m = get_method(spec)
    model = m.build(INFO, None)
    with torch.no_grad():
        model.classifier.weight.fill_(W0)
        model.classifier.bias.fill_(B0)
    # The training loop's own pieces: the spec's optimizer and the shared step (clip, schedule).
    optimizer = make_optimizer(spec, m.param_groups(model))
    scheduler = make_scheduler(spec, optimizer, steps_per_epoch=1)
    worker = Worker(rank=0, world=1, device=torch.device("cpu"), train_data=rows(**TASKS), val_data=None,
                    resume=None, report=lambda metrics, folder: None)
    loop = Loop(spec, model, optimizer, worker, nullcontext(),
                step=lambda: _optimizer_step(spec, model, optimizer, scheduler, None))
    loss_sum, seen = m.run_epoch(loop, epoch=1)
    got = np.array([float(model.classifier.weight.detach()), float(model.classifier.bias.detach())])
    assert seen == 2
    # The rows the epoch drew are its own (seeded) choice: the step must be the hand-computed one for
    # one of the ways to draw them, and its reported loss the query loss of that same draw.
    matches = [(theta, loss) for theta, loss in (by_hand(algorithm, s) for s in splits())
               if np.allclose(theta, got, rtol=1e-5, atol=1e-6)]
    assert matches, f"{got} is no hand-computed {algorithm} step"
    assert any(float(loss_sum) == pytest.approx(loss, rel=1e-5) for _, loss in matches)
    assert not np.allclose(got, [W0, B0], atol=1e-3)  # the start moved


@pytest.mark.parametrize("change, message", [
    ({"task_column": "episode"}, "no column 'episode'"),
    ({"shots": 5}, "has 8 rows; method.shots: 5 needs at least 10 per task"),
], ids=["no task column", "too few rows for k shots"])
def test_bad_task_data_exits_2_before_ray(tmp_path, capsys, no_ray, change, message):
    sines(tmp_path / "sines.parquet")
    path = write_spec(tmp_path / "job.yaml", spec_of(tmp_path, **change))
    for command in ("validate", "run"):
        assert cli.main([command, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ftray: error: ") and message in err and str(tmp_path / "sines.parquet") in err, err
        assert "Traceback" not in err


def test_meta_takes_one_step_per_meta_batch(tmp_path, capsys):
    raw = spec_of(tmp_path)
    raw["train"]["grad_accum_steps"] = 2
    assert cli.main(["validate", "--spec-only", str(write_spec(tmp_path / "job.yaml", raw))]) == 2
    assert "train.grad_accum_steps: meta takes one step per meta-batch" in capsys.readouterr().err


def test_fomaml_runs_end_to_end(ray_session, tmp_path, capsys):
    """First-order MAML through `ftray run` on a small budget: one outer step per meta-batch of 4 of
    the 9 training tasks, k-shot validation on the 3 held-out ones, the summary's few-shot block."""
    sines(tmp_path / "sines.parquet")
    raw = spec_of(tmp_path, algorithm="fomaml", inner_steps=2, eval_steps=3)
    raw["train"].update({"epochs": 2, "lr": 0.01})
    s = cli_summary(capsys, "run", str(write_spec(tmp_path / "job.yaml", raw)))
    f = s["fewshot"]
    assert (f["metric"], f["shots"], f["steps"]) == ("val_mse", 3, 3)
    assert f["meta"] == pytest.approx(s["metrics"]["val_mse"]) and np.isfinite(f["baseline"])
    assert (s["data"]["train_rows"], s["data"]["val_rows"]) == (9, 3)
    assert s["steps_done"] == 2 * 3  # 9 tasks in meta-batches of 4: 3 steps per epoch


@pytest.mark.slow  # ~70 s; meta end to end stays in the default run (test_fomaml_runs_end_to_end, tests/test_runner.py)
def test_meta_job_on_two_workers_beats_the_joint_baseline(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "meta.yaml", tmp_path, "--set", "train.epochs=4", "--set", "scaling.num_workers=2")
    f = s["fewshot"]
    assert (f["metric"], f["shots"], f["steps"]) == ("val_mse", 10, 5)
    assert f["meta"] == pytest.approx(s["metrics"]["val_mse"])
    assert f["meta"] < 0.8 * f["baseline"], f
    assert (s["data"]["train_rows"], s["data"]["val_rows"]) == (900, 100)  # a row is a task
    assert s["steps_done"] == 4 * 113  # 450 tasks per worker, 4 per worker and meta-batch


@pytest.mark.slow
def test_meta_job_figures(ray_session, tmp_path, capsys, monkeypatch):
    """README's `jobs/meta.yaml` figures: 10-shot MSE after 5 steps, meta-learned start against the
    jointly trained baseline, on the job as shipped."""
    monkeypatch.chdir(REPO)
    f = job_summary(capsys, "run", "meta.yaml", tmp_path)["fewshot"]
    FIGURES["meta.meta_mse"].check(f["meta"])
    FIGURES["meta.baseline_mse"].check(f["baseline"])
