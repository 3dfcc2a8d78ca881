"""Which Ray a command runs on, and who stops it: the one place ftray starts, joins and stops Ray.

- `--address` (or RAY_ADDRESS, which `ray job submit` sets for the job's driver): join that
  cluster, on purpose; its storage must be shared (`ftray.storage_check`).
- neither: start a private local Ray for this process (`ray.init(address="local")`). Plain
  `ray.init()` would instead join whatever head Ray finds on this machine by itself (a
  `cluster/start-head.sh` head, through the `ray_current_cluster` file in Ray's temp dir, or a
  dead one that file still names) and then refuse ftray's `num_cpus`.
- Ray already running in this process (a sweep's trial, a test session): use it as it is.

`use_ray` stops only a Ray that it started, when its `with` block ends: before the command prints
its last line, so that Ray's forwarded worker logs end first.

The console (`set_console`, from `ftray run/sweep --verbose/--quiet`): "verbose" forwards every
worker's output (Ray's `(TrainController pid=...)` prefixes and colours) and Ray's own warnings, as
Ray does; "normal" and "quiet" start Ray without log forwarding and silence Ray's driver-side
warnings, so the console has ftray's lines only (the driver prints them, see `ftray.progress`); the
workers' logs are copied into the run folder (`keep_logs`), and a failed run's error, which carries
the worker's traceback, is printed in full.
"""

from __future__ import annotations

import glob
import importlib
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ftray import storage_check
from ftray.spec import JobSpec, SpecError
from ftray.spec.load import RAY_JOB_ENV

ADDRESS_ENV = "RAY_ADDRESS"
CONSOLES = ("verbose", "normal", "quiet")
_forwarding = True  # a Ray ftray did not start (a test session) forwards, as Ray does by default
_console = "verbose"  # library callers and commands without the flags keep Ray's own console
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def cluster_address(address: str | None) -> str | None:
    """The cluster a command joins: `address` (`--address`), else RAY_ADDRESS; None for a private
    local Ray."""
    return address or os.environ.get(ADDRESS_ENV) or None


def check_target(spec: JobSpec, address: str | None) -> None:
    """Checks of the Ray the command will use, before it starts (SpecError): on a private local Ray,
    that this machine can run the job; on a cluster, that `run.storage_path` is shared storage."""
    if cluster_address(address) is None:
        check_devices(spec)
    else:
        storage_check.check_storage(spec, address)


def check_devices(spec: JobSpec) -> None:
    """Refuse jobs a private local Ray on this machine can't run (they would wait forever, or
    start dozens of processes on a few cores)."""
    cores = os.cpu_count() or 1
    if spec.scaling.num_workers > 4 * cores:
        raise SpecError(f"scaling.num_workers: {spec.scaling.num_workers} workers on an embedded local Ray "
                        f"with {cores} CPU cores; lower it or pass --address of a cluster")
    if not spec.scaling.use_gpu:
        return
    have = torch.cuda.device_count()
    if have < spec.scaling.num_workers:
        raise SpecError(f"scaling.use_gpu: {spec.scaling.num_workers} GPU workers asked, this machine "
                        f"has {have} GPU(s); lower scaling.num_workers or pass --address of a cluster")


def worker_start_timeout(spec: JobSpec) -> str:
    """Seconds Ray Train's controller waits for a worker group's resources (its placement group)
    before it gives up and sizes the group again (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, when set,
    wins). A fixed-size run has no other size to try: 600 s, for a busy machine that frees an
    earlier run's resources slowly. An elastic run keeps Ray's 60 s: after a node is lost, the
    controller's view of the cluster can be stale and ask for a group the cluster can no longer
    place, and only this timeout sends it back to size a smaller one."""
    return os.environ.get(WORKER_START_TIMEOUT_ENV) or ("60" if spec.scaling.elastic else "600")


