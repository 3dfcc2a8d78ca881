"""Ray Jobs against a real head (cluster/start-head.sh on loopback, token authentication on):
a job submitted with plain `ray job submit` and with `ftray submit` succeeds and writes its run
folder; a running job is stopped; bad input exits 2 before anything is submitted; each documented
`ftray submit` option reaches the job (`--env`, `--sweep`, `--pip`, `--entrypoint-num-gpus`), a job
that fails in the cluster exits 1, and `ftray jobs logs --follow` streams to the job's end. Also
the storage rule for multi-machine clusters and the KubeRay manifests."""

from __future__ import annotations

import csv
import glob
import json
import re
import secrets
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from ftray import cli
from ftray.redact import MASK
from ftray.spec import SpecError, load_spec
from ftray.storage_check import alive_node_ips, check_storage, filesystem_type, refuse_node_local
from ftray.submit import auth_headers, connect, explicit_address, wait_for_end
from tests.conftest import REPO
from tests.ray_head import client_env, free_port, shared_head

QUICK = ["--set", "train.epochs=1", "--set", "scaling.num_workers=1"]
# A job that stays RUNNING without using the CPU: its one worker asks for more CPUs than the
# cluster has, so the driver waits for resources until it is stopped.
WAITING = ["--set", "run.name=waiting", "--set", "scaling.num_workers=1", "--set", "scaling.cpus_per_worker=64"]
# jobs/sweep.yaml at its smallest: two packed trials (no Train worker group each) of one epoch.
SWEEP_QUICK = ["--set", "tune.num_samples=2", "--set", "tune.max_concurrent=2", "--set", "tune.trial=packed",
               "--set", "tune.searcher=random", "--set", "tune.scheduler={name: fifo}", "--set", "tune.ensemble=null",
               "--set", "train.epochs=1"]
# A tiny pure-Python wheel that is not part of the cluster's own environment.
PINNED = "termcolor==3.3.0"


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


