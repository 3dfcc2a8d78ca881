"""`meta`: tasks are held out whole, adaptation fits a task, bad task data stops before Ray starts,
and jobs/meta.yaml (on two workers) meta-learns a start that beats the jointly trained baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli, data
from ftray.methods import get_method
from ftray.methods.meta import task_tables
from ftray.models import ModelInfo
from ftray.spec import JobSpec
from tests.conftest import REPO, job_summary, write_spec

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
    start = {n: p.detach() for n, p in model.named_parameters()}
    x, y = torch.linspace(-2, 2, 5).unsqueeze(1), 2 * torch.sin(torch.linspace(-2, 2, 5))
    before = float(m._loss(model, start, x, y))
    after = float(m._loss(model, m._adapt(model, start, x, y, steps=20), x, y))
    assert after < 0.5 * before
    assert all(torch.equal(start[n], p) for n, p in model.named_parameters())  # the start is untouched




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


def test_meta_job_on_two_workers_beats_the_joint_baseline(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "meta.yaml", tmp_path, "--set", "train.epochs=4", "--set", "scaling.num_workers=2")
    f = s["fewshot"]
    assert (f["metric"], f["shots"], f["steps"]) == ("val_mse", 10, 5)
    assert f["meta"] == pytest.approx(s["metrics"]["val_mse"])
    assert f["meta"] < 0.8 * f["baseline"], f
    assert (s["data"]["train_rows"], s["data"]["val_rows"]) == (900, 100)  # a row is a task
    assert s["steps_done"] == 4 * 113  # 450 tasks per worker, 4 per worker and meta-batch
