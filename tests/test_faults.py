"""Fault injection on the shared local Ray: real SIGKILLs of Train workers (mid-epoch, and halfway
through writing a checkpoint) and of a sweep driver. Each test proves one figure:

- worker killed mid-epoch three times in one run: it completes, every optimizer step of the final
  model ran exactly once (step log), and the final metrics equal an uninterrupted run's;
- worker killed while writing a checkpoint: the previous checkpoint stays intact and is the one the
  run resumes from; a folder cut off mid-copy is never taken for a checkpoint;
- `ftray sweep` SIGKILLed mid-way: the re-run restores it, finished trials are not run again.

The elastic node-loss case needs its own multi-node cluster (tests/test_faults_elastic.py); the
scheduler killed between firing and recording needs a job server (tests/test_faults_schedule.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from ftray import checkpoint, faults, train
from ftray.spec import load_spec
from tests.conftest import REPO, blobs, mlp_spec, write_spec
from tests.ray_head import client_env

EPOCHS, STEPS_PER_EPOCH = 4, 12  # 192 training rows, global batch 16


def job(tmp_path: Path, data: Path, name: str, **run) -> Path:
    """Two workers, dropout, a shuffle buffer and a cosine schedule: everything resumption must
    restore exactly (RNG, data order, optimizer and schedule state)."""
    return write_spec(tmp_path / f"{name}.yaml", mlp_spec(
        data, tmp_path / "runs", name, model={"dropout": 0.2}, data={"shuffle_buffer": 64},
        scaling={"num_workers": 2}, train={"epochs": EPOCHS, "schedule": {"name": "cosine"}},
        run=run))


def run_spec(path: Path) -> tuple[int, dict]:
    status, run_dir = train.run(load_spec(path))
    return status, json.loads((Path(run_dir) / "summary.json").read_text())


def steps(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "blobs.parquet"
    pq.write_table(blobs(240), path)
    return path


@pytest.fixture(scope="module")
def straight(ray_session, tmp_path_factory, data_file) -> dict:
    """The uninterrupted run every faulted run must equal."""
    tmp = tmp_path_factory.mktemp("straight")
    status, summary = run_spec(job(tmp, data_file, "straight"))
    assert status == 0, summary["error"]
    assert summary["resumes"] == [] and summary["steps_done"] == EPOCHS * STEPS_PER_EPOCH
    return summary


def assert_same_training(faulted: dict, straight: dict) -> None:
    assert [m["step"] for m in faulted["history"]] == [m["step"] for m in straight["history"]]
    for a, b in zip(faulted["history"], straight["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    for key in ("val_loss", "val_accuracy"):
        assert faulted["metrics"][key] == pytest.approx(straight["metrics"][key], rel=1e-6, abs=1e-7)


def test_fault_injection_is_off_the_production_path(monkeypatch):
    """`ftray.faults` is for tests: a run whose environment asks for no fault never imports it
    (its workers get no hooks); with a fault variable set, the driver builds the hooks from all of them."""
    env = {k: v for k, v in os.environ.items() if k not in faults.ENVS}
    code = ("import sys; import ftray.cli, ftray.sweep; from ftray import train; "
            "assert train.fault_hooks() is None and 'ftray.faults' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=300)
    assert train.FAULT_ENVS == faults.ENVS
    monkeypatch.setenv(faults.KILL_AT_STEPS_ENV, "7, 15")
    monkeypatch.setenv(faults.FAIL_AFTER_EPOCH_ENV, "2")
    assert train.fault_hooks() == faults.FaultHooks(kill_at_steps=(7, 15), fail_after_epoch=2)


@pytest.mark.slow  # ~90 s; a SIGKILLed worker and exact resumption stay in the default run (the checkpoint kill below, tests/test_train.py's resume test)
def test_worker_killed_mid_epoch_three_times(ray_session, tmp_path, data_file, straight, monkeypatch):
    kills = [18, 30, 42]  # mid-epoch 2, 3 and 4; each attempt first writes one checkpoint
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(faults.KILL_AT_STEPS_ENV, ",".join(map(str, kills)))
    monkeypatch.setenv(faults.STEP_LOG_ENV, str(log))
    status, summary = run_spec(job(tmp_path, data_file, "killed", max_failures=3))
    assert status == 0, summary["error"]

    # Each kill rolled the run back to the checkpoint of the epoch before it.
    resumed_at = [r["step"] for r in summary["resumes"]]
    assert resumed_at == [12, 24, 36]
    logged = steps(log)
    assert sorted({e["attempt"] for e in logged}) == [0, 1, 2, 3]
    for attempt, kill in enumerate(kills):  # the process died right after the kill step
        assert max(e["step"] for e in logged if e["attempt"] == attempt) == kill
    for attempt, start in enumerate(resumed_at, 1):  # a resumed attempt starts at the next step
        assert min(e["step"] for e in logged if e["attempt"] == attempt) == start + 1
    # The steps the final model is made of: each attempt's up to where the next one resumed.
    ends = [*resumed_at, EPOCHS * STEPS_PER_EPOCH]
    kept = [e["step"] for e in logged if e["step"] <= ends[e["attempt"]]]
    assert kept == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # none skipped, none repeated
    assert_same_training(summary, straight)


def test_worker_killed_while_writing_a_checkpoint(ray_session, tmp_path, data_file, straight, monkeypatch):
    log = tmp_path / "steps.jsonl"
    monkeypatch.setenv(faults.KILL_IN_CHECKPOINT_ENV, "2")  # rank 0 dies with epoch 2's model half saved
    monkeypatch.setenv(faults.STEP_LOG_ENV, str(log))
    status, summary = run_spec(job(tmp_path, data_file, "torn", max_failures=1))
    assert status == 0, summary["error"]
    # Epoch 1's checkpoint was intact and is the one the run went on from.
    assert summary["resumes"] == [{"epoch": 1, "step": STEPS_PER_EPOCH}]
    assert min(e["step"] for e in steps(log) if e["attempt"] == 1) == STEPS_PER_EPOCH + 1
    assert_same_training(summary, straight)
    run_dir = tmp_path / "runs" / "torn"
    fs = pafs.LocalFileSystem()
    kept = sorted(c for c in run_dir.glob("checkpoint_*") if c.is_dir())
    assert kept and all(checkpoint.is_complete(fs, str(c), deep=True) for c in kept)

    # What a kill during the copy to storage leaves: a newer folder with a truncated file. The driver's
    # own scan (used when a run fails) passes it over, as it does one without a manifest.
    latest = train.latest_checkpoint(fs, str(run_dir))
    assert checkpoint.load_progress(Path(latest))["epoch"] == EPOCHS
    torn = run_dir / "checkpoint_9999-torn"
    shutil.copytree(latest, torn)
    progress = json.loads((torn / checkpoint.PROGRESS).read_text())
    (torn / checkpoint.PROGRESS).write_text(json.dumps({**progress, "epoch": 99}))
    assert not checkpoint.is_complete(fs, str(torn), deep=True)  # its progress.json no longer matches
    weights = next(torn.joinpath(checkpoint.MODEL_DIR).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (torn / checkpoint.MANIFEST).unlink()
    assert train.latest_checkpoint(fs, str(run_dir)) == latest


# ------------------------------------------------------------------------------ the sweep driver
def sweep_job(tmp_path: Path, data: Path) -> Path:
    raw = mlp_spec(data, tmp_path / "runs", "sw", train={"epochs": 3, "batch_size": 16})
    raw["tune"] = {"space": {"train.lr": {"grid": [0.003, 0.01, 0.03]}}, "searcher": "grid",
                   "metric": "val_accuracy", "mode": "max", "num_samples": 1, "max_concurrent": 1}
    return write_spec(tmp_path / "sweep.yaml", raw)


def sweep_process(spec: Path, ray_tmp: str, log: Path) -> subprocess.Popen:
    """`ftray sweep` with its own embedded Ray, in a session of its own: its Ray processes are the
    group we end after killing it."""
    return subprocess.Popen([sys.executable, "-m", "ftray", "sweep", str(spec)], cwd=REPO,
                            env=client_env(RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1"), start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def finished_trials(tune_dir: Path) -> set[str]:
    """Trials the sweep's saved experiment state records as finished."""
    from ray.tune.experiment.trial import Trial
    done = set()
    for state in tune_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (OSError, ValueError, KeyError):
            continue  # being rewritten
        for trial_json, _ in trials:
            trial = json.loads(trial_json)
            if trial.get("status") == Trial.TERMINATED:
                done.add(trial["trial_id"])
    return done


