"""`ftray schedule` with a controllable clock against a real head: a due slot is submitted exactly
once even when the scheduler dies between submitting and recording it; a slot is skipped while the
previous job still runs, or submitted beside it with `--concurrency allow`; missed slots follow the
catch-up policy; bad input exits 2."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from ftray import cli, schedule
from ftray.spec import SpecError
from ftray.submit import connect
from tests.conftest import REPO
from tests.ray_head import client_env, free_port, shared_head

T0 = datetime(2030, 1, 1, 0, 0, 10, tzinfo=timezone.utc)
EVERY_5_MIN = "*/5 * * * *"


def at(minutes: float) -> datetime:
    """T0's hour plus `minutes` (slots of EVERY_5_MIN fall on whole multiples of 5)."""
    return T0.replace(second=0) + timedelta(minutes=minutes)


@pytest.fixture(scope="module")
def head(request):
    return shared_head(request)


def waiting_overrides(storage) -> list[str]:
    # The job stays RUNNING without using the CPU (its worker asks for more CPUs than there are).
    return ["run.name=sched", "scaling.num_workers=1", "scaling.cpus_per_worker=64", f"run.storage_path={storage}"]


def run_once_in_a_new_process(state_dir, now: datetime, **env: str) -> subprocess.CompletedProcess:
    """A fresh scheduler process (a restart), with `--now` as its clock."""
    return subprocess.run([sys.executable, "-m", "ftray", "schedule", "--state-dir", str(state_dir), "run",
                           "--once", "--now", now.isoformat()], cwd=REPO, env=client_env(**env),
                          capture_output=True, text=True, timeout=180)


def test_due_slots_and_catch_up_policies():
    slots, count = schedule.due_slots(EVERY_5_MIN, T0, at(21))
    assert slots == [at(5), at(10), at(15), at(20)] and count == 4
    assert schedule.due_slots(EVERY_5_MIN, at(5), at(9.99)) == ([], 0)  # the anchor itself is not due
    assert schedule.to_fire(slots, "all", at(21)) == slots
    assert schedule.to_fire(slots, "latest", at(21)) == [at(20)]
    assert schedule.to_fire(slots, "none", at(21.5)) == []  # 90 s late: missed
    assert schedule.to_fire(slots, "none", at(20.5)) == [at(20)]  # on time
    assert schedule.submission_id("nightly", at(5)) == "ftray-nightly-20300101T000500Z"
    slots, count = schedule.due_slots("* * * * *", T0, T0 + timedelta(days=1))
    assert count == 1440 and len(slots) == schedule.MAX_CATCH_UP and slots[-1] == at(1440)