def submit_no_wait(head, *args: str) -> str:
    """`ftray submit ... --no-wait`: the job id."""
    r = ftray("submit", *args, "--address", head.dashboard_url, "--no-wait", timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().splitlines()[-1]


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
        # Checked as `ftray validate` checks them (the runner's and the sweep's own checks).
        "rl spec": (["submit", "jobs/rl_finetune.yaml", "--address", url, "--set", "method.env=NoSuchEnv-v0"],
                    "method.env: unknown Gymnasium environment 'NoSuchEnv-v0'"),
        "sweep space": (["submit", "jobs/sweep.yaml", "--sweep", "--address", url,
                         "--set", "tune.space={model.nope: {choice: [1, 2]}}"], "tune.space.model.nope = 1: unknown key"),
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


# ------------------------------------------------------------------------- `ftray submit` options
@pytest.mark.slow  # ~45 s; a submitted job's logs and options stay in the default run (test_job_submitted_both_ways_succeeds)
def test_env_reaches_the_job_and_logs_follow_it_to_the_end(head, tmp_path):
    """`--env`: the job's workers see FTRAY_STEP_LOG (they write the step log there) and its driver
    sees the secret (summary.json masks it, README "Secrets"); `jobs logs --follow` started while
    the job has just been submitted prints up to the job's last line and returns 0."""
    url = head.dashboard_url
    secret = secrets.token_hex(16)
    storage = tmp_path / f"runs-{secret}"  # the secret is part of the resolved spec and every path
    steps = tmp_path / "steps.jsonl"
    job = submit_no_wait(head, "jobs/quickstart.yaml", *QUICK, "--set", f"run.storage_path={storage}",
                         "--env", f"FTRAY_TEST_SECRET={secret}", "--env", f"FTRAY_STEP_LOG={steps}")
    r = ftray("jobs", "logs", job, "--follow", "--address", url, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"ftray: job {job} SUCCEEDED" in r.stderr
    run_dir = storage / "quickstart"
    assert str(run_dir) in r.stdout.splitlines()  # `ftray run`'s last line: the job had ended
    text = (run_dir / "summary.json").read_text()
    assert secret not in text
    summary = json.loads(text)
    assert summary["status"] == "succeeded" and summary["spec"]["run"]["storage_path"] == MASK
    logged = [json.loads(line) for line in steps.read_text().splitlines()]
    assert [s["step"] for s in logged] == list(range(1, summary["steps_done"] + 1))
    assert {(s["epoch"], s["workers"]) for s in logged} == {(1, 1)}


@pytest.mark.slow  # ~45 s; submitting stays in the default run (test_job_submitted_both_ways_succeeds)
def test_job_that_fails_in_the_cluster_exits_1(head, tmp_path):
    """The spec passes every check here; the worker then fails after epoch 1 (FTRAY_FAIL_AFTER_EPOCH,
    README "Fault injection", passed with --env): the job FAILED, `ftray submit` exits 1."""
    r = ftray("submit", "jobs/quickstart.yaml", "--address", head.dashboard_url, *QUICK,
              "--set", f"run.storage_path={tmp_path}", "--env", "FTRAY_FAIL_AFTER_EPOCH=1")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"ftray: job \S+ FAILED", r.stderr), r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(tmp_path / "quickstart")
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 1
    assert "injected failure after epoch 1" in summary["error"]


def test_sweep_is_submitted_as_ftray_sweep(head, tmp_path):
    r = ftray("submit", "jobs/sweep.yaml", "--sweep", "--address", head.dashboard_url, *SWEEP_QUICK,
              "--set", f"run.storage_path={tmp_path}", timeout=500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "python -m ftray sweep jobs/sweep.yaml" in r.stderr  # the entrypoint, as submitted
    folder = tmp_path / "sweep_digits"
    assert r.stdout.strip().splitlines()[-1] == str(folder)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["trials"] == 2
    rows = list(csv.DictReader((folder / "trials.csv").open()))
    assert sorted(row["trial_id"] for row in rows) == sorted(p.name for p in (folder / "trials").iterdir())
    assert [row["status"] for row in rows] == ["done", "done"]
    assert max(float(row["val_accuracy"]) for row in rows) == pytest.approx(summary["best"]["metrics"]["val_accuracy"])


def job_supervisor(address: str, job_id: str):
    """The actor that runs a job's entrypoint (Ray names it after the submission id), from the
    cluster's state API: its state and the resources it asked for."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, StateResource
    with explicit_address(address):
        client = StateApiClient(address, headers={"Content-Type": "application/json", **auth_headers()})
    actors = client.list(StateResource.ACTORS, options=ListApiOptions(
        filters=[("class_name", "=", "JobSupervisor")], detail=True, timeout=30), raise_on_missing_output=False)
    [actor] = [a for a in actors if a.name.endswith(job_id)]
    return actor


def end_waiting_job(head, job_id: str) -> None:
    """End a job that waits for resources. Ray's stop (`ray job stop`, `ftray jobs stop`) only
    sends a message to the job's supervisor actor, which one still waiting for its resources never
    receives: such a job stays PENDING until Ray's start timeout (15 min). Killing the actor, from
    a driver on the head, ends it at once (FAILED)."""
    script = ("import ray, sys\n"
              "from ray.dashboard.modules.job.common import JOB_ACTOR_NAME_TEMPLATE, SUPERVISOR_ACTOR_RAY_NAMESPACE\n"
              "ray.init(address=sys.argv[1])\n"
              "ray.kill(ray.get_actor(JOB_ACTOR_NAME_TEMPLATE.format(job_id=sys.argv[2]),\n"
              "                       namespace=SUPERVISOR_ACTOR_RAY_NAMESPACE))\n")
    r = subprocess.run([sys.executable, "-c", script, head.gcs_address, job_id], cwd="/",
                       env=client_env(RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_gpu_entrypoint_and_pip_reach_the_job_server_and_a_cpu_cluster_leaves_the_job_pending(head, tmp_path):
    """`--entrypoint-num-gpus 1 --pip FILE`: the job carries the pinned requirements, and its
    entrypoint asks this CPU-only head for a GPU, so it waits (a job submitted after it runs to the
    end meanwhile) until stopped. Waiting, it never sets up its runtime env: the pip install itself
    is the slow case below."""
    url = head.dashboard_url
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# pinned for the job\n{PINNED}   # tiny, pure Python\n\n")
    job = submit_no_wait(head, "jobs/quickstart.yaml", "--set", f"run.storage_path={tmp_path}",
                         "--entrypoint-num-gpus", "1", "--pip", str(requirements))
    client = connect(url)
    try:
        assert client.get_job_info(job).runtime_env["pip"]["packages"] == [PINNED]
        other = client.submit_job(entrypoint="python -c 'print(1)'")
        assert wait_for_end(client, other, timeout_s=180) == "SUCCEEDED", client.get_job_logs(other)
        assert str(client.get_job_status(job)) == "PENDING"
        supervisor = job_supervisor(url, job)
        assert supervisor.state == "PENDING_CREATION" and supervisor.required_resources.get("GPU") == 1
    finally:
        end_waiting_job(head, job)
    # Stopped while it waited, the job never ran its entrypoint.
    assert wait_for_end(client, job, timeout_s=120) == "FAILED"
    assert "Traceback" not in client.get_job_logs(job) and not (tmp_path / "quickstart").exists()


@pytest.mark.slow
def test_pip_requirements_are_installed_for_the_job(head, tmp_path):
    """`--pip`: Ray builds the job a virtualenv with the pinned package in it (a clone of this
    2.4 GB venv plus the install: minutes here), and the job runs in it to the end."""
    with pytest.raises(ImportError):
        __import__("termcolor")  # not in the cluster's own environment
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(PINNED + "\n")
    r = ftray("submit", "jobs/quickstart.yaml", "--address", head.dashboard_url, *QUICK,
              "--set", f"run.storage_path={tmp_path}", "--pip", str(requirements), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The only pip environment this head has built (the GPU job above never set its env up).
    envs = glob.glob(f"{head.temp_dir}/session_latest/runtime_resources/pip/*/virtualenv")
    assert len(envs) == 1, envs
    assert glob.glob(f"{envs[0]}/lib/python*/site-packages/termcolor-3.3.0.dist-info")
    check = subprocess.run([f"{envs[0]}/bin/python", "-c", "import termcolor, ftray"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["ray"]["mode"] != "local"


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