def mid_run(trial_dir: Path, epochs: int) -> bool:
    """Whether the trial's newest checkpoint is of an epoch before its last."""
    done_epochs = []
    for ckpt in trial_dir.glob("checkpoint_*"):
        try:
            done_epochs.append(json.loads((ckpt / checkpoint.PROGRESS).read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            continue  # being written
    return bool(done_epochs) and max(done_epochs) < epochs


@pytest.mark.slow  # ~3 min; a restored sweep stays in the default run (tests/test_sweep.py::test_sweep_writes_its_folder_and_restores)
def test_sweep_driver_killed_and_rerun(tmp_path):
    pq.write_table(blobs(120, seed=3), tmp_path / "d.parquet")
    spec = sweep_job(tmp_path, tmp_path / "d.parquet")
    folder = tmp_path / "runs" / "sw"
    ray_tmp = tempfile.mkdtemp(prefix="ftf", dir="/tmp")
    started = []
    try:
        proc = sweep_process(spec, ray_tmp, tmp_path / "first.log")
        started.append(proc)
        # Kill once a trial is recorded finished and the next one has a checkpoint with epochs still
        # to train (a trial caught after its last epoch has nothing left to resume).
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the sweep made no progress"
            done = finished_trials(folder / "tune")
            running = [t for t in (folder / "trials").glob("*") if t.name not in done and mid_run(t, epochs=3)]
            if done and running:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
        before = {t: (folder / "trials" / t / "summary.json").read_bytes() for t in done}
        checkpoints_before = {t: sorted(p.name for p in (folder / "trials" / t).glob("checkpoint_*")) for t in done}

        again = sweep_process(spec, ray_tmp, tmp_path / "second.log")
        started.append(again)
        assert again.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        for p in started:  # a failed test leaves no sweep running
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["trials"] == 3 and summary["errors"] == 0
    trials = {t.name: json.loads((t / "summary.json").read_text()) for t in (folder / "trials").iterdir()}
    assert len(trials) == 3
    for t in done:  # finished before the kill: not run again, not even resumed
        assert (folder / "trials" / t / "summary.json").read_bytes() == before[t]
        assert sorted(p.name for p in (folder / "trials" / t).glob("checkpoint_*")) == checkpoints_before[t]
    interrupted = [s for t, s in trials.items() if t not in done and s["resumes"]]
    assert interrupted, "the trial that was running when the driver died resumed from its checkpoint"
    for s in trials.values():
        assert s["status"] == "succeeded" and [m["epoch"] for m in s["history"]] == [1, 2, 3]
