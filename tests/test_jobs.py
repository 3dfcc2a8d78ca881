"""Every file in jobs/ validates, names its own command, and runs end to end on a small budget."""

from __future__ import annotations

import pytest

from ftray.spec import load_spec
from tests.conftest import REPO, job_summary

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


def test_quickstart(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # job files name their data relative to the repository root
    s = job_summary(capsys, "run", "quickstart.yaml", tmp_path, "--set", "train.epochs=2")
    assert s["status"] == "succeeded" and s["metrics"]["val_accuracy"] > 0.7


def test_pretrain_then_transfer(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    pre = job_summary(capsys, "run", "pretrain_digits.yaml", tmp_path, "--set", "train.epochs=3")
    assert pre["metrics"]["val_accuracy"] > 0.9
    s = job_summary(capsys, "run", "transfer.yaml", tmp_path, "--set", "train.epochs=4",
                    "--set", f"model.init_from={tmp_path}/pretrain_digits")
    assert s["data"]["classes"] == [5, 6, 7, 8, 9]
    assert s["params"]["trainable"] == 512 * 5 + 5  # only the new head
    assert s["metrics"]["val_accuracy"] > 0.8


def test_text_classifier_then_distill(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    teacher = job_summary(capsys, "run", "text_classifier.yaml", tmp_path, "--set", "train.epochs=1")
    assert teacher["metrics"]["val_accuracy"] > 0.25 + 0.2  # the majority class holds 25%
    s = job_summary(capsys, "run", "distill.yaml", tmp_path, "--set", "train.epochs=1",
                    "--set", f"method.teacher={tmp_path}/text_classifier")
    assert s["teacher"]["params"]["total"] == teacher["params"]["total"]
    assert set(s["teacher"]["metrics"]) == {"val_loss", "val_accuracy"}
    assert s["params"]["total"] < 0.4 * teacher["params"]["total"]


def test_llm_sft(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", "llm_sft.yaml", tmp_path, "--set", "train.epochs=2")
    ppl = [m["val_perplexity"] for m in s["history"]]
    assert ppl[1] < ppl[0]


@pytest.mark.parametrize("job, max_share", [("lora.yaml", 0.01), ("attention.yaml", 0.2)])
def test_parameter_efficient_jobs(ray_session, tmp_path, capsys, monkeypatch, job, max_share):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "run", job, tmp_path, "--set", "train.epochs=1")
    assert 0 < s["params"]["trainable"] <= max_share * s["params"]["total"]
    assert s["metrics"]["val_accuracy"] > 0.45


def test_sweep_job(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    s = job_summary(capsys, "sweep", "sweep.yaml", tmp_path, "--set", "tune.num_samples=2", "--set", "train.epochs=1",
                    "--set", "tune.ensemble.top_k=2")
    assert s["trials"] == 2 and s["best"]["config"]["train.optimizer.name"] in ("sgd", "adam", "adamw")
    assert len(s["ensemble"]["members"]) == 2
