"""Where a run folder lives (`storage`), and the checks of `run.storage_path`: a folder this process
can create (`check_writable`), and no node-local path on a cluster that spans several machines.

Ray Train writes checkpoints from every node into `run.storage_path`, and the driver reads them
back: on a cluster of several machines that path must be shared storage (an object-store URI such
as `s3://` or `gs://`, or a network filesystem mounted on every node). A path on one machine's own
disk fails late and confusingly (a worker on another node cannot find a checkpoint), so it is
refused up front, with exit 2.

The rule is conservative: it refuses only what it knows is wrong.
- URIs (`s3://`, `gs://`, `file://` ...) always pass: pyarrow reads them from any node.
- An embedded local Ray, and a cluster whose alive nodes all have one IP address (one machine,
  e.g. `ray.cluster_utils.Cluster` or several raylets on a workstation), share a disk: any path passes.
- On a cluster of several machines, a local path passes if it lies on a network filesystem (NFS,
  CIFS, Lustre, GPFS, CephFS, a FUSE bucket mount ...) of the machine doing the check, or if
  `FTRAY_SHARED_STORAGE=1` says it is mounted on every node (a filesystem not recognised here, or
  `ftray submit` from a machine that does not mount it).
- If the cluster's nodes cannot be listed (no dashboard, Ray Client address), nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs

from ftray.auth import auth_headers, explicit_address
from ftray.spec import JobSpec, SpecError

SHARED_STORAGE_ENV = "FTRAY_SHARED_STORAGE"

# Filesystem types (third column of /proc/mounts) that other machines can see as well.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "glusterfs", "beegfs",
              "afs", "fuse.ceph", "fuse.glusterfs", "fuse.gcsfuse", "fuse.s3fs", "fuse.mountpoint-s3",
              "fuse.juicefs", "fuse.sshfs", "fuse.rclone", "fuse.blobfuse", "fuse.blobfuse2")


def check_storage(spec: JobSpec, address: str | None) -> None:
    """Raise SpecError when `spec` would keep its run on one machine's disk of a multi-machine
    cluster. `address` is the cluster (`--address`, else RAY_ADDRESS); None with no RAY_ADDRESS
    means an embedded local Ray, which is one machine."""
    path = spec.run.storage_path
    if "://" in path:
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return
    ips = alive_node_ips(address)
    if ips is not None:
        refuse_node_local(path, ips, where="the cluster" if address == "auto" else f"the cluster at {address}")


def alive_node_ips(address: str) -> list[str] | None:
    """IP addresses of the cluster's alive nodes (through its dashboard's state API, without
    joining the cluster), or None when they cannot be listed."""
    try:
        from ray.util.state.api import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource
        with explicit_address(address):
            client = StateApiClient(address, headers={"Content-Type": "application/json", **auth_headers()})
        nodes = client.list(StateResource.NODES, options=ListApiOptions(
            filters=[("state", "=", "ALIVE")], timeout=10), raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - unknown cluster shape: do not refuse (see module docstring)
        return None
    return [n.node_ip for n in nodes]


def refuse_node_local(path: str, node_ips: list[str], where: str = "the cluster",
                      mounts: str | None = None) -> None:
    """Raise SpecError if local `path` is not shared storage on a cluster of these nodes.
    `mounts` is /proc/mounts' text (read from this machine when None)."""
    machines = sorted(set(node_ips))
    if "://" in path or len(machines) <= 1 or os.environ.get(SHARED_STORAGE_ENV) == "1":
        return
    if filesystem_type(path, mounts) in NETWORK_FS:
        return
    raise SpecError(
        f"run.storage_path: {path!r} is on this machine's own disk, but {where} spans "
        f"{len(machines)} machines ({', '.join(machines)}); workers on the other machines could not "
        f"read or write its checkpoints. Use shared storage: an object-store URI "
        f"(--set run.storage_path=s3://BUCKET/runs) or a network filesystem mounted on every node; "
        f"set {SHARED_STORAGE_ENV}=1 if this path is mounted on every node already")


def filesystem_type(path: str, mounts: str | None = None) -> str | None:
    """The filesystem type of the mount that holds `path` (or its nearest existing parent)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None  # not Linux: unknown
    target = Path(path).expanduser().absolute()
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == Path(point) or Path(point) in target.parents
        if inside and len(point) > len(best):
            best, best_type = point, fields[2]
    return best_type


def storage(spec: JobSpec) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, run folder inside it, storage path for Ray) of `run.storage_path`."""
    if "://" in spec.run.storage_path:
        fs, root = pafs.FileSystem.from_uri(spec.run.storage_path)
        return fs, f"{root.rstrip('/')}/{spec.run.name}", spec.run.storage_path
    root = str(Path(spec.run.storage_path).expanduser().resolve())
    return pafs.LocalFileSystem(), f"{root}/{spec.run.name}", root


def check_writable(spec: JobSpec) -> None:
    """`run.storage_path` must be a folder this process can create and write (a local path; on
    object storage the credentials decide, and they are checked when the run writes)."""
    path = spec.run.storage_path
    if "://" in path:
        return
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise SpecError(f"run.storage_path: {path}: exists and is not a folder")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise SpecError(f"run.storage_path: {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(f"run.storage_path: {path}: {existing} is not writable by this user, so the run "
                        "folder cannot be created")
