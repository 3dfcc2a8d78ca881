"""`ftray submit` and `ftray jobs`: a job spec run as a Ray job on a cluster (Ray Jobs API).

Read top to bottom: the spec and its data are checked on this machine first (exit 2, nothing
submitted), then `JobSubmissionClient` uploads the working directory (without runs, caches and
VCS folders) with ftray's runtime environment and starts `python -m ftray run SPEC` (or `sweep`)
on the cluster; the job's logs stream here until it ends, and the exit status is its outcome:
0 succeeded, 1 failed or stopped, 2 bad input (spec, data, address, runtime env).

Token authentication: ftray sends the cluster's token whenever one is available (`ftray.auth`), so
`ftray submit` works against a `ray start --head` cluster without extra setup.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftray.auth import auth_headers, explicit_address  # noqa: F401 - also this module's API (tests)
from ftray.spec import JobSpec, SpecError, load_spec_and_raw

# Left out of the uploaded working directory: run folders, caches, virtualenvs and VCS data.
EXCLUDES = [".git/", ".venv/", "venv/", "runs/", "**/__pycache__/", ".pytest_cache/", ".mypy_cache/",
            ".ruff_cache/", "*.egg-info/", ".ipynb_checkpoints/", "**/*.pyc"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# ==================================================================================== command line
def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register `ftray submit` and `ftray jobs ...` on the top-level subparsers."""
    s = sub.add_parser("submit", help="run a job spec as a Ray job on a cluster (Ray Jobs API)")
    s.add_argument("spec", metavar="SPEC", help="job spec inside the current directory (it is uploaded)")
    _address_option(s)
    s.add_argument("--sweep", action="store_true", help="run `ftray sweep SPEC` instead of `ftray run SPEC`")
    s.add_argument("--no-wait", action="store_true", help="print the job id and return; do not stream logs")
    s.add_argument("--runtime-env", metavar="FILE",
                   help="runtime env YAML merged over ftray's (e.g. cluster/runtime_env.yaml)")
    s.add_argument("--pip", metavar="REQUIREMENTS",
                   help="pinned requirements file the job installs (runtime_env pip); default: the "
                        "cluster's own environment")
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    s.add_argument("--entrypoint-num-cpus", type=float, default=None, metavar="N",
                   help="CPUs reserved for the driver (default 0)")
    s.add_argument("--entrypoint-num-gpus", type=float, default=None, metavar="N",
                   help="GPUs reserved for the driver, e.g. for a GPU-bound driver (default 0)")
    s.add_argument("--submission-id", default=None, help="job id to use (default: one Ray makes up)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a spec field (repeatable); checked here and passed to the job")

    j = sub.add_parser("jobs", help="list, inspect, follow or stop Ray jobs on a cluster")
    jsub = j.add_subparsers(dest="jobs_command", required=True)
    _address_option(jsub.add_parser("list", help="every job the cluster knows"))
    for name, text in (("status", "a job's status"), ("logs", "a job's logs"), ("stop", "stop a job")):
        q = _address_option(jsub.add_parser(name, help=text))
        q.add_argument("job_id", metavar="ID", help="submission id (as `ftray jobs list` shows)")
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        if name == "stop":
            q.add_argument("--no-wait", action="store_true", help="return without waiting for the job to end")


def _address_option(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--address", default=None,
                   help="the cluster's job server, e.g. http://127.0.0.1:8265 (default: "
                        "RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else the local head)")
    return p


