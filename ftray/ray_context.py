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
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ftray import storage_check
from ftray.spec import JobSpec, SpecError
from ftray.spec.load import RAY_JOB_ENV

ADDRESS_ENV = "RAY_ADDRESS"
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


@contextmanager
def use_ray(spec: JobSpec, address: str | None = None, cpus: int | None = None) -> Iterator[str]:
    """Run the `with` block on Ray: join the cluster at `address` (else RAY_ADDRESS), else start a
    private local Ray with `cpus` logical CPUs (default: room for the spec's workers), unless this
    process is on Ray already. Yields how (`summary.json`'s `ray.mode`): "local", the cluster's
    address, or "existing". Stops Ray at the end only if it started it here."""
    import ray
    if ray.is_initialized():
        yield "existing"
        return
    target = cluster_address(address)
    if target:
        # Inside `ray job submit` the job's own runtime env applies to every worker, and Ray refuses
        # to merge a second one into it: join without ours.
        in_job = bool(os.environ.get(RAY_JOB_ENV))
        ray.init(address=target, runtime_env=None if in_job else runtime_env(spec), log_to_driver=True)
    else:
        # Logical CPUs: room for every worker plus Ray Data's read and preprocessing tasks, even on a
        # machine with fewer cores (oversubscribed, but it never deadlocks waiting for a slot).
        need = cpus or math.ceil(spec.scaling.num_workers * spec.scaling.cpus_per_worker) + 1
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), dashboard_host="127.0.0.1",
                 runtime_env=runtime_env(spec))
    try:
        yield target or "local"
    finally:
        ray.shutdown()
