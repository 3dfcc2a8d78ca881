"""`ftray run`'s console: ftray's lines only by default, Ray's own with `--verbose` (issue 22).

The tests' shared Ray forwards worker logs (a Ray that ftray did not start keeps its console), so
this runs the quickstart in subprocesses, each with the private local Ray `ftray run` starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.ray_head import client_env

REPORT = "Reporting training result 1: TrainingReport("
NOISE = ("\x1b[", "pid=", "PreemptionWatcher", "DeprecationWarning", REPORT)


def quickstart(storage: Path, *flags: str) -> tuple[str, str]:
    proc = subprocess.run([sys.executable, "-m", "ftray", "run", "jobs/quickstart.yaml", *flags,
                           "--set", f"run.storage_path={storage}", "--set", "train.epochs=1"],
                          cwd=REPO, env=client_env(PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, proc.stderr


def test_the_console_has_ftrays_lines_only_unless_verbose(tmp_path):
    out, err = quickstart(tmp_path / "quiet")
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert out.splitlines()[-1] == str(tmp_path / "quiet" / "quickstart"), out
    assert all(line.startswith("[ftray] ") for line in lines[:-1]), lines
    assert len([line for line in lines if line.startswith("[ftray] epoch 1/1  train_loss ")]) == 1, lines
    assert not [n for n in NOISE if n in out + err], out + err
    # Hidden, not lost: rank 0's and rank 1's report lines are in the run folder's copies of Ray's logs.
    logs = (tmp_path / "quiet" / "quickstart" / "logs").glob("worker-*.err")
    assert sum(p.read_text(errors="replace").count(REPORT) for p in logs) == 2

    out, err = quickstart(tmp_path / "verbose", "--verbose")
    assert all(n in out + err for n in NOISE), out + err
    assert "\x1b[36m(TrainController pid=" in out + err
    assert (out + err).count(REPORT) == 2  # one per worker
    assert out.splitlines()[-1] == str(tmp_path / "verbose" / "quickstart"), out


class FailingTrainer:
    def fit(self):
        raise RuntimeError("Training failed.\nTraceback (most recent call last):\nValueError: bad row 7")


def test_a_failed_run_prints_its_whole_error_when_the_workers_output_is_hidden(monkeypatch, capsys):
    from ftray import ray_context, train
    monkeypatch.setattr(ray_context, "_forwarding", False)
    assert train.fit_on_ray(FailingTrainer()).startswith("RuntimeError: Training failed.")
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and err.endswith("ValueError: bad row 7\n"), err
    monkeypatch.setattr(ray_context, "_forwarding", True)  # forwarded: the workers printed it already
    train.fit_on_ray(FailingTrainer())
    assert capsys.readouterr().err == ""
