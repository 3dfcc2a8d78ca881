"""Ray Jobs against a real head (cluster/start-head.sh on loopback, token authentication on):
a job submitted with plain `ray job submit` and with `ftray submit` succeeds and writes its run
folder; a running job is stopped; bad input exits 2 before anything is submitted. Also the storage
rule for multi-machine clusters and the KubeRay manifests."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from ftray import cli
from ftray.spec import SpecError, load_spec
from ftray.storage_check import alive_node_ips, check_storage, filesystem_type, refuse_node_local
from ftray.submit import connect, wait_for_end
from tests.conftest import REPO
from tests.ray_head import client_env, free_port, shared_head

QUICK = ["--set", "train.epochs=1", "--set", "scaling.num_workers=1"]
# A job that stays RUNNING without using the CPU: its one worker asks for more CPUs than the
# cluster has, so the driver waits for resources until it is stopped.
WAITING = ["--set", "run.name=waiting", "--set", "scaling.num_workers=1", "--set", "scaling.cpus_per_worker=64"]


@pytest.fixture(scope="module")
def head(request):
    return shared_head(request)


def ftray(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m ftray ...` from the repository root, without RAY_AUTH_MODE in its environment."""
    return subprocess.run([sys.executable, "-m", "ftray", *args], cwd=REPO, env=client_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def job_ids(head) -> set[str]:
    r = ftray("jobs", "list", "--address", head.dashboard_url, timeout=60)
    assert r.returncode == 0, r.stderr
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def test_head_requires_the_token(head):
    assert "Ray head is up" in head.start_output and head.dashboard_url in head.start_output
    assert requests.get(f"{head.dashboard_url}/api/jobs/", timeout=10).status_code == 401


def test_job_submitted_both_ways_succeeds(head, tmp_path):
    # Plain Ray: the ray CLI sends the token only with RAY_AUTH_MODE=token.
    plain = subprocess.Popen(
        [f"{Path(sys.executable).parent}/ray", "job", "submit", "--address", head.dashboard_url,
         "--working-dir", ".", "--runtime-env", "cluster/runtime_env.yaml", "--",
         "python", "-m", "ftray", "run", "jobs/quickstart.yaml", *QUICK,
         "--set", f"run.storage_path={tmp_path / 'plain'}"],
        cwd=REPO, env=client_env(RAY_AUTH_MODE="token"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        r = ftray("submit", "jobs/quickstart.yaml", "--address", head.dashboard_url, *QUICK,
                  "--set", f"run.storage_path={tmp_path / 'ftray'}")
        plain_out, _ = plain.communicate(timeout=300)
    finally:
        plain.kill()
    assert plain.returncode == 0, plain_out[-4000:]
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SUCCEEDED" in r.stderr
    # As for `ftray run`, the last line on stdout names the run folder.
    run_dir = tmp_path / "ftray" / "quickstart"
    assert r.stdout.strip().splitlines()[-1] == str(run_dir)
    for folder in (tmp_path / "plain" / "quickstart", run_dir):
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "succeeded" and summary["epochs_done"] == 1
        assert summary["ray"]["mode"] != "local"  # it joined the job's cluster


def test_running_job_is_stopped(head, tmp_path):
    url = head.dashboard_url
    r = ftray("submit", "jobs/quickstart.yaml", "--address", url, "--no-wait", *WAITING,
              "--set", f"run.storage_path={tmp_path}", timeout=120)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    while "RUNNING" not in (status := ftray("jobs", "status", job_id, "--address", url, timeout=60).stdout):
        assert time.monotonic() < deadline and "FAILED" not in status, status
        time.sleep(2)
    assert job_id in job_ids(head)
    r = ftray("jobs", "stop", job_id, "--address", url, timeout=180)
    assert r.returncode == 0 and r.stdout.strip() == f"{job_id}: STOPPED", r.stdout + r.stderr
    assert "STOPPED" in ftray("jobs", "status", job_id, "--address", url, timeout=60).stdout
    assert ftray("jobs", "logs", job_id, "--address", url, timeout=60).returncode == 0


def test_bad_input_exits_2_before_submitting(head, tmp_path, capsys):
    url = head.dashboard_url
    before = job_ids(head)
    outside = tmp_path / "outside.yaml"
    outside.write_text((REPO / "jobs" / "quickstart.yaml").read_text())
    bad_env = tmp_path / "env.yaml"
    bad_env.write_text("- not a mapping\n")
    cases = {
        "unreachable": (["submit", "jobs/quickstart.yaml", "--address", f"http://127.0.0.1:{free_port()}"],
                         "no Ray job server reachable"),
        "invalid spec": (["submit", "jobs/quickstart.yaml", "--address", url, "--set", "train.epochs=0"],
                         "train.epochs"),
        "missing data": (["submit", "jobs/quickstart.yaml", "--address", url, "--set", "data.path=nope.parquet"],
                         "nope.parquet"),
        "spec outside the upload": (["submit", str(outside), "--address", url], "inside the uploaded working"),
        "runtime env": (["submit", "jobs/quickstart.yaml", "--address", url, "--runtime-env", str(bad_env)],
                        "expected a mapping"),
        "unknown job": (["jobs", "status", "no-such-job", "--address", url], "no such job"),
        "jobs unreachable": (["jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"], "reachable"),
    }
    for name, (argv, message) in cases.items():
        assert cli.main(argv) == 2, name
        err = capsys.readouterr().err
        assert message in err, (name, err)
    assert job_ids(head) == before  # nothing was submitted


# ------------------------------------------------------------------ storage on multi-machine clusters
def test_node_local_storage_is_refused_on_several_machines(monkeypatch, tmp_path):
    two = ["10.0.0.1", "10.0.0.2", "10.0.0.2"]
    with pytest.raises(SpecError, match=r"run.storage_path: .* spans 2 machines \(10.0.0.1, 10.0.0.2\)"):
        refuse_node_local(str(tmp_path), two)
    refuse_node_local(str(tmp_path), ["10.0.0.1", "10.0.0.1"])  # one machine: its disk is shared
    refuse_node_local("s3://bucket/runs", two)
    nfs = "server:/export /mnt/shared nfs4 rw 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    assert filesystem_type("/mnt/shared/runs/x", nfs) == "nfs4"
    assert filesystem_type("/mnt/sharedother", nfs) == "ext4"
    refuse_node_local("/mnt/shared/runs", two, mounts=nfs)
    with pytest.raises(SpecError):
        refuse_node_local("/home/me/runs", two, mounts=nfs)
    monkeypatch.setenv("FTRAY_SHARED_STORAGE", "1")
    refuse_node_local("/home/me/runs", two, mounts=nfs)


def test_storage_check_asks_the_real_cluster(head):
    assert len(alive_node_ips(head.dashboard_url)) == 1
    assert alive_node_ips(f"http://127.0.0.1:{free_port()}") is None  # unknown: nothing is refused
    spec = load_spec(REPO / "jobs" / "quickstart.yaml")
    check_storage(spec, head.dashboard_url)  # one machine: a local path passes
    # Inside a job (where `ftray run` finds the cluster through RAY_ADDRESS) it sees the nodes too.
    client = connect(head.dashboard_url)
    script = ('import os; from ftray.storage_check import alive_node_ips; '
              'print("nodes:", alive_node_ips(os.environ["RAY_ADDRESS"]))')
    job = client.submit_job(entrypoint=f"python -c {shlex.quote(script)}")
    assert wait_for_end(client, job, timeout_s=120) == "SUCCEEDED", client.get_job_logs(job)
    assert re.search(r"nodes: \['[0-9.]+'\]", client.get_job_logs(job)), client.get_job_logs(job)


# -------------------------------------------------------------------------------- KubeRay manifests
@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "RayJob"), ("raycronjob.yaml", "RayCronJob")])
def test_kuberay_manifests(name, kind):
    docs = [d for d in yaml.safe_load_all((REPO / "cluster" / "kuberay" / name).read_text()) if d]
    assert [d["kind"] for d in docs] == [kind]
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    job = doc["spec"]["jobTemplate"] if kind == "RayCronJob" else doc["spec"]
    if kind == "RayCronJob":
        assert len(doc["spec"]["schedule"].split()) == 5
    assert "python -m ftray run jobs/quickstart.yaml" in job["entrypoint"]
    assert (REPO / "jobs" / "quickstart.yaml").is_file()
    cluster = job["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
