"""`ftray sweep` with packed trials: PBT/PB2 mutate hyperparameters of running trials from their
checkpoints, and `tune.group_by` runs a sweep per task. Bad combinations exit 2 before Ray starts."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray import cli, sweep, train
from ftray.spec import SpecError, load_spec
from tests.conftest import REPO, blobs, job_summary, mlp_spec, write_spec
from tests.figures import FIGURES

# Best validation accuracy of jobs/pbt.yaml cut to 4 epochs (one run on the 2-core machine: 0.925).
PBT_JOB_4_EPOCHS_MIN_ACCURACY = 0.85
PBT_SPACE = {"train.lr": {"loguniform": [0.001, 0.3]}, "train.optimizer.momentum": {"uniform": [0.0, 0.9]}}


def pbt_spec(tmp_path, data_path, name="pbt", scheduler=None, **tune):
    raw = mlp_spec(data_path, tmp_path / "runs", name,
                   train={"epochs": 3, "batch_size": 32, "optimizer": {"name": "sgd", "momentum": 0.5}})
    raw["tune"] = {"space": PBT_SPACE, "metric": "val_loss", "mode": "min", "num_samples": 2,
                   "max_concurrent": 2, "trial": "packed",
                   "scheduler": scheduler or {"name": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                                                 "synch": True},
                   **tune}
    return write_spec(tmp_path / f"{name}.yaml", raw)


@pytest.mark.parametrize("change, expected", [
    ({"trial": "train"}, "tune.scheduler.name: pbt exploits trial checkpoints, which only packed trials report"),
    ({"searcher": "optuna"}, "tune.searcher: pbt picks new values itself"),
    ({"num_samples": 1}, "tune.num_samples: pbt needs a population of at least 2"),
    ({"space": {"model.units": {"choice": [8, 16]}}}, "tune.space: pbt needs at least one key it can change"),
    ({"scheduler": {"name": "pbt", "grace_period": 1}}, "tune.scheduler.grace_period: unknown key"),
    ({"scheduler": {"name": "pbt", "quantile_fraction": 0.9}}, "tune.scheduler.quantile_fraction"),
    ({"scheduler": {"name": "pb2", "resample_probability": 0.5}}, "tune.scheduler.resample_probability: unknown key"),
    ({"scheduler": {"name": "pb2"}, "space": {"train.lr": {"choice": [0.1, 0.01]}}},
     "tune.space.train.lr: pb2 searches continuous bounds"),
    ({"scheduler": {"name": "asha", "perturbation_interval": 2}}, "tune.scheduler.perturbation_interval: unknown key"),
    ({"scheduler": {"name": "fifo", "grace_period": 2}}, "tune.scheduler.grace_period: unknown key"),
    ({"scheduler": {"name": "pbt2"}}, "tune.scheduler: unknown name 'pbt2'"),
    ({"group_by": "label"}, "tune.group_by: 'label' is the label or a feature"),
])
def test_bad_pbt_and_group_sections(tmp_path, blobs_parquet, no_ray, capsys, change, expected):
    path = pbt_spec(tmp_path, blobs_parquet, **change)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "Traceback" not in err


def test_packed_trials_train_in_one_process(tmp_path, blobs_parquet):
    path = pbt_spec(tmp_path, blobs_parquet)
    with pytest.raises(SpecError, match="scaling.num_workers: a packed trial trains in one process"):
        load_spec(path, ["scaling.num_workers=2"])


@pytest.mark.parametrize("group_by, rows, expected", [
    ("task_id", None, "tune.group_by: data.path: "),  # no such column
    ("task", [0] * 120, "has 1 distinct value(s)"),
])
def test_bad_group_by_column(tmp_path, no_ray, capsys, group_by, rows, expected):
    table = blobs(120).append_column("task", pa.array(rows or [i % 2 for i in range(120)]))
    pq.write_table(table, tmp_path / "d.parquet")
    path = pbt_spec(tmp_path, tmp_path / "d.parquet", scheduler={"name": "fifo"}, group_by=group_by)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    if group_by == "task_id":
        assert "no column 'task_id'" in err


def test_adopted_hyperparameters_keep_state_and_schedule_position():
    """PBT's exploit: the checkpoint's optimizer state and LR-schedule position, the new spec's values."""
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [w], "lr": 0.1, "lr_scale": 1.0}], lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** step)
    for _ in range(2):
        w.grad = torch.ones(3)
        opt.step()
        sched.step()
    buf = opt.state[w]["momentum_buffer"].clone()
    fresh = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(3))], "lr": 0.4, "lr_scale": 1.0}],
                            lr=0.4, momentum=0.8)
    train.adopt_hyperparameters(opt, sched, fresh)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * 0.25)  # the new peak, two halvings in
    assert opt.param_groups[0]["momentum"] == 0.8
    assert torch.equal(opt.state[w]["momentum_buffer"], buf)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * 0.125)
    with pytest.raises(ValueError, match="cannot change the optimizer"):
        train.adopt_hyperparameters(opt, sched, torch.optim.Adam([torch.nn.Parameter(torch.ones(1))]))


