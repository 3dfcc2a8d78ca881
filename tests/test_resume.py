"""The resume contract (`ftray.resume`): what re-running a run name does.

A changed architecture is refused (exit 2, naming the keys and how to start afresh); more epochs
resume and train only the new ones; a finished run returns at once without starting Ray; and
`--restart` moves the old folder aside instead of deleting it. One run folder goes through all
of it in order (each Ray Train run costs tens of seconds on a busy machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftray import cli, ray_context, resume
from ftray.faults import STEP_LOG_ENV
from ftray.spec import JobSpec
from tests.conftest import mlp_spec, write_spec


def test_only_keys_that_may_change_mid_run_pass():
    old = JobSpec.model_validate(mlp_spec("d.parquet", "runs", "r")).model_dump(mode="json")

    def changed(**sections) -> dict:
        return resume.refused_changes(old, JobSpec.model_validate(mlp_spec("d.parquet", "runs", "r", **sections))
                                      .model_dump(mode="json"))
    assert changed(train={"epochs": 9}, scaling={"num_workers": [1, 2]}, run={"keep_checkpoints": 5,
                                                                              "max_failures": 2}) == {}
    assert changed(train={"early_stopping": {"patience": 3}}) == {}
    assert changed(model={"units": 64}) == {"model.units": (16, 64)}
    assert changed(train={"lr": 0.1}) == {"train.lr": (0.01, 0.1)}
    assert changed(train={"optimizer": {"name": "sgd"}})["train.optimizer.name"] == ("adamw", "sgd")
    assert changed(data={"path": "other.parquet"}) == {"data.path": ("d.parquet", "other.parquet")}
    assert changed(run={"seed": 1}) == {"run.seed": (0, 1)}


def test_keys_added_to_ftray_since_a_checkpoint_are_no_change_at_their_defaults():
    """A record from before fields existed (here `data.messages` and `data.train_on`) resumes
    under a spec that leaves them at their defaults; a changed key is still refused."""
    from ftray.spec import SpecError
    spec = JobSpec.model_validate(mlp_spec("d.parquet", "runs", "r"))
    old = resume.recorded_spec(spec)
    del old["data"]["messages"], old["data"]["train_on"]
    resume.check_resume(old, spec, "ckpt")  # no error
    changed = JobSpec.model_validate(mlp_spec("d.parquet", "runs", "r", data={"path": "d.parquet",
                                                                             "val_fraction": 0.3}))
    with pytest.raises(SpecError, match=r"data.val_fraction \(0.2 -> 0.3\)"):
        resume.check_resume(old, changed, "ckpt")


def steps(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def checkpoints(run_dir: Path) -> set[Path]:
    return {c for c in run_dir.glob("checkpoint_*") if c.is_dir()}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["run", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_rerunning_a_run_name(ray_session, tmp_path, blobs_parquet, capsys, monkeypatch):
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(STEP_LOG_ENV, str(log))  # every optimizer step, with its epoch
    spec = write_spec(tmp_path / "job.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", "r", train={"epochs": 2}))
    run_dir = tmp_path / "runs" / "r"
    code, out, err = run_cli(capsys, str(spec))
    assert code == 0, err[-3000:]
    first = json.loads((run_dir / "summary.json").read_text())
    assert [e["epoch"] for e in steps(log)] == [1] * 12 + [2] * 12  # 192 rows, batch 16

    # A changed architecture: refused before Ray starts, naming the key and both ways out.
    before = ((run_dir / "summary.json").read_bytes(), checkpoints(run_dir))
    code, out, err = run_cli(capsys, str(spec), "--set", "model.units=64")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "model.units (16 -> 64) changed" in err and "--set run.name=" in err and "--restart" in err
    assert ((run_dir / "summary.json").read_bytes(), checkpoints(run_dir)) == before

    # More epochs: resumes from epoch 2 and trains epoch 3 only.
    log.unlink()
    code, out, err = run_cli(capsys, str(spec), "--set", "train.epochs=3")
    assert code == 0, err[-3000:]
    more = json.loads((run_dir / "summary.json").read_text())
    assert more["resumes"] == [{"epoch": 2, "step": 24}] and more["epochs_done"] == 3
    assert [m["epoch"] for m in more["history"]] == [1, 2, 3] and more["history"][:2] == first["history"]
    assert [(e["epoch"], e["step"]) for e in steps(log)] == [(3, s) for s in range(25, 37)]

    # Finished: nothing left to train. It returns before Ray would start; the folder stays as it was.
    def no_ray(*a, **k):
        raise AssertionError("a finished run must not start Ray")
    use_ray = ray_context.use_ray
    monkeypatch.setattr(ray_context, "use_ray", no_ray)
    log.unlink()
    done = ((run_dir / "summary.json").read_bytes(), checkpoints(run_dir))
    code, out, err = run_cli(capsys, str(spec), "--set", "train.epochs=3")
    assert code == 0, err[-3000:]
    assert "r: nothing left to train (3 epochs done, train.epochs is 3)" in out
    assert out.strip().splitlines()[-1] == str(run_dir)
    assert ((run_dir / "summary.json").read_bytes(), checkpoints(run_dir)) == done and steps(log) == []

    # --restart: the old folder is moved aside whole (its name printed), the run starts afresh.
    monkeypatch.setattr(ray_context, "use_ray", use_ray)
    code, out, err = run_cli(capsys, str(spec), "--set", "model.units=8", "--set", "train.epochs=1", "--restart")
    assert code == 0, err[-3000:]
    [line] = [line for line in out.splitlines() if "--restart: moved the earlier run folder aside to" in line]
    aside = Path(line.rsplit(" ", 1)[-1])
    assert aside.parent == run_dir.parent and aside.name.startswith("r.old-")
    assert (aside / "summary.json").read_bytes() == done[0] and len(checkpoints(aside)) == 2  # kept whole
    new = json.loads((run_dir / "summary.json").read_text())
    assert new["resumes"] == [] and new["epochs_done"] == 1 and new["spec"]["model"]["units"] == 8
    assert new["params"]["total"] == 8 * 8 + 8 + 8 * 3 + 3


@pytest.mark.parametrize("record", ["checkpoint", "summary", "none"])
def test_the_spec_a_checkpoint_was_made_from(tmp_path, record):
    """Its own `spec.json`; for a checkpoint older than this record, the run folder's summary.json."""
    import pyarrow.fs as pafs
    ckpt = tmp_path / "r" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    if record == "checkpoint":
        (ckpt / "spec.json").write_text(json.dumps({"model": {"units": 1}}))
    if record in ("checkpoint", "summary"):
        (tmp_path / "r" / "summary.json").write_text(json.dumps({"spec": {"model": {"units": 2}}}))
    expected = {"checkpoint": {"model": {"units": 1}}, "summary": {"model": {"units": 2}}, "none": None}[record]
    assert resume.read_spec(pafs.LocalFileSystem(), str(ckpt), str(tmp_path / "r")) == expected
