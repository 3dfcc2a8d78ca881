"""`ftray.runner`: one runner per kind of run, and the table of every method under `ftray run`, a
Train-run sweep trial and a packed sweep trial.

Each row of the table is a tiny spec of one method. A trial of a one-point sweep (the same values,
seed and data as the plain run) must report what `ftray run` of that spec reports, epoch by epoch,
within 1e-5: the trial gets its inputs from the same function (`Method.inputs`, the method's
`datasets` hook included) and trains in the same loop. A combination the package does not support
is refused by `ftray validate` with a message saying why, before Ray starts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ftray import cli
from ftray.methods import METHODS
from ftray.models import ModelInfo
from ftray.models.mlp import MLP
from ftray.runner import RLRunner, TrainRunner, runner_for
from ftray.spec import JobSpec, MLPModel
from tests.conftest import REPO, blobs, cli_summary, mlp_spec, texts, write_jsonl, write_spec
from tests.methods.test_meta import sines

TOL = 1e-5
# Per-epoch entries that measure the machine, not the model.
TIMINGS = {"epoch_time_s", "samples_per_s", "train_time_s", "tokens_per_s", "iteration_s", "peak_memory_gib",
           "generate_tokens_per_s", "update_tokens_per_s", "generate_share"}


def export_mlp(run_dir: Path, classes: int = 3) -> Path:
    """An mlp export (seeded: the plain run and the trial start from the same weights)."""
    torch.manual_seed(1)
    MLP(MLPModel(layers=1, units=16), ModelInfo("classification", 8, list(range(classes)))).export(run_dir / "model")
    return run_dir


def full(d: Path, _) -> dict:
    pq.write_table(blobs(96), d / "d.parquet")
    return mlp_spec(d / "d.parquet", d / "runs")


def transfer(d: Path, _) -> dict:
    raw = full(d, _)
    raw["model"]["init_from"] = str(export_mlp(d / "pre", classes=2))
    raw["method"] = {"name": "transfer", "new_head": True, "unfreeze_last": 1, "backbone_lr_scale": 0.5}
    return raw


def distill(d: Path, _) -> dict:
    raw = full(d, _)
    raw["method"] = {"name": "distill", "teacher": str(export_mlp(d / "teacher")), "alpha": 0.3}
    return raw


def incremental(d: Path, _) -> dict:
    pq.write_table(blobs(60, classes=3), d / "old.parquet")
    pq.write_table(blobs(60, classes=2, seed=1, label_offset=3), d / "new.parquet")
    raw = mlp_spec(d / "new.parquet", d / "runs", method={
        "name": "incremental", "replay_path": str(d / "old.parquet"), "old_val_path": str(d / "old.parquet"),
        "replay_ratio": 0.5, "ewc_lambda": 10.0, "fisher_rows": 24})
    raw["model"]["init_from"] = str(export_mlp(d / "old_run"))
    raw["data"]["classes"] = [0, 1, 2, 3, 4]
    return raw


def meta(d: Path, _) -> dict:
    return {"model": {"name": "mlp", "layers": 1, "units": 16},
            "data": {"path": str(sines(d / "sines.parquet")), "task": "regression", "features": ["x"],
                     "label": "y", "val_fraction": 0.25},
            "method": {"name": "meta", "shots": 3, "inner_steps": 2},
            "train": {"epochs": 2, "batch_size": 4, "lr": 0.1},
            "run": {"name": "t", "storage_path": str(d / "runs"), "seed": 0}}


def hf(method: dict):
    def make(d: Path, fixture) -> dict:  # fixture: a fixture's value by name (built only when asked)
        return {"model": {"name": "hf", "path": str(fixture("tiny_bert")), "max_length": 16},
                "data": {"path": str(write_jsonl(d / "texts.jsonl", texts(32))), "text": "text", "label": "label"},
                "method": method, "train": {"epochs": 2, "batch_size": 8, "lr": 0.01},
                "run": {"name": "t", "storage_path": str(d / "runs"), "seed": 0}}
    return make


def rl(d: Path, _) -> dict:
    return {"model": {"name": "mlp", "layers": 1, "units": 16, "activation": "tanh"},
            "method": {"name": "rl", "env": "CartPole-v1", "env_runners": 0, "train_batch": 200, "minibatch": 100,
                       "epochs": 2, "evaluation_episodes": 2, "stop": {"iterations": 2}},
            "run": {"name": "t", "storage_path": str(d / "runs"), "seed": 0}}


def preference(name: str):
    def make(d: Path, fixture) -> dict:  # pairs of answers on a tiny decoder (tests/methods/test_dpo.py)
        from tests.methods.test_dpo import pair_spec
        raw = pair_spec(d, fixture("tiny_gpt"))
        return {**raw, "method": {"name": name}, "run": {**raw["run"], "name": "t"}}  # the table's run name
    return make


def prompts(d: Path, fixture) -> dict:  # prompts a tiny decoder answers itself (tests/methods/test_grpo.py)
    from tests.methods.test_grpo import grpo_spec
    return grpo_spec(d, fixture("tiny_gpt"), name="t")


SPECS = {"full": full, "transfer": transfer, "distill": distill, "incremental": incremental, "meta": meta,
         "lora": hf({"name": "lora", "r": 2, "target_modules": ["query", "value"]}),
         "attention": hf({"name": "attention"}), "rl": rl, "dpo": preference("dpo"), "simpo": preference("simpo"),
         "grpo": prompts}
# The combinations `validate` refuses, and the words of its refusal.
REFUSED = {("rl", "packed"): "tune.trial: an rl sweep runs one RLlib algorithm per trial (no packed trials"}
# The default run: the methods that build their own inputs, in packed trials, and the refusals
# (the rest, ~1-2 min each on an idle 2-core machine, behind `slow`).
FAST = {("incremental", "packed"), ("meta", "packed"), ("rl", "packed")}
CASES = [pytest.param(m, shape, id=f"{m}-{shape}", marks=() if (m, shape) in FAST else pytest.mark.slow)
         for m in SPECS for shape in ("train", "packed")]


def test_the_table_covers_every_method():
    """Every registered method, and every method a job in jobs/ uses, has a row."""
    in_jobs = {(yaml.safe_load(p.read_text()).get("method") or {}).get("name", "full")
               for p in (REPO / "jobs").glob("*.yaml")}
    assert set(SPECS) == set(METHODS) and in_jobs <= set(SPECS)


def test_runner_for_follows_the_method_config():
    """The kind of run comes from the method's config (`supervised`), not from its name."""
    kinds = {m: type(runner_for(JobSpec.model_validate(_spec_only(m)))) for m in SPECS}
    assert kinds == {m: RLRunner if m == "rl" else TrainRunner for m in SPECS}