def test_pbt_mutations_stay_in_the_searched_range():
    clip = sweep.Clip({"train.optimizer.momentum": {"uniform": [0.0, 0.9]}, "model.units": {"choice": [8, 16]},
                       "model.layers": {"randint": [1, 4]}})
    assert clip({"train.optimizer.momentum": 1.08, "model.units": 16, "model.layers": 7}) == \
        {"train.optimizer.momentum": 0.9, "model.units": 16, "model.layers": 4}


def test_pbt_sweep_exploits_and_mutates(ray_session, tmp_path, capsys):
    pq.write_table(blobs(150, seed=5), tmp_path / "d.parquet")
    path = pbt_spec(tmp_path, tmp_path / "d.parquet")
    assert cli.main(["sweep", str(path)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["trials"] == 2
    # With two trials and quantile 0.5, the worse one copies the better one at every perturbation:
    # after epochs 1 and 2 (the last epoch ends the trials, so none after epoch 3).
    pbt = summary["pbt"]
    assert pbt["exploits"] == 2 and all(step["trial"] != step["copied"] for step in pbt["log"])
    first = pbt["log"][0]
    assert first["new_config"] != first["copied_config"]
    assert set(first["new_config"]) >= set(PBT_SPACE)
    for trial in (folder / "trials").iterdir():
        s = json.loads((trial / "summary.json").read_text())
        assert s["status"] == "succeeded" and s["epochs_done"] == 3 and len(s["history"]) == 3
    # The exploited trial continued from its donor's checkpoint: its history says it resumed.
    resumed = [json.loads((t / "summary.json").read_text())["resumes"] for t in (folder / "trials").iterdir()]
    assert any(resumed)
    assert (folder / "best.yaml").is_file()


def test_group_by_sweeps_each_task(ray_session, tmp_path, capsys):
    one, two = blobs(90, seed=1), blobs(90, classes=2, seed=2)
    table = pa.concat_tables([t.append_column("task", pa.array([name] * 90)) for name, t in
                              (("a b", one), ("c", two))])
    pq.write_table(table, tmp_path / "d.parquet")
    path = pbt_spec(tmp_path, tmp_path / "d.parquet", scheduler={"name": "fifo"}, group_by="task",
                    space={"model.units": {"choice": [4, 16]}}, searcher="grid", num_samples=1)
    assert cli.main(["sweep", str(path), "--set", "train.epochs=1"]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    rows = list(csv.DictReader((folder / "tasks.csv").open()))
    assert [r["task"] for r in rows] == ["a b", "c"] and all(r["model.units"] in ("4", "16") for r in rows)
    assert [int(r["trials"]) for r in rows] == [2, 2]
    for name, classes in (("a_b", 3), ("c", 2)):
        spec = load_spec(folder / "best" / f"{name}.yaml")
        assert spec.tune is None
        task_rows = pq.read_table(spec.data.path)
        assert task_rows.num_rows == 90 and "task" not in task_rows.column_names
        assert len(set(task_rows.column("label").to_pylist())) == classes
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and [t["task"] for t in summary["tasks"]] == ["a b", "c"]


def pbt_job(tmp_path, *overrides: str) -> tuple[Path, dict]:
    """`ftray sweep jobs/pbt.yaml` in a subprocess, so that a hang fails the test (the guard is ~10x
    the job's normal time); returns the sweep folder and its summary, after checking every trial
    trained every epoch."""
    r = subprocess.run([sys.executable, "-m", "ftray", "sweep", str(REPO / "jobs" / "pbt.yaml"),
                        "--set", f"run.storage_path={tmp_path / 'runs'}",
                        *(arg for o in overrides for arg in ("--set", o))],
                       cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    folder = Path(r.stdout.strip().splitlines()[-1])
    s = json.loads((folder / "summary.json").read_text())
    epochs = load_spec(REPO / "jobs" / "pbt.yaml", list(overrides)).train.epochs
    assert s["status"] == "succeeded" and s["trials"] == 4 and s["stopped_early"] == 0
    for trial in (folder / "trials").iterdir():
        t = json.loads((trial / "summary.json").read_text())
        assert t["status"] == "succeeded" and t["epochs_done"] == epochs
    assert s["trial_epochs"] == 4 * epochs
    return folder, s


def test_pbt_job_ends_with_an_exploit_due_on_its_last_epoch(tmp_path):
    """`jobs/pbt.yaml` (4 trials, 2 at a time, synchronous PBT every 2 epochs) cut to 4 epochs, so
    that a perturbation falls due on the last epoch. Before the fix, the trials paused there were
    restored from their last checkpoint and paused again without end (the shipped job never ended)."""
    _, s = pbt_job(tmp_path, "train.epochs=4")
    # The epoch-2 perturbation copied the worst trial (quantile 0.25 of 4) from a better one; the one
    # due at epoch 4 does not happen: a trial's last epoch ends it.
    assert s["pbt"]["exploits"] == 1
    assert s["best"]["metrics"]["val_accuracy"] > PBT_JOB_4_EPOCHS_MIN_ACCURACY, s["best"]


@pytest.mark.slow
def test_pbt_job_as_shipped(tmp_path):
    """README's `jobs/pbt.yaml` figures: 8 epochs, an exploit at each of epochs 2, 4 and 6."""
    _, s = pbt_job(tmp_path)
    FIGURES["pbt.exploits"].check(s["pbt"]["exploits"])
    FIGURES["pbt.best"].check(s["best"]["metrics"]["val_accuracy"])


def test_ensemble_job_stacks_past_its_best_member(ray_session, tmp_path, capsys, monkeypatch):
    """README's `jobs/ensemble.yaml` figures, on the job as shipped (its trials are deterministic:
    seeded random search, seeded training): 5 members, stacked 96.4% against the best member's 95.8%;
    re-runs with `combine: average` / `vote` restore the finished trials and combine them again
    (95.5% / 95.0%)."""
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "sweep", "ensemble.yaml", tmp_path)
    ens = s["ensemble"]
    members = sorted((m["val_accuracy"] for m in ens["member_metrics"]), reverse=True)
    assert len(ens["members"]) == 5 and ens["combine"] == "stack"
    assert ens["best_single"]["val_accuracy"] == pytest.approx(members[0], abs=1e-6) == pytest.approx(
        s["best"]["metrics"]["val_accuracy"], abs=1e-6)
    FIGURES["ensemble.member1"].check(members[0])
    FIGURES["ensemble.member2"].check(members[1])
    FIGURES["ensemble.member3"].check(members[2])
    FIGURES["ensemble.member4"].check(members[3])
    FIGURES["ensemble.member5"].check(members[4])
    FIGURES["ensemble.best_member"].check(members[0])
    FIGURES["ensemble.stacked"].check(ens["metric"]["val_accuracy"])
    assert ens["metric"]["val_accuracy"] > members[0]

    def recombined(combine: str) -> float:
        again = job_summary(capsys, "sweep", "ensemble.yaml", tmp_path, "--set", f"tune.ensemble.combine={combine}")
        assert again["trials"] == 8 and again["ensemble"]["combine"] == combine
        assert again["ensemble"]["member_metrics"] == ens["member_metrics"]
        # Restored, not trained again: a new Tuner would name its trials anew.
        assert again["ensemble"]["members"] == ens["members"] and again["best"]["trial_id"] == s["best"]["trial_id"]
        return again["ensemble"]["metric"]["val_accuracy"]
    FIGURES["ensemble.averaged"].check(recombined("average"))
    FIGURES["ensemble.voted"].check(recombined("vote"))
