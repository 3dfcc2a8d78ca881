"""`ftray sweep`: every searcher and scheduler shows its effect in a tiny sweep of packed trials.

- ASHA, median stopping and HyperBand stop a trial that cannot learn (a learning rate of 1e-9)
  before its budget, while trials that learn run theirs;
- HyperOpt and Optuna propose values that the trials then train with: the searcher's own record
  of its proposals matches `trials.csv`, each trial's checkpoint holds a model of the proposed width
  and an optimizer at the proposed learning rate, and the searcher got each trial's metric back;
- PB2 exploits: the worse trial continues from the better one's checkpoint and trains on with the
  values PB2 chose.

Trials that must meet a scheduler in a given order run one at a time in grid order (each
scheduler's decision then depends on results, not on which process started first).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftray import cli
from ftray.checkpoint import MODEL_DIR, load_trainer_state
from ftray.models import load_exported
from tests.conftest import blobs, mlp_spec, write_spec

BAD_LR = 1e-9  # no visible learning in a few epochs: its validation loss stays at the initial one


def sweep_folder(tmp_path, capsys, name: str, space: dict, scheduler: dict, epochs: int, train=None,
                 **tune) -> Path:
    """Write a tiny sweep spec of packed trials on separable blobs, run `ftray sweep`, return its folder."""
    pq.write_table(blobs(120, seed=3), tmp_path / "d.parquet")
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path / "runs", name,
                   train={"epochs": epochs, "batch_size": 32, **(train or {})})
    raw["tune"] = {"space": space, "metric": "val_loss", "mode": "min", "num_samples": 1, "max_concurrent": 1,
                   "trial": "packed", "searcher": "grid", "scheduler": scheduler, **tune}
    path = write_spec(tmp_path / f"{name}.yaml", raw)
    assert cli.main(["sweep", str(path)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert folder == tmp_path / "runs" / name
    return folder


def trial_rows(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "trials.csv").open()))


def trial_summary(row: dict) -> dict:
    return json.loads((Path(row["run"]) / "summary.json").read_text())


def trained_with(row: dict) -> tuple[float, int]:
    """What a trial really trained with, read from its last checkpoint: the optimizer's peak LR and
    the width of the exported model's hidden layer."""
    ckpt = Path(trial_summary(row)["checkpoint"])
    group = load_trainer_state(ckpt)["optimizer"]["param_groups"][0]
    model = load_exported(ckpt / MODEL_DIR)
    first = next(p for p in model.parameters() if p.dim() == 2)  # the first Linear: [units, inputs]
    return group["initial_lr"], first.shape[0]


def assert_stopped_early(folder: Path, stopped_at: int, epochs: int, good_trials: int) -> None:
    """Exactly one 1e-9 trial was stopped by the scheduler after `stopped_at` epochs; every trial that
    learns ran all `epochs`."""
    rows = trial_rows(folder)
    bad = [r for r in rows if float(r["train.lr"]) == BAD_LR and r["status"] == "stopped"]
    good = [r for r in rows if float(r["train.lr"]) != BAD_LR]
    assert len(bad) == 1 and int(bad[0]["iterations"]) == stopped_at, rows
    assert len(good) == good_trials and all(r["status"] == "done" and int(r["iterations"]) == epochs
                                            for r in good), rows
    # Why it was stopped: it learned nothing, while the others did.
    assert float(bad[0]["val_loss"]) > max(float(r["val_loss"]) for r in good), rows
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_early"] == 1
    assert summary["trial_epochs"] == sum(int(r["iterations"]) for r in rows)
    assert summary["best"]["config"]["train.lr"] != BAD_LR
    # The stopped trial's own folder says so, with the epochs it trained.
    s = trial_summary(bad[0])
    assert s["status"] == "stopped" and s["epochs_done"] == stopped_at and len(s["history"]) == stopped_at


def test_asha_stops_the_trial_that_cannot_learn(ray_session, tmp_path, capsys):
    # ASHA is asynchronous: the first trial to reach a rung always goes on, so the good trial runs
    # first (grid order, one at a time) and the 1e-9 one meets a rung already recorded.
    # Rungs at epochs 1 and 2 of 3 (grace 1, reduction factor 2).
    folder = sweep_folder(tmp_path, capsys, "asha", {"train.lr": {"grid": [0.05, BAD_LR]}},
                          {"name": "asha", "grace_period": 1, "reduction_factor": 2}, epochs=3)
    assert_stopped_early(folder, stopped_at=1, epochs=3, good_trials=1)


def test_median_rule_stops_the_trial_that_cannot_learn(ray_session, tmp_path, capsys):
    # The rule compares a trial with the running means of at least two others at the same epoch, and
    # only after `grace_period` epochs: the 1e-9 trial, run last, is stopped at epoch 2, not before.
    folder = sweep_folder(tmp_path, capsys, "median", {"train.lr": {"grid": [0.05, 0.02, BAD_LR]}},
                          {"name": "median", "grace_period": 2}, epochs=4)
    assert_stopped_early(folder, stopped_at=2, epochs=4, good_trials=2)


def test_hyperband_stops_the_trial_that_cannot_learn(ray_session, tmp_path, capsys):
    # HyperBand with 2 epochs and reduction factor 2 fills two brackets of two trials, in the order
    # the trials are created: the first runs both at the full budget, the second halves after epoch
    # 1. The grid twice over puts one good and one 1e-9 trial in each; all four run at once, since a
    # bracket waits for all its trials at a milestone.
    folder = sweep_folder(tmp_path, capsys, "hyperband", {"train.lr": {"grid": [0.05, BAD_LR]}},
                          {"name": "hyperband", "reduction_factor": 2}, epochs=2, num_samples=2, max_concurrent=4)
    assert_stopped_early(folder, stopped_at=1, epochs=2, good_trials=2)
    rows = trial_rows(folder)
    full = [r for r in rows if float(r["train.lr"]) == BAD_LR and r["status"] == "done"]
    assert len(full) == 1 and int(full[0]["iterations"]) == 2, rows  # the full-budget bracket's