def cmd_submit(args) -> int:
    sub = build_submission(args.spec, args.overrides, sweep=args.sweep, address=args.address,
                           runtime_env_file=args.runtime_env, pip=args.pip, env=args.env,
                           entrypoint_num_cpus=args.entrypoint_num_cpus,
                           entrypoint_num_gpus=args.entrypoint_num_gpus)
    client = connect(args.address)
    job_id = submit(client, sub, args.submission_id, args.address)
    print(f"ftray: submitted job {job_id}: {sub.entrypoint}", file=sys.stderr, flush=True)
    if args.no_wait:
        print(f"ftray: follow it with `ftray jobs logs {job_id} --follow`, stop it with "
              f"`ftray jobs stop {job_id}`", file=sys.stderr)
        print(job_id, flush=True)
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nftray: stopped following; job {job_id} keeps running (`ftray jobs stop {job_id}`)",
              file=sys.stderr)
        return 1
    print(f"ftray: job {job_id} {status}", file=sys.stderr, flush=True)
    if not args.sweep:
        # As for `ftray run`, the last line on stdout names the run folder (Ray forwards the job's
        # worker logs asynchronously, so the job's own last line may not come last).
        print(f"{sub.spec.run.storage_path.rstrip('/')}/{sub.spec.run.name}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args) -> int:
    client = connect(args.address)
    if args.jobs_command == "list":
        for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1000)) \
                if job.start_time else "-"
            print(f"{job.submission_id or job.job_id}  {job.status:<9}  {started}  {job.entrypoint}")
        return 0
    info = job_info(client, args.job_id, args.address)
    if args.jobs_command == "status":
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
        return 0
    if args.jobs_command == "logs":
        if not args.follow:
            print(client.get_job_logs(args.job_id), end="", flush=True)
            return 0
        status = follow(client, args.job_id)
        print(f"ftray: job {args.job_id} {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    # stop
    client.stop_job(args.job_id)
    status = str(info.status) if args.no_wait else wait_for_end(client, args.job_id, timeout_s=120)
    print(f"{args.job_id}: {status}")
    return 0


# ============================================================================ talking to the server
def connect(address: str | None):
    """A JobSubmissionClient for the cluster at `address` (None: the environment, else the local
    head). Raises SpecError naming the address when no job server answers or the token is refused."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient
    where = f"--address {address}" if address else \
        "the default cluster (RAY_API_SERVER_ADDRESS, RAY_ADDRESS or a local head)"
    try:
        with explicit_address(address):
            return JobSubmissionClient(address, headers=auth_headers())
    except AuthenticationError as e:
        raise SpecError(f"{where}: the job server refused the request: {e}") from None
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SpecError(f"{where}: no Ray job server reachable ({e}). Start a head with "
                        f"cluster/start-head.sh, or pass the dashboard address of a running cluster, "
                        f"e.g. --address http://127.0.0.1:8265") from None


def job_info(client, job_id: str, address: str | None):
    """The job's details; SpecError (exit 2) when the cluster does not know `job_id`."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        if "404" in str(e) or "does not exist" in str(e):
            raise SpecError(f"job {job_id!r}: no such job on {address or 'the cluster'} "
                            f"(`ftray jobs list` shows them)") from None
        raise


def follow(client, job_id: str, out=None) -> str:
    """Print the job's logs as they come until it ends; return its final status."""
    out = out or sys.stdout

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # the log stream broke off; the job may still run
        print(f"ftray: log stream of {job_id} ended early ({e}); waiting for the job", file=sys.stderr)
    return wait_for_end(client, job_id)


def wait_for_end(client, job_id: str, timeout_s: float | None = None, poll_s: float = 0.5) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or `timeout_s` passed); its status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


# ================================================================================ building the job
@dataclass
class Submission:
    """Everything `JobSubmissionClient.submit_job` gets, checked and ready."""
    spec: JobSpec
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None


