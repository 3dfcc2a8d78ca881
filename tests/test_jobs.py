"""Every file in jobs/ validates, names its own command, and runs end to end on a small budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftray import cli
from ftray.spec import load_spec
from tests.conftest import REPO

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def test_there_are_jobs():
    assert {p.stem for p in JOBS} >= {"quickstart", "pretrain_digits", "transfer", "text_classifier",
                                      "llm_sft", "lora", "attention", "distill"}


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.stem)
def test_job_validates_and_documents_its_command(job):
    spec = load_spec(job)
    header = job.read_text().split("\nmodel:")[0]
    command = "sweep" if spec.tune else "run"
    assert f"ftray {command} jobs/{job.name}" in header, "the header comment names the command"
    assert "--set scaling.use_gpu=true" in header, "the header gives the GPU-cluster overrides"
    assert spec.run.name


def _run(job: str, tmp_path: Path, capsys, *overrides: str) -> dict:
    code = cli.main(["run", str(REPO / "jobs" / job), "--set", f"run.storage_path={tmp_path}", *overrides])
    out, err = capsys.readouterr()
    assert code == 0, f"exit {code}: {err[-3000:]}"
    run_dir = Path(out.strip().splitlines()[-1])
    return json.loads((run_dir / "summary.json").read_text())


def test_quickstart(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # job files name their data relative to the repository root
    s = _run("quickstart.yaml", tmp_path, capsys, "--set", "train.epochs=2")
    assert s["status"] == "succeeded" and s["metrics"]["val_accuracy"] > 0.7


def test_pretrain_then_transfer(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    pre = _run("pretrain_digits.yaml", tmp_path, capsys, "--set", "train.epochs=3")
    assert pre["metrics"]["val_accuracy"] > 0.9
    s = _run("transfer.yaml", tmp_path, capsys, "--set", "train.epochs=4",
             "--set", f"model.init_from={tmp_path}/pretrain_digits")
    assert s["data"]["classes"] == [5, 6, 7, 8, 9]
    assert s["params"]["trainable"] == 512 * 5 + 5  # only the new head
    assert s["metrics"]["val_accuracy"] > 0.8


def test_text_classifier_then_distill(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    teacher = _run("text_classifier.yaml", tmp_path, capsys, "--set", "train.epochs=1")
    assert teacher["metrics"]["val_accuracy"] > 0.25 + 0.2  # the majority class holds 25%
    s = _run("distill.yaml", tmp_path, capsys, "--set", "train.epochs=1",
             "--set", f"method.teacher={tmp_path}/text_classifier")
    assert s["teacher"]["params"]["total"] == teacher["params"]["total"]
    assert set(s["teacher"]["metrics"]) == {"val_loss", "val_accuracy"}
    assert s["params"]["total"] < 0.4 * teacher["params"]["total"]


def test_llm_sft(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = _run("llm_sft.yaml", tmp_path, capsys, "--set", "train.epochs=2")
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert ppl[1] < ppl[0]


@pytest.mark.parametrize("job, max_share", [("lora.yaml", 0.01), ("attention.yaml", 0.2)])
def test_parameter_efficient_jobs(ray_session, tmp_path, capsys, monkeypatch, job, max_share):
    monkeypatch.chdir(REPO)
    s = _run(job, tmp_path, capsys, "--set", "train.epochs=1")
    assert 0 < s["params"]["trainable"] <= max_share * s["params"]["total"]
    assert s["metrics"]["val_accuracy"] > 0.45


def test_sweep_job(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code = cli.main(["sweep", str(REPO / "jobs" / "sweep.yaml"), "--set", f"run.storage_path={tmp_path}",
                     "--set", "tune.num_samples=2", "--set", "train.epochs=1", "--set", "tune.ensemble.top_k=2"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    s = json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())
    assert s["trials"] == 2 and s["best"]["config"]["train.optimizer.name"] in ("sgd", "adam", "adamw")
    assert len(s["ensemble"]["members"]) == 2