def runtime_env(spec: JobSpec) -> dict:
    """The environment of every Ray worker of a run of `spec`.

    Ray Train's controller polls its workers every 2 s by default, and a run's start, each of its
    state changes and its end wait for a poll; every 0.5 s (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, when
    set, wins) a small run ends 2-3 s sooner (measured on the 2-core machine: 10% of a 25 s
    `ftray run` in a warm Ray), and a poll costs one short actor call per worker."""
    return {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(spec.scaling.cpus_per_worker))),
                         "TOKENIZERS_PARALLELISM": "false",
                         WORKER_START_TIMEOUT_ENV: worker_start_timeout(spec),
                         HEALTH_CHECK_ENV: os.environ.get(HEALTH_CHECK_ENV) or "0.5"}}


def set_console(mode: str) -> None:
    """How much the console shows from now on (one of CONSOLES); see the module docstring."""
    global _console
    assert mode in CONSOLES, mode
    _console = mode
    if mode != "verbose":
        # Ray's and Ray Data's deprecation notices and internal warnings, raised in this process.
        warnings.filterwarnings("ignore", module=r"ray(\..*)?$")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*[Rr]ay.*")
        importlib.import_module("ray")  # importing Ray sets its loggers' levels: set ours after it
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.ERROR)


def console() -> str:
    """The console mode set by `set_console` ("verbose" unless set)."""
    return _console


def forwarding_logs() -> bool:
    """Whether the workers' output reaches this console (Ray's log forwarding)."""
    return _forwarding


def keep_logs(dest) -> list[str]:
    """Copy this job's worker log files from Ray's session folder into `dest` (a local folder) while
    Ray still runs; [] when this process is not on Ray's head node (a cluster's logs stay there)."""
    import ray
    try:
        node = ray._private.worker.global_worker.node
        logs = node.get_logs_dir_path()
        job = ray.get_runtime_context().get_job_id()
    except Exception:  # noqa: BLE001 - a driver connected to a remote cluster has no local node
        return []
    names = sorted({*glob.glob(f"{logs}/worker-*-{job}-*.out"), *glob.glob(f"{logs}/worker-*-{job}-*.err"),
                    *glob.glob(f"{logs}/python-core-worker-*_*.log")})
    if names:
        os.makedirs(dest, exist_ok=True)
    for name in names:
        shutil.copy(name, dest)
    return [os.path.basename(n) for n in names]


@contextmanager
def use_ray(spec: JobSpec, address: str | None = None, cpus: int | None = None) -> Iterator[str]:
    """Run the `with` block on Ray: join the cluster at `address` (else RAY_ADDRESS), else start a
    private local Ray with `cpus` logical CPUs (default: room for the spec's workers), unless this
    process is on Ray already. Yields how (`summary.json`'s `ray.mode`): "local", the cluster's
    address, or "existing". Stops Ray at the end only if it started it here."""
    import ray
    global _forwarding
    if ray.is_initialized():
        yield "existing"
        return
    _forwarding = _console == "verbose"
    # `ray.init` sets the "ray" logger's level again (its token and "Started a local Ray" notices).
    quiet = {} if _forwarding else {"log_to_driver": False, "logging_level": logging.ERROR}
    target = cluster_address(address)
    if target:
        # Inside `ray job submit` the job's own runtime env applies to every worker, and Ray refuses
        # to merge a second one into it: join without ours.
        in_job = bool(os.environ.get(RAY_JOB_ENV))
        ray.init(address=target, runtime_env=None if in_job else runtime_env(spec), **quiet)
    else:
        # Logical CPUs: room for every worker plus Ray Data's read and preprocessing tasks, even on a
        # machine with fewer cores (oversubscribed, but it never deadlocks waiting for a slot).
        need = cpus or math.ceil(spec.scaling.num_workers * spec.scaling.cpus_per_worker) + 1
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), dashboard_host="127.0.0.1",
                 runtime_env=runtime_env(spec), **quiet)
    try:
        yield target or "local"
    finally:
        ray.shutdown()