def build_submission(spec_path: str, overrides: list[str], *, sweep: bool = False,
                     address: str | None = None, runtime_env_file: str | None = None,
                     pip: str | None = None, env: list[str] = (),
                     entrypoint_num_cpus: float | None = None,
                     entrypoint_num_gpus: float | None = None) -> Submission:
    """Check the spec like `ftray run` would (spec, data, model source, storage for the target
    cluster) and build the job: SpecError on bad input, before anything is sent.

    The working directory is the current directory unless the runtime env names another one; the
    spec must lie inside it. Data paths stay relative (the job reads the uploaded copy); the run
    folder (`run.storage_path`) and `model.init_from`, which live outside the upload, are passed to
    the job as the absolute paths they have here."""
    from ftray import sweep as sweeps
    from ftray.runner import runner_for
    spec, raw = load_spec_and_raw(spec_path, overrides)
    # As `ftray run`/`sweep` would check it, but for the cluster ("auto": a job always runs on
    # one, never an embedded Ray), whose storage the job writes, not this machine's.
    if sweep:
        sweeps.check(raw, spec, spec_path, address or "auto", local_storage=False)
    else:
        runner_for(spec).check(address or "auto", local_storage=False)

    runtime_env = _runtime_env(runtime_env_file, pip, env)
    workdir = runtime_env["working_dir"]
    if "://" in workdir:
        spec_arg = spec_path  # a packaged working dir (s3://...zip): the path is taken as given
    else:
        try:
            spec_arg = str(Path(spec_path).resolve().relative_to(Path(workdir).resolve()))
        except ValueError:
            raise SpecError(f"{spec_path}: the spec must lie inside the uploaded working directory "
                            f"{Path(workdir).resolve()}; run ftray submit from the project folder") from None
        # Earlier runs under the working directory would be uploaded with every job.
        if "://" not in spec.run.storage_path:
            try:
                inside = Path(spec.run.storage_path).relative_to(Path(workdir).resolve())
                runtime_env["excludes"].append(f"/{inside.as_posix()}/")
            except ValueError:
                pass

    pinned = {"run.storage_path": spec.run.storage_path, "model.init_from": spec.model.init_from}
    kept = [o for o in overrides if o.partition("=")[0].strip() not in pinned]
    args = ["python", "-m", "ftray", "sweep" if sweep else "run", spec_arg]
    for item in [*kept, *(f"{k}={v}" for k, v in pinned.items() if v)]:
        args += ["--set", item]
    return Submission(spec=spec, entrypoint=shlex.join(args), runtime_env=runtime_env,
                      metadata={"ftray_spec": spec_arg, "ftray_run": spec.run.name,
                                "ftray_mode": "sweep" if sweep else "run"},
                      entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus)


def _runtime_env(path: str | None, pip: str | None, env: list[str]) -> dict[str, Any]:
    """ftray's runtime env, with the user's file merged over it and `--pip` / `--env` on top."""
    user: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"--runtime-env {path}: no such file")
        try:
            user = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise SpecError(f"--runtime-env {path}: not valid YAML: {e}") from None
        if not isinstance(user, dict):
            raise SpecError(f"--runtime-env {path}: expected a mapping (working_dir, env_vars, pip, ...)")
    # `ftray run` passes its own runtime env (OMP_NUM_THREADS ...) to ray.init inside the job; Ray
    # refuses to merge it with the job's when keys overlap unless this is set (then ray.init's win).
    env_vars = {"RAY_OVERRIDE_JOB_RUNTIME_ENV": "1", **(user.get("env_vars") or {})}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--env {item!r}: expected KEY=VALUE")
        env_vars[key] = value
    runtime_env = {**user, "working_dir": str(user.get("working_dir") or "."),
                   "excludes": list(dict.fromkeys([*EXCLUDES, *(user.get("excludes") or [])])),
                   "env_vars": {k: str(v) for k, v in env_vars.items()}}
    if pip:
        if not Path(pip).is_file():
            raise SpecError(f"--pip {pip}: no such requirements file")
        runtime_env["pip"] = {"packages": _requirements(Path(pip)), "pip_check": False}
    return runtime_env


def _requirements(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def submit(client, sub: Submission, submission_id: str | None = None, address: str | None = None) -> str:
    """Submit `sub`; returns the submission id. A refusal by the job server is a SpecError."""
    from ray.exceptions import AuthenticationError
    try:
        return client.submit_job(entrypoint=sub.entrypoint, runtime_env=sub.runtime_env,
                                 metadata=sub.metadata, submission_id=submission_id,
                                 entrypoint_num_cpus=sub.entrypoint_num_cpus,
                                 entrypoint_num_gpus=sub.entrypoint_num_gpus)
    except (RuntimeError, ValueError, AuthenticationError) as e:
        raise SpecError(f"{address or 'the cluster'}: the job server refused the job: {e}") from None