def test_scheduler_fires_once_per_slot_across_a_restart(head, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    url = head.dashboard_url
    schedule.add_entry(state, "nightly", EVERY_5_MIN, "jobs/quickstart.yaml",
                       overrides=waiting_overrides(tmp_path / "runs"), address=url, now=lambda: T0)
    assert schedule.run_once(state, now=lambda: at(4) + timedelta(seconds=59)) == 0
    assert schedule.load(state)["nightly"].history == []  # not due yet

    # The scheduler dies right after submitting the 00:05 slot, before it could record it.
    crashed = run_once_in_a_new_process(state, at(5) + timedelta(seconds=1), FTRAY_SCHEDULE_CRASH_AFTER_SUBMIT="1")
    assert crashed.returncode == 3, crashed.stdout + crashed.stderr
    assert schedule.load(state)["nightly"].last_slot is None
    sid = schedule.submission_id("nightly", at(5))
    client = connect(url)
    assert client.get_job_info(sid).submission_id == sid

    # Restarted: the slot is still due, the job server already has its id: recorded, not resubmitted.
    restarted = run_once_in_a_new_process(state, at(5.5))
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert "submitted already" in restarted.stdout
    assert schedule.run_once(state, now=lambda: at(6)) == 0  # nothing new is due
    entry = schedule.load(state)["nightly"]
    assert [(h["slot"], h["action"], h.get("submission_id")) for h in entry.history] == \
        [(at(5).isoformat(), "submitted", sid)]
    ours = [j.submission_id for j in client.list_jobs() if (j.submission_id or "").startswith("ftray-nightly-")]
    assert ours == [sid]

    # 00:10 while the 00:05 job still runs: skipped (concurrency: skip).
    deadline = time.monotonic() + 120
    while (status := str(client.get_job_status(sid))) != "RUNNING":
        assert status == "PENDING" and time.monotonic() < deadline, status
        time.sleep(1)
    assert schedule.run_once(state, now=lambda: at(10) + timedelta(seconds=1)) == 0
    last = schedule.load(state)["nightly"].history[-1]
    assert last["action"] == "skipped" and sid in last["reason"]

    # The job is stopped; the scheduler was down over 00:15 and 00:20: only 00:20 runs (catch-up: latest).
    assert cli.main(["jobs", "stop", sid, "--address", url]) == 0
    assert schedule.run_once(state, now=lambda: at(21)) == 0
    history = schedule.load(state)["nightly"].history
    assert [h["action"] for h in history[-2:]] == ["skipped", "submitted"]
    assert history[-2]["slot"] == at(15).isoformat() and "1 slot(s) missed" in history[-2]["reason"]
    latest = schedule.submission_id("nightly", at(20))
    assert history[-1]["submission_id"] == latest
    client.stop_job(latest)
    ours = {j.submission_id for j in client.list_jobs() if (j.submission_id or "").startswith("ftray-nightly-")}
    assert ours == {sid, latest}


def test_concurrency_allow_submits_while_the_previous_job_runs(head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    overrides = [x for o in waiting_overrides(tmp_path / "runs") for x in ("--set", o)]
    assert cli.main(["schedule", "--state-dir", str(state), "add", "both", "--cron", EVERY_5_MIN,
                     "jobs/quickstart.yaml", "--address", head.dashboard_url, "--concurrency", "allow",
                     *overrides]) == 0
    capsys.readouterr()
    assert cli.main(["schedule", "--state-dir", str(state), "list"]) == 0
    assert "concurrency allow" in capsys.readouterr().out
    entry = schedule.load(state)["both"]
    first = schedule.next_slot(entry, datetime.fromisoformat(entry.created))
    second = schedule.next_slot(entry, first)
    client = connect(head.dashboard_url)
    ids = [schedule.submission_id("both", slot) for slot in (first, second)]
    try:
        assert schedule.run_once(state, now=lambda: first + timedelta(seconds=1)) == 0
        deadline = time.monotonic() + 180
        while (status := str(client.get_job_status(ids[0]))) != "RUNNING":
            assert status == "PENDING" and time.monotonic() < deadline, status
            time.sleep(1)
        # The next slot while the first job still runs: submitted all the same.
        assert schedule.run_once(state, now=lambda: second + timedelta(seconds=1)) == 0
        history = schedule.load(state)["both"].history
        assert [(h["action"], h.get("submission_id")) for h in history] == [("submitted", i) for i in ids]
        assert str(client.get_job_status(ids[0])) == "RUNNING"
        assert str(client.get_job_status(ids[1])) in ("PENDING", "RUNNING")
    finally:
        for job in ids:
            with contextlib.suppress(RuntimeError):  # not submitted if the test failed early
                client.stop_job(job)


def test_scheduler_sleeps_until_the_slot_and_keeps_it_while_the_cluster_is_down(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    state = tmp_path / "state"
    down = f"http://127.0.0.1:{free_port()}"
    schedule.add_entry(state, "nightly", EVERY_5_MIN, "jobs/quickstart.yaml", address=down,
                       overrides=[f"run.storage_path={tmp_path}"], now=lambda: T0)
    clock = [T0]
    sleeps: list[float] = []
    logs: list[str] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock[0] += timedelta(seconds=seconds)

    schedule.run_forever(state, interval_s=3600, now=lambda: clock[0], sleep=sleep, log=logs.append, max_passes=2)
    # First pass at 00:00:10: nothing due, sleep until 00:05; second pass fires, the cluster is down.
    assert sleeps[0] == pytest.approx(290, abs=0.1)
    assert any("not submitted, will retry" in line for line in logs)
    assert schedule.load(state)["nightly"].last_slot is None  # the due run is kept, not lost


def test_schedule_commands_and_bad_input_exit_2(head, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    state = str(tmp_path / "state")
    base = ["schedule", "--state-dir", state]
    add = [*base, "add", "nightly", "--cron", "0 2 * * *", "jobs/quickstart.yaml", "--address", head.dashboard_url]
    assert cli.main(add) == 0
    assert "next slot" in capsys.readouterr().out
    assert cli.main([*base, "list"]) == 0
    assert "nightly  '0 2 * * *'  jobs/quickstart.yaml" in capsys.readouterr().out
    cases = {
        "name taken": (add, "exists already"),
        "bad cron": ([*base, "add", "other", "--cron", "61 * * * *", "jobs/quickstart.yaml"], "not a valid cron"),
        "bad name": ([*base, "add", "no/slash", "--cron", "0 2 * * *", "jobs/quickstart.yaml"], "schedule name"),
        "invalid spec": ([*base, "add", "other", "--cron", "0 2 * * *", "jobs/quickstart.yaml",
                          "--set", "train.lr=-1"], "train.lr"),
        "unknown entry": ([*base, "remove", "nope"], "no such entry"),
        "--now without --once": ([*base, "run", "--now", "2030-01-01T00:00:00Z"], "only with --once"),
    }
    for name, (argv, message) in cases.items():
        assert cli.main(argv) == 2, name
        assert message in capsys.readouterr().err, name
    assert list(schedule.load(tmp_path / "state")) == ["nightly"]  # nothing else was recorded
    assert cli.main([*base, "remove", "nightly"]) == 0
    assert schedule.load(tmp_path / "state") == {}
    (tmp_path / "state" / "schedules.json").write_text("{}")
    with pytest.raises(SpecError, match="not a schedule state file"):
        schedule.load(tmp_path / "state")
