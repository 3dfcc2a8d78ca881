"""A real Ray head for tests of Ray Jobs (`ray start --head`), started once per test session.

The head runs on loopback ports picked at random, in its own temp dir (so `ray.init()` elsewhere on
this machine never finds it through /tmp/ray/ray_current_cluster), with token authentication on.
It is stopped by terminating the process tree of the `ray start --block` process this module
started: never with `ray stop`, which would stop every Ray of this user on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(**extra: str) -> dict[str, str]:
    """Environment for ftray / ray CLI subprocesses: this venv first on PATH, no inherited Ray
    address or auth mode (ftray must set the auth mode itself)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


@dataclass
class LocalHead:
    process: subprocess.Popen
    temp_dir: str
    gcs_address: str
    dashboard_url: str

    @classmethod
    def start(cls, num_cpus: int = 4, timeout_s: float = 90) -> "LocalHead":
        # Short path: Ray's Unix sockets live below it and must stay under 108 characters.
        temp_dir = tempfile.mkdtemp(prefix="fth", dir="/tmp")
        port, dash = free_port(), free_port()
        cmd = [f"{VENV_BIN}/ray", "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
               f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--metrics-export-port={free_port()}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}",
               "--disable-usage-stats"]
        # The job driver runs `python -m ftray`: `python` must be this venv's interpreter.
        env = client_env(RAY_AUTH_MODE="token", OMP_NUM_THREADS="1")
        log = open(f"{temp_dir}/ray-start.log", "w")  # noqa: SIM115 - lives as long as the head
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        head = cls(proc, temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}")
        head._wait_ready(timeout_s)
        return head

    def _wait_ready(self, timeout_s: float) -> None:
        import requests
        token = (Path.home() / ".ray" / "auth_token").read_text().strip() \
            if (Path.home() / ".ray" / "auth_token").exists() else ""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {Path(self.temp_dir, 'ray-start.log').read_text()}")
            try:
                r = requests.get(f"{self.dashboard_url}/api/version", timeout=2,
                                 headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not come up in {timeout_s} s")

    def stop(self) -> None:
        """Terminate every process this head started (then kill what is left after 10 s)."""
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


_HEAD: LocalHead | None = None


def shared_head(session) -> LocalHead:
    """One head for every test module that needs it, stopped when the pytest session ends."""
    global _HEAD
    if _HEAD is None:
        _HEAD = LocalHead.start()

        def stop() -> None:
            global _HEAD
            if _HEAD is not None:
                _HEAD.stop()
                _HEAD = None
        session.addfinalizer(stop)
    return _HEAD
