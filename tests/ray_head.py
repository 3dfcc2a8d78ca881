"""A real Ray head for tests of Ray Jobs, started once per test session with cluster/start-head.sh.

The head runs on free loopback ports, in its own temp dir (so `ray.init()` elsewhere on this
machine never finds it through /tmp/ray/ray_current_cluster), with token authentication on. It is
stopped with cluster/stop-head.sh, which ends the process tree of the `ray start --block` process
that start-head.sh recorded: never `ray stop`, which would stop every Ray of this user.
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

REPO = Path(__file__).resolve().parents[1]
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
    temp_dir: str
    gcs_address: str
    dashboard_url: str
    start_output: str

    @classmethod
    def start(cls, num_cpus: int = 4, attempts: int = 3) -> "LocalHead":
        """Start a head with cluster/start-head.sh (the script users run), on free ports, and wait
        until `ray start` has finished starting it.

        start-head.sh returns once the dashboard answers, but `ray start` still waits for the
        raylet to register, at most 30 s (hard-coded in ray/_private/node.py); on this shared,
        overloaded machine that can run out, and then `ray start` tears the head down again. Such
        a head is started anew, on new ports."""
        for attempt in range(1, attempts + 1):
            head, started = cls._start_once(num_cpus)
            if started and head.wait_until_started():
                return head
            log = head.start_output + head.log()
            head.stop()
            if attempt == attempts:
                raise RuntimeError(f"the Ray head did not start, {attempts} times; the last time:\n{log[-4000:]}")
        raise AssertionError("unreachable")

    def log(self) -> str:
        try:
            return Path(f"{self.temp_dir}/head/ray-start.log").read_text(errors="replace")
        except OSError:
            return ""

    def wait_until_started(self, timeout_s: float = 180) -> bool:
        """True once `ray start` logged that the runtime started; False if it exited first."""
        import psutil  # installed with ray
        pid = int(Path(f"{self.temp_dir}/head/pid").read_text())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "Ray runtime started." in self.log():
                return True
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                return False
            time.sleep(0.5)
        return False

    @classmethod
    def _start_once(cls, num_cpus: int) -> tuple["LocalHead", bool]:
        # Short path: Ray's Unix sockets live below it and must stay under 108 characters.
        temp_dir = tempfile.mkdtemp(prefix="fth", dir="/tmp")
        port, dash = free_port(), free_port()
        extra = [f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
                 f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                 f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}"]
        # The job driver runs `python -m ftray`: `python` must be this venv's interpreter (PATH).
        env = client_env(RAY_PORT=str(port), RAY_DASHBOARD_PORT=str(dash), FTRAY_HEAD_DIR=f"{temp_dir}/head",
                         OMP_NUM_THREADS="1")
        r = subprocess.run(["bash", str(REPO / "cluster" / "start-head.sh"), *extra], env=env,
                           capture_output=True, text=True, timeout=180)
        return cls(temp_dir, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", r.stdout + r.stderr), r.returncode == 0

    def stop(self) -> str:
        """cluster/stop-head.sh: ends this head's process tree, nothing else."""
        r = subprocess.run(["bash", str(REPO / "cluster" / "stop-head.sh")], capture_output=True, text=True,
                           env=client_env(FTRAY_HEAD_DIR=f"{self.temp_dir}/head"), timeout=60)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return r.stdout + r.stderr


_HEAD: LocalHead | None = None


def shared_head(request) -> LocalHead:
    """One head for the requesting test module, stopped when that module ends: a second Ray
    instance left running beside the tests' own makes Ray Train's placement-group cleaner fail
    ("multiple active Ray instances"), and placement groups of stopped trials then leak."""
    global _HEAD
    if _HEAD is None:
        _HEAD = LocalHead.start()

        def stop() -> None:
            global _HEAD
            if _HEAD is not None:
                _HEAD.stop()
                _HEAD = None
        request.addfinalizer(stop)
    return _HEAD


def cluster_script(body: str) -> str:
    """A Python script (run as `python -c SCRIPT SPEC OUT DASHBOARD_PORT GCS_PORT`) that starts a
    local cluster of a 1-CPU head and two 2-CPU worker nodes (`nodes`) with `ray.cluster_utils`,
    runs `body` (which sees `cluster`, `nodes`, `spec_path`, `out`), and always shuts it down."""
    import textwrap
    return (
        "import json, sys, threading, time\n"
        "from pathlib import Path\n"
        "from ray.cluster_utils import Cluster\n"
        "spec_path, out = sys.argv[1], sys.argv[2]\n"
        "cluster = Cluster(initialize_head=True, head_node_args={\n"
        "    'num_cpus': 1, 'include_dashboard': True, 'dashboard_host': '127.0.0.1',\n"
        "    'dashboard_port': int(sys.argv[3]), 'gcs_server_port': int(sys.argv[4])})\n"
        "nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]\n"
        "cluster.wait_for_nodes()\n"
        "try:\n"
        + textwrap.indent(textwrap.dedent(body).strip("\n"), "    ") + "\n"
        "finally:\n"
        "    import ray\n"
        "    ray.shutdown()\n"
        "    cluster.shutdown()\n")
