"""The Ray lifecycle (`ftray.ray_context`): without an address ftray starts its own private Ray,
even beside a Ray head on the same machine (as cluster/start-head.sh leaves one) and after
cluster/stop-head.sh; with one it joins on purpose; it stops only the Ray it started.

The head here is a real one from cluster/start-head.sh, isolated from every other Ray on this
machine: its temp dir (and so Ray's `ray_current_cluster` pointer file, which plain `ray.init()`
reads to find "the" local cluster) lies in a temp folder of its own, and the ftray commands run
with RAY_TMPDIR pointing there, so that for them it is the machine's default head. It is stopped
with cluster/stop-head.sh (its own process tree), never `ray stop`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ray_head import client_env, free_port

POINTER = "ray_current_cluster"  # Ray's file naming the last `ray start` head, in its temp dir


@dataclass
class DefaultHead:
    """A head started by cluster/start-head.sh whose temp dir is the default one of any process
    run with `env()` (RAY_TMPDIR=root): for those, it is the local head Ray finds by itself."""
    root: Path
    gcs_address: str
    dashboard_url: str

    @property
    def pointer(self) -> Path:
        return self.root / "ray" / POINTER

    def env(self, **extra: str) -> dict[str, str]:
        return client_env(RAY_TMPDIR=str(self.root), FTRAY_HEAD_DIR=str(self.root / "head"),
                          OMP_NUM_THREADS="1", **extra)

    @classmethod
    def start(cls, attempts: int = 3) -> "DefaultHead":
        """Start the head; on this shared, overloaded machine `ray start` may give up waiting for
        its raylet (30 s, hard-coded in Ray), so a head that did not come up is started anew."""
        for attempt in range(1, attempts + 1):
            head, log = cls._start_once()
            if head:
                return head
        pytest.fail(f"the Ray head did not start, {attempts} times; the last time:\n{log[-4000:]}")

    @classmethod
    def _start_once(cls) -> tuple["DefaultHead | None", str]:
        # Short path: Ray's Unix sockets live below it and must stay under 108 characters.
        root = Path(tempfile.mkdtemp(prefix="ftd", dir="/tmp"))
        port, dash = free_port(), free_port()
        head = cls(root, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")
        ports = [f"--{name}={free_port()}" for name in (
            "ray-client-server-port", "node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")]
        r = subprocess.run(["bash", str(REPO / "cluster" / "start-head.sh"), *ports, "--num-cpus=2"],
                           env=head.env(RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(dash)),
                           capture_output=True, text=True, timeout=240)
        # `ray start` writes the pointer right after the head is up; wait for it (hang guard only).
        deadline = time.monotonic() + 180
        while r.returncode == 0 and not head.pointer.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        if r.returncode == 0 and head.pointer.is_file():
            return head, ""
        log_file = root / "head" / "ray-start.log"
        log = r.stdout + r.stderr + (log_file.read_text(errors="replace") if log_file.is_file() else "")
        head.stop()
        shutil.rmtree(root, ignore_errors=True)
        return None, log

    def stop(self) -> str:
        r = subprocess.run(["bash", str(REPO / "cluster" / "stop-head.sh")], env=self.env(),
                           capture_output=True, text=True, timeout=120)
        return r.stdout + r.stderr

    def drivers(self) -> list:
        """The jobs (drivers) that ever connected to this head, from its own state API."""
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        from ftray.auth import auth_headers, explicit_address
        with explicit_address(self.dashboard_url):
            client = StateApiClient(self.dashboard_url, headers={"Content-Type": "application/json",
                                                                 **auth_headers()})
        return client.list(StateResource.JOBS, options=ListApiOptions(timeout=30), raise_on_missing_output=False)


@pytest.fixture(scope="module")
def head():
    h = DefaultHead.start()
    yield h
    h.stop()
    shutil.rmtree(h.root, ignore_errors=True)


def ftray(head: DefaultHead, tmp_path: Path, *argv: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`python -m ftray ARGV` in a fresh process that sees `head` as the machine's default Ray;
    returns the process and the summary.json of the folder its last stdout line names."""
    p = subprocess.run([sys.executable, "-m", "ftray", *argv, "--set", f"run.storage_path={tmp_path}"],
                       env=head.env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stderr[-4000:]}"
    folder = Path(p.stdout.strip().splitlines()[-1])
    assert folder.parent == tmp_path
    return p, json.loads((folder / "summary.json").read_text())


QUICK = ("--set", "train.epochs=1", "--set", "scaling.num_workers=1")
SWEEP = ("--set", "train.epochs=1", "--set", "tune.num_samples=1", "--set", "tune.max_concurrent=1",
         "--set", "tune.scheduler={name: fifo}", "--set", "tune.ensemble=null", "--set", "tune.searcher=random")


def run_quickstart(head, tmp_path) -> None:
    p, s = ftray(head, tmp_path, "run", "jobs/quickstart.yaml", *QUICK)
    assert s["status"] == "succeeded" and s["epochs_done"] == 1
    assert s["ray"]["mode"] == "local"  # its own private Ray, not the head
    assert "num_cpus and num_gpus must not be provided" not in p.stderr


def run_sweep(head, tmp_path) -> None:
    _, s = ftray(head, tmp_path, "sweep", "jobs/sweep.yaml", *SWEEP)
    assert s["status"] == "succeeded" and s["trials"] == 1


@pytest.mark.slow  # ~2 min; a private Ray where a head's pointer is left stays in the default run (the test below)
def test_run_and_sweep_beside_a_live_head_start_their_own_ray(head, tmp_path):
    assert head.pointer.read_text().strip().endswith(head.gcs_address.split(":")[1])
    run_quickstart(head, tmp_path / "run")
    run_sweep(head, tmp_path / "sweep")
    assert head.drivers() == []  # neither command joined the head


def test_stop_head_removes_its_pointer_and_later_runs_start_their_own_ray(head, tmp_path):
    """cluster/stop-head.sh removes the pointer to the head it stopped (as `ray stop` does). A
    pointer left behind all the same (a head that crashed, or stopped by an older stop-head.sh)
    names no running Ray: ftray must not try to join it."""
    address = head.pointer.read_text()
    out = head.stop()
    assert "stopped the Ray head" in out and not head.pointer.exists(), out
    head.pointer.write_text(address)  # what the old stop-head.sh left
    run_quickstart(head, tmp_path / "run")


@pytest.mark.slow
def test_sweep_after_a_head_left_its_pointer(tmp_path):
    """The same for `ftray sweep`, with the pointer a stopped head left and no head at all."""
    root = Path(tempfile.mkdtemp(prefix="ftd", dir="/tmp"))
    try:
        stale = DefaultHead(root, f"127.0.0.1:{free_port()}", "")
        stale.pointer.parent.mkdir(parents=True)
        stale.pointer.write_text(stale.gcs_address)
        run_sweep(stale, tmp_path / "sweep")
    finally:
        shutil.rmtree(root, ignore_errors=True)