def _spec_only(method: str) -> dict:
    """A valid spec of `method` that names files without making them (for spec-level checks)."""
    d = Path("/nonexistent")
    if method == "rl":
        return rl(d, None)
    raw = mlp_spec(d / "d.parquet", d / "runs")
    if method in ("lora", "attention"):
        raw["model"] = {"name": "hf", "path": str(d / "bert")}
        raw["data"] = {"path": str(d / "t.jsonl"), "text": "text", "label": "label"}
    if method in ("dpo", "simpo"):
        raw["model"] = {"name": "hf", "path": str(d / "gpt")}
        raw["data"] = {"path": str(d / "p.jsonl"), "task": "causal_lm", "prompt": "prompt", "chosen": "chosen",
                       "rejected": "rejected", "label": None}
    if method == "grpo":
        raw["model"] = {"name": "hf", "path": str(d / "gpt")}
        raw["data"] = {"path": str(d / "p.jsonl"), "task": "causal_lm", "prompt": "prompt", "answer": "answer",
                       "label": None}
    extra = {"distill": {"teacher": "x"}, "incremental": {"replay_path": "x", "old_val_path": "x"}}
    raw["method"] = {"name": method, **extra.get(method, {})}
    if method in ("incremental", "transfer"):
        raw["model"]["init_from"] = str(d / "pre")
    return raw


def one_point_sweep(raw: dict, shape: str) -> dict:
    """The same spec as a sweep of one trial with the spec's own values."""
    if (raw.get("method") or {}).get("name", "full") == "rl":
        space, metric, mode = {"method.lr": {"grid": [3e-4]}}, "episode_return_mean", "max"
        raw["method"]["lr"] = 3e-4
    else:
        task = raw["data"].get("task", "classification")
        metric, mode = ("val_mse", "min") if task == "regression" else ("val_accuracy", "max")
        if "chosen" in raw["data"]:  # preference pairs
            metric = "val_preference_accuracy"
        if raw["method"]["name"] == "grpo":
            metric = "val_reward"
        space = {"train.lr": {"grid": [raw["train"]["lr"]]}}
    return {**raw, "tune": {"space": space, "metric": metric, "mode": mode, "searcher": "grid", "num_samples": 1,
                            "max_concurrent": 1, "trial": shape}}


def comparable(summary: dict) -> tuple[list[dict], dict]:
    """A run's (or trial's) per-epoch history without its timings, and its method's extra entries."""
    history = [{k: v for k, v in epoch.items() if k not in TIMINGS} for epoch in summary["history"]]
    extra = {k: summary[k] for k in ("continual", "fewshot", "rl") if k in summary}
    return history, extra


def assert_close(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), (where, sorted(got), sorted(want))
        for k in want:
            assert_close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=TOL), where
    else:
        assert got == want, where


@pytest.fixture(scope="module")
def plain_runs():
    """`ftray run` of each method's spec, once per module: {method: summary}."""
    return {}


@pytest.mark.parametrize("method, shape", CASES)
def test_a_trial_reports_what_a_plain_run_reports(method, shape, request, tmp_path, capsys, plain_runs,
                                                 tmp_path_factory):
    fixture = request.getfixturevalue  # tiny models are built only for the rows that need them
    path = write_spec(tmp_path / "sweep.yaml", one_point_sweep(SPECS[method](tmp_path, fixture), shape))
    if (method, shape) in REFUSED:
        assert cli.main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert REFUSED[method, shape] in err and err.count("\n") == 1, err
        return
    request.getfixturevalue("ray_session")
    if method not in plain_runs:
        # A plain run of the same spec (tune is ignored by `ftray run`), in a folder of its own.
        plain_dir = tmp_path_factory.mktemp(f"plain_{method}")
        plain = write_spec(plain_dir / "job.yaml", one_point_sweep(SPECS[method](plain_dir, fixture), shape))
        plain_runs[method] = cli_summary(capsys, "run", str(plain))
    want = plain_runs[method]
    sweep = cli_summary(capsys, "sweep", str(path))
    assert sweep["status"] == "succeeded" and sweep["trials"] == 1
    (row,) = csv.DictReader((tmp_path / "runs" / "t" / "trials.csv").open())
    trial = json.loads((Path(row["run"]) / "summary.json").read_text())
    assert trial["status"] == "succeeded"
    got_history, got_extra = comparable(trial)
    want_history, want_extra = comparable(want)
    assert_close(got_history, want_history, "history")
    assert_close(got_extra, want_extra, "summary")
    metric = sweep["metric"]  # trials.csv holds the trial's last report
    assert float(row[metric]) == pytest.approx(want["history"][-1][metric], abs=TOL)
