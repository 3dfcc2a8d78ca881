"""`ftray sweep`: the tune section and searched keys are checked before Ray starts; a real sweep
writes its folder, and a re-run restores it instead of repeating finished trials."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import torch

from ftray import cli, ray_context, sweep
from ftray.models import load_exported
from ftray.models.ensemble import combine
from ftray.spec import SpecError, load_spec, read_spec_file
from tests.conftest import blobs, mlp_spec, write_spec

SPACE = {"train.lr": {"loguniform": [0.001, 0.1]}, "model.units": {"choice": [8, 16]},
         "train.optimizer.name": {"choice": ["sgd", "adam"]}}


def sweep_spec(tmp_path, data_path, **tune):
    raw = mlp_spec(data_path, tmp_path / "runs", "sw", train={"epochs": 2, "batch_size": 32})
    raw["tune"] = {"space": SPACE, "metric": "val_accuracy", "mode": "max", "num_samples": 3,
                   "max_concurrent": 2, "scheduler": {"name": "asha", "grace_period": 1},
                   "ensemble": {"top_k": 2, "combine": "average"}, **tune}
    return write_spec(tmp_path / "sweep.yaml", raw)


@pytest.mark.parametrize("change, expected", [
    ({"space": {"train.lrr": {"choice": [0.1]}}}, "tune.space.train.lrr = 0.1: unknown key"),
    ({"space": {"model.dropout": {"choice": [0.1, 1.5]}}}, "tune.space.model.dropout = 1.5: Input should be less than 1"),
    ({"space": {"train.optimizer.name": {"choice": ["sgd", "lion"]}}}, "tune.space.train.optimizer.name = 'lion'"),
])
def test_searched_keys_are_checked_before_ray(tmp_path, blobs_parquet, monkeypatch, capsys, change, expected):
    monkeypatch.setattr(ray_context, "use_ray", lambda *a, **k: (_ for _ in ()).throw(AssertionError("Ray started")))
    path = sweep_spec(tmp_path, blobs_parquet, **change)
    assert cli.main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("tune, expected", [
    ({"space": {"train.lr": {"uniform": [0.1]}}}, "needs [low, high]"),
    ({"space": {"train.lr": {"loguniform": [0, 1]}}}, "bounds must be positive"),
    ({"space": {"train.lr": {"uniform": [0.1, 0.2], "choice": [1]}}}, "exactly one distribution"),
    ({"space": {"train.lr": {"normal": [0, 1]}}}, "tune.space.train.lr"),
    ({"searcher": "grid"}, "the grid searcher takes only grid/choice"),
    ({"metric": "val_mse"}, "tune.metric: 'val_mse' is not reported"),
    ({"space": {}}, "name at least one spec key"),
])
def test_bad_tune_sections(tmp_path, blobs_parquet, tune, expected):
    with pytest.raises(SpecError) as e:
        load_spec(sweep_spec(tmp_path, blobs_parquet, **tune))
    assert expected in str(e.value)


def test_trial_spec_applies_values_through_validation(tmp_path, blobs_parquet):
    path = sweep_spec(tmp_path, blobs_parquet)
    raw = read_spec_file(path)
    spec = sweep.trial_spec(raw, {"train.optimizer.name": "sgd", "model.units": 16, "train.lr": 0.05},
                               str(tmp_path / "sw"), "trial_1", str(path))
    assert spec.train.optimizer.name == "sgd" and spec.model.units == 16 and spec.train.lr == 0.05
    assert spec.run.name == "trial_1" and spec.run.storage_path == str(tmp_path / "sw" / "trials")
    assert spec.tune is None


def test_sweep_writes_its_folder_and_restores(ray_session, tmp_path, capsys):
    pq.write_table(blobs(120, seed=3), tmp_path / "d.parquet")
    # FIFO: every trial runs to the end (each scheduler stopping a trial, and each searcher's
    # proposals reaching the trials, are tests/test_sweep_search.py's).
    path = sweep_spec(tmp_path, tmp_path / "d.parquet", scheduler={"name": "fifo"})
    assert cli.main(["sweep", str(path)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == tmp_path / "runs" / "sw"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["trials"] == 3
    best = summary["best"]
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert len(rows) == 3 and {"train.lr", "model.units", "val_accuracy", "iterations", "status"} <= set(rows[0])
    assert len({r["trial_id"] for r in rows}) == 3 and all(r["status"] == "done" for r in rows)
    # The best trial is trials.csv's best row: its values, its metric, the highest metric of all.
    by_id = {r["trial_id"]: r for r in rows}
    row = by_id[best["trial_id"]]
    assert float(row["val_accuracy"]) == max(float(r["val_accuracy"]) for r in rows)
    assert float(row["val_accuracy"]) == pytest.approx(best["metrics"]["val_accuracy"], abs=1e-9)
    assert (float(row["train.lr"]), int(row["model.units"]), row["train.optimizer.name"]) == (
        best["config"]["train.lr"], best["config"]["model.units"], best["config"]["train.optimizer.name"])
    for trial_id, r in by_id.items():  # each trial folder: that trial's values trained, its metric reported
        trial_summary = json.loads((folder / "trials" / trial_id / "summary.json").read_text())
        assert trial_summary["status"] == "succeeded" and len(trial_summary["history"]) == 2
        assert trial_summary["metrics"]["val_accuracy"] == pytest.approx(float(r["val_accuracy"]), abs=1e-9)
        trained = trial_summary["spec"]
        assert (trained["train"]["lr"], trained["model"]["units"], trained["train"]["optimizer"]["name"]) == (
            float(r["train.lr"]), int(r["model.units"]), r["train.optimizer.name"])
    # best.yaml is the sweep's spec with the best trial's values and no tune section.
    best_spec = load_spec(folder / "best.yaml")
    assert (best_spec.train.lr, best_spec.model.units, best_spec.train.optimizer.name) == (
        best["config"]["train.lr"], best["config"]["model.units"], best["config"]["train.optimizer.name"])
    assert best_spec.tune is None
    for png in ("curves.png", "params.png"):
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"

    # The ensemble of the two best trials: exported, loadable, and its reported accuracy is real.
    ens = summary["ensemble"]
    assert ens["combine"] == "average" and len(ens["members"]) == 2 and ens["members"][0] == best["trial_id"]
    model = load_exported(ens["model"]).eval()
    batch = sweep.validation_batch(load_spec(path))
    acc = float((model(batch).argmax(-1) == batch["y"]).float().mean())
    assert acc == pytest.approx(ens["metric"]["val_accuracy"])
    assert ens["best_single"]["val_accuracy"] == pytest.approx(best["metrics"]["val_accuracy"], abs=1e-6)

    # A re-run restores the finished sweep: no trial runs again, and each trial's result, the best
    # trial and its metric are the first run's, by trial id (a new Tuner would name new trials).
    mtimes = {p: p.stat().st_mtime_ns for p in (folder / "trials").rglob("summary.json")}
    assert cli.main(["sweep", str(path)]) == 0
    capsys.readouterr()
    again = {r["trial_id"]: r for r in csv.DictReader((folder / "trials.csv").open())}
    assert again == by_id
    assert json.loads((folder / "summary.json").read_text())["best"] == best
    assert {p: p.stat().st_mtime_ns for p in (folder / "trials").rglob("summary.json")} == mtimes
    assert len(list((folder / "trials").iterdir())) == 3


def test_combining_rules():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    b = torch.tensor([[0.0, 2.5, 0.0], [0.0, 2.0, 0.0]])
    c = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert combine([a, b, c], "vote", "classification").argmax(-1).tolist() == [0, 1]
    avg = combine([a, b], "average", "classification")
    assert torch.allclose(avg.exp().sum(-1), torch.ones(2))
    stacker = {"coef": [[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1.0, 0], [0, 0, 0, 0, 0, 1.0]], "intercept": [0, 0, 0]}
    assert combine([a, b], "stack", "classification", stacker).shape == (2, 3)
    assert combine([torch.tensor([1.0, 3.0]), torch.tensor([3.0, 5.0])], "vote", "regression").tolist() == [2.0, 4.0]
