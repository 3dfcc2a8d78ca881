"""`ftray runs [STORAGE]` and `ftray runs show NAME` over a storage path holding real runs: a run
resumed once, a sweep of packed trials, a run killed before its summary, and an unrelated folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftray import cli, runs
from tests.conftest import blobs, mlp_spec, write_spec


@pytest.fixture(scope="module")
def storage(ray_session, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("runs_listing")
    pq.write_table(blobs(120, seed=3), tmp / "d.parquet")
    store = tmp / "runs"
    run = write_spec(tmp / "alpha.yaml", mlp_spec(tmp / "d.parquet", store, "alpha",
                                                  train={"epochs": 1, "batch_size": 32}))
    sweep = mlp_spec(tmp / "d.parquet", store, "grid", train={"epochs": 1, "batch_size": 32})
    sweep["tune"] = {"space": {"train.lr": {"choice": [0.01, 0.1]}}, "metric": "val_loss", "mode": "min",
                     "num_samples": 1, "max_concurrent": 1, "trial": "packed", "searcher": "grid"}
    sweep = write_spec(tmp / "grid.yaml", sweep)
    for argv in (["run", str(run)], ["run", str(run), "--set", "train.epochs=2"], ["sweep", str(sweep)]):
        assert cli.main(argv) == 0, argv
    # A run killed after a checkpoint, before its summary: its folder without summary.json.
    shutil.copytree(store / "alpha", store / "killed")
    (store / "killed" / "summary.json").unlink()
    (store / "notes").mkdir()  # neither a run nor a sweep
    (store / "notes" / "todo.txt").write_text("x")
    return store


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_runs_lists_every_run_and_sweep_with_status_and_main_metric(storage, capsys):
    capsys.readouterr()
    alpha, grid = summary(storage / "alpha"), summary(storage / "grid")
    assert cli.main(["runs", str(storage)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "STATUS", "METHOD", "METRIC", "TIME", "RESUMES"]
    rows = [line.split() for line in lines[1:]]
    assert [r[:4] for r in rows] == [["alpha", "run", "succeeded", "full"], ["grid", "sweep", "succeeded", "full"],
                                     ["killed", "run", "incomplete", "-"]]
    # The resumed run: its task metric and one resumption; the sweep: its best trial's tune.metric.
    assert rows[0][4:6] == ["val_accuracy", f"{alpha['metrics']['val_accuracy']:.4g}"] and rows[0][-1] == "1"
    assert alpha["epochs_done"] == 2 and len(alpha["resumes"]) == 1
    assert rows[1][4:6] == ["val_loss", f"{grid['best']['metrics']['val_loss']:.4g}"] and rows[1][-1] == "-"
    assert rows[2][4:] == ["-", "-", "-"]
    assert [r["name"] for r in runs.list_runs(str(storage))] == ["alpha", "grid", "killed"]


def test_runs_show_prints_one_runs_summary(storage, capsys):
    capsys.readouterr()
    alpha = summary(storage / "alpha")
    assert cli.main(["runs", "show", "alpha", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out.splitlines()
    resume = alpha["resumes"][0]
    assert out[:4] == [f"folder: {storage}/alpha", "kind: run", "status: succeeded", "model: mlp  method: full"]
    assert f"epochs: 2  steps: {alpha['steps_done']}" in out
    assert f"resumes: 1 (at epoch {resume['epoch']} step {resume['step']})" in out
    assert f"exported model: {alpha['model']}" in out
    # A sweep, named by its folder's path; a killed run; a name that is not there (exit 2).
    assert cli.main(["runs", "show", str(storage / "grid")]) == 0
    grid = summary(storage / "grid")
    out = capsys.readouterr().out
    assert "kind: sweep" in out and "trials: 2  errors: 0" in out
    assert f"best trial: {grid['best']['trial_id']}" in out
    assert cli.main(["runs", "show", "killed", "--storage", str(storage)]) == 0
    assert "status: incomplete" in capsys.readouterr().out
    assert cli.main(["runs", "show", "nope", "--storage", str(storage)]) == 2
    assert f"{storage}/nope: no such run folder" in capsys.readouterr().err
