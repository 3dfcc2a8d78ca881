"""Fault injection: the scheduler SIGKILLed between firing a slot and recording it.

tests/test_schedule.py covers the same window with the scheduler's own crash hook (`os._exit`);
here the process gets a real SIGKILL the moment Ray's job server has accepted the submission,
from a wrapper that runs the unmodified `ftray schedule run --once`. The restarted scheduler must
record that slot without submitting it again (no double) and the slot's job must exist (no loss).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from ftray import schedule
from ftray.submit import connect
from tests.conftest import REPO
from tests.ray_head import client_env, shared_head
from tests.test_schedule import EVERY_5_MIN, T0, at, waiting_overrides

# The real scheduler; the real submission; then SIGKILL before `_fire` can record it.
KILLED_AFTER_SUBMIT = r"""
import os, signal, sys
from ftray import cli, submit

real_submit = submit.submit

def submit_then_die(*args, **kwargs):
    real_submit(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

submit.submit = submit_then_die
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def head(request):
    return shared_head(request)


def scheduler_pass(state, now, program: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *program, "schedule", "--state-dir", str(state), "run", "--once",
                           "--now", now.isoformat()], cwd=REPO, env=client_env(), capture_output=True,
                          text=True, timeout=180)


def test_scheduler_sigkilled_between_firing_and_recording(head, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    schedule.add_entry(state, "killed", EVERY_5_MIN, "jobs/quickstart.yaml",
                       overrides=waiting_overrides(tmp_path / "runs"), address=head.dashboard_url, now=lambda: T0)
    sid = schedule.submission_id("killed", at(5))
    client = connect(head.dashboard_url)
    try:
        killed = scheduler_pass(state, at(5) + timedelta(seconds=1), ["-c", KILLED_AFTER_SUBMIT])
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
        assert schedule.load(state)["killed"].last_slot is None  # fired, not recorded
        assert client.get_job_info(sid).submission_id == sid  # the job server has it

        for minute in (5.5, 6):  # restarted, twice: recorded once, never submitted again
            again = scheduler_pass(state, at(minute), ["-m", "ftray"])
            assert again.returncode == 0, again.stdout + again.stderr
        entry = schedule.load(state)["killed"]
        assert [(h["slot"], h["action"], h["submission_id"]) for h in entry.history] == \
            [(at(5).isoformat(), "submitted", sid)]
        ours = [j.submission_id for j in client.list_jobs() if (j.submission_id or "").startswith("ftray-killed-")]
        assert ours == [sid]
    finally:
        with contextlib.suppress(RuntimeError):  # the job may not exist if the test failed early
            client.stop_job(sid)
