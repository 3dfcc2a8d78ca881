"""Fault injection: a node removed from a local multi-node cluster during an elastic run.

`ray.cluster_utils.Cluster` starts a head and two worker nodes (separate raylets) on this machine;
each worker node fits exactly one training worker. The spec asks for `num_workers: [1, 2]`: the
run starts on both nodes, one node is removed (its raylet and every process on it killed) once the
first epoch's checkpoint exists, and training goes on from that checkpoint on the one node left.
It runs in a subprocess because `ray.init` can be called only once per process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ftray import cli
from ftray.spec import JobSpec
from ftray.ray_context import WORKER_START_TIMEOUT_ENV
from tests.conftest import REPO, blobs, mlp_spec, write_spec
from tests.ray_head import client_env, cluster_script, free_port

EPOCHS, STEPS_PER_EPOCH = 6, 60  # 1920 training rows, global batch 32

SCRIPT = cluster_script(r"""
removed = {}
import pyarrow.fs as pafs
from ftray import checkpoint, train
from ftray.spec import load_spec

spec = load_spec(spec_path)
run_dir = Path(train.storage(spec)[1])

def remove_a_node_after_the_first_checkpoint():
    while not any(checkpoint.is_complete(pafs.LocalFileSystem(), str(c)) for c in run_dir.glob("checkpoint_*")):
        time.sleep(0.1)
    removed["epochs_done"] = max(checkpoint.load_progress(c)["epoch"] for c in run_dir.glob("checkpoint_*")
                                 if checkpoint.is_complete(pafs.LocalFileSystem(), str(c)))
    cluster.remove_node(nodes[1])

threading.Thread(target=remove_a_node_after_the_first_checkpoint, daemon=True).start()
plan = train.prepare(spec, cluster.address)
status, run_dir = train.run(spec, cluster.address, plan)
json.dump({"status": status, "run_dir": run_dir, "removed": removed}, open(out, "w"))
""")


# About 90 s on 2 cores: after the node is lost, Ray's elastic restart can first ask for the lost
# node's worker again (its view of the cluster is stale) and wait out the worker-group start
# timeout (`ray_context.worker_start_timeout`, 20 s here) before it sizes a group of one.
def test_node_lost_during_an_elastic_run(tmp_path):
    pq.write_table(blobs(2400), tmp_path / "blobs.parquet")
    spec = write_spec(tmp_path / "spec.yaml", mlp_spec(
        tmp_path / "blobs.parquet", tmp_path / "runs", name="elastic",
        train={"epochs": EPOCHS, "batch_size": 32}, run={"max_failures": 2},
        scaling={"num_workers": [1, 2], "cpus_per_worker": 2}))
    out = tmp_path / "result.json"
    ray_tmp = tempfile.mkdtemp(prefix="fte", dir="/tmp")  # this cluster's own address file
    log = tmp_path / "cluster.log"
    # Its own session: on a timeout the script and every raylet it started end together.
    env = client_env(RAY_TMPDIR=ray_tmp, OMP_NUM_THREADS="1")
    # 20 s, not ftray's elastic default (60 s) nor the test session's 600 s: the timeout bounds only
    # the wait for a placement group, which places at once on this idle cluster, and the stale
    # restart after the loss waits it out once (see above).
    env[WORKER_START_TIMEOUT_ENV] = "20"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(spec), str(out), str(free_port()), str(free_port())],
                            cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0 and out.exists(), log.read_text()[-6000:]
    result = json.loads(out.read_text())
    summary = json.loads((Path(result["run_dir"]) / "summary.json").read_text())
    assert result["status"] == 0, summary["error"]
    lost_after = result["removed"]["epochs_done"]
    assert 1 <= lost_after < EPOCHS, "the node went while training still had epochs to go"

    history = summary["history"]
    assert [m["epoch"] for m in history] == list(range(1, EPOCHS + 1))
    workers = [m["workers"] for m in history]
    assert workers[0] == 2 and workers[-1] == 1, workers  # started on two nodes, finished on one
    # It went on from a checkpoint at least as new as the last one before the node went.
    assert summary["resumes"] and summary["resumes"][0]["epoch"] >= lost_after
    # The same global batch on fewer workers: the step count per epoch did not change.
    assert [m["step"] for m in history] == [STEPS_PER_EPOCH * e for e in range(1, EPOCHS + 1)]
    assert summary["metrics"]["val_accuracy"] > 0.9


@pytest.mark.parametrize("scaling, run, expected", [
    ({"num_workers": [1, 2]}, {}, "scaling.num_workers: an elastic range needs run.max_failures > 0"),
    ({"num_workers": [3, 2]}, {"max_failures": 1}, "scaling: num_workers: the range [3, 2] has min > max"),
    ({"num_workers": [3, 4]}, {"max_failures": 1}, "train.batch_size: 16 is not divisible by 3 workers"),
    ({"num_workers": [1, 2, 3]}, {"max_failures": 1}, "scaling.num_workers: Input should be a valid integer"),
])
def test_elastic_ranges_are_checked_before_ray(tmp_path, blobs_parquet, capsys, scaling, run, expected):
    spec = write_spec(tmp_path / "bad.yaml", mlp_spec(blobs_parquet, tmp_path / "runs", scaling=scaling, run=run))
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ftray: error: {spec}: ") and expected in err, err


def test_an_elastic_range_is_a_min_and_a_max_worker_count():
    spec = JobSpec.model_validate(mlp_spec("d.parquet", "runs", scaling={"num_workers": [2, 4]},
                                           train={"batch_size": 24}, run={"max_failures": 1}))
    assert (spec.scaling.min_workers, spec.scaling.num_workers, spec.scaling.elastic) == (2, 4, True)
    assert spec.micro_batch_for(2) == 12 and spec.micro_batch_size == 6
    assert JobSpec.model_validate(spec.model_dump(mode="json")) == spec  # what the workers receive
