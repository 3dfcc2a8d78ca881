"""A two-worker training run spread over two nodes of a local multi-node cluster.

`ray.cluster_utils.Cluster` starts a head and two worker nodes (separate raylets) on this machine.
Each worker node has exactly the CPUs of one training worker and the head has fewer, so the two
Ray Train workers can only be placed one per worker node. The run goes through `ftray.train.run`
with `--address` semantics (joining the cluster, the storage check included) and the test reads
back from Ray's state API where the workers ran. It runs in a subprocess because `ray.init` can be
called only once per process (the test session has its own local Ray).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, blobs, mlp_spec, write_spec
from tests.ray_head import client_env, cluster_script, free_port

SCRIPT = cluster_script(r"""
import ray
from ray.util.state import list_actors
from ftray import train
from ftray.spec import load_spec
from ftray.storage_check import alive_node_ips

spec = load_spec(spec_path)
plan = train.prepare(spec, cluster.address)  # joins an existing cluster: the storage check runs
status, run_dir = train.run(spec, cluster.address, plan)  # joins, and leaves the cluster when done
ray.init(address=cluster.address)  # this script's own connection, to read where the workers ran
actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                     raise_on_missing_output=False)
json.dump({"status": status, "run_dir": run_dir,
           "head": cluster.head_node.node_id,
           "worker_nodes": [w.node_id for w in nodes],
           "train_worker_nodes": [a.node_id for a in actors],
           "alive_nodes": len([n for n in ray.nodes() if n["Alive"]]),
           "node_ips": alive_node_ips(cluster.address)}, open(out, "w"))
""")


@pytest.mark.slow  # ~90 s; a run across nodes of a local multi-node cluster stays in the default run (tests/test_faults_elastic.py)
def test_two_workers_run_on_two_nodes(tmp_path):
    data = tmp_path / "blobs.parquet"
    pq.write_table(blobs(240), data)
    spec = write_spec(tmp_path / "spec.yaml", mlp_spec(
        data, tmp_path / "runs", name="multinode", train={"epochs": 1},
        scaling={"num_workers": 2, "cpus_per_worker": 2}))
    out = tmp_path / "result.json"
    # Ray's default temp dir would receive this cluster's address file (ray_current_cluster), and
    # any plain `ray.init()` on the machine would then join this cluster: give it its own.
    ray_tmp = tempfile.mkdtemp(prefix="ftm", dir="/tmp")
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, str(spec), str(out), str(free_port()), str(free_port())],
                           cwd=REPO, env=client_env(RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1"),
                           capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0 and out.exists(), r.stdout[-3000:] + r.stderr[-5000:]
    result = json.loads(out.read_text())
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    assert result["status"] == 0, summary["error"]
    assert result["alive_nodes"] == 3
    # The storage check saw the three nodes, on one machine: a local storage_path is fine here.
    assert len(result["node_ips"]) == 3 and len(set(result["node_ips"])) == 1
    # One Ray Train worker on each worker node: the run really spanned two nodes.
    assert sorted(result["train_worker_nodes"]) == sorted(result["worker_nodes"])
    assert summary["status"] == "succeeded" and summary["epochs_done"] == 1
    assert summary["ray"]["num_workers"] == 2