SEARCH_SPACE = {"train.lr": {"loguniform": [0.001, 0.1]}, "model.units": {"choice": [4, 8, 32]}}


def proposals(searcher: str, tune_dir: Path) -> list[tuple[float, int, float]]:
    """(lr, units, metric it was told) for every trial, from the searcher's own saved state."""
    if searcher == "hyperopt":
        from hyperopt import space_eval
        from ray.tune.search.hyperopt import HyperOptSearch
        alg = HyperOptSearch()
        alg.restore_from_dir(str(tune_dir))
        out = []
        for t in alg._hpopt_trials.trials:
            values = space_eval(alg._space, {k: v[0] for k, v in t["misc"]["vals"].items()})
            out.append((values["train.lr"], values["model.units"], t["result"]["loss"]))
        return out
    from ray.tune.search.optuna import OptunaSearch
    alg = OptunaSearch()
    alg.restore_from_dir(str(tune_dir))
    return [(t.params["train.lr"], t.params["model.units"], t.value) for t in alg._ot_study.trials]


@pytest.mark.parametrize("searcher", ["hyperopt", "optuna"])
def test_searcher_proposes_the_values_trials_train_with(ray_session, tmp_path, capsys, searcher):
    folder = sweep_folder(tmp_path, capsys, searcher, SEARCH_SPACE, {"name": "fifo"}, epochs=1,
                          searcher=searcher, num_samples=3, max_concurrent=3)
    rows = trial_rows(folder)
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows), rows
    # The searcher's record is the sweep's trials: what it proposed is what trials.csv lists, and it
    # was told each trial's final metric (what it learns its next proposals from).
    proposed = sorted(proposals(searcher, folder / "tune"))
    listed = sorted((float(r["train.lr"]), int(r["model.units"]), float(r["val_loss"])) for r in rows)
    assert [p[1] for p in proposed] == [p[1] for p in listed], (proposed, listed)
    for kept, row in zip(proposed, listed):
        assert kept[0] == pytest.approx(row[0], rel=1e-9) and kept[2] == pytest.approx(row[2], rel=1e-6)
    for row in rows:  # and each trial trained with its proposal, not the spec's lr 0.01 / 16 units
        lr, units = trained_with(row)
        assert lr == pytest.approx(float(row["train.lr"]), rel=1e-9) and units == int(row["model.units"])
        assert 0.001 <= lr <= 0.1 and units in (4, 8, 32)
    assert len({float(r["train.lr"]) for r in rows}) == 3  # three different draws


def test_pb2_exploits_and_the_trial_trains_on_with_its_values(ray_session, tmp_path, capsys):
    # A synchronous perturbation at epoch 2 of 3: the worse of the two trials continues from the
    # better one's epoch-2 checkpoint with the values PB2 gives it. (At a first perturbation PB2 has
    # no reward change to fit yet, so those are the copied trial's values.)
    space = {"train.lr": {"loguniform": [0.001, 0.3]}, "train.optimizer.momentum": {"uniform": [0.0, 0.9]}}
    folder = sweep_folder(tmp_path, capsys, "pb2", space,
                          {"name": "pb2", "perturbation_interval": 2, "quantile_fraction": 0.5, "synch": True},
                          epochs=3, train={"optimizer": {"name": "sgd", "momentum": 0.5}},
                          searcher="random", num_samples=2, max_concurrent=2)
    pbt = json.loads((folder / "summary.json").read_text())["pbt"]
    assert pbt["exploits"] == 1, pbt
    new = pbt["log"][0]["new_config"]
    assert 0.001 <= new["train.lr"] <= 0.3 and 0.0 <= new["train.optimizer.momentum"] <= 0.9
    summaries = [trial_summary(r) for r in trial_rows(folder)]
    assert all(s["status"] == "succeeded" and s["epochs_done"] == 3 for s in summaries), summaries
    # What each trial trained with, epoch by epoch, from its own checkpoints.
    # (An exploited trial's folder need not hold its own epoch-2 checkpoint: seen missing.)
    trained = [checkpoint_values(s) for s in summaries]
    assert all({1, 3} <= set(t) for t in trained), trained
    (target,) = [i for i, t in enumerate(trained) if t[3] != t[1]]
    donor = 1 - target
    # The donor kept its values; the exploited trial trained epoch 1 at its own sampled values and
    # epoch 3 at PB2's, continuing from the donor's epoch-2 checkpoint (whose history it carries).
    assert len(set(trained[donor].values())) == 1
    assert trained[target][1] != trained[donor][1]
    assert trained[target][3] == pytest.approx((new["train.lr"], new["train.optimizer.momentum"]), rel=1e-9)
    assert summaries[target]["resumes"][-1]["epoch"] == 2
    assert summaries[target]["history"][:2] == summaries[donor]["history"][:2]


def checkpoint_values(summary: dict) -> dict[int, tuple[float, float]]:
    """Epoch -> (peak LR, momentum) of the optimizer in each checkpoint of a trial."""
    values = {}
    for ckpt in Path(summary["checkpoint"]).parent.glob("checkpoint_*"):
        group = load_trainer_state(ckpt)["optimizer"]["param_groups"][0]
        values[json.loads((ckpt / "progress.json").read_text())["epoch"]] = (group["initial_lr"], group["momentum"])
    return values
