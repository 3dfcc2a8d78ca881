"""`run.tracking.mlflow` against a real MLflow tracking server on 127.0.0.1 (SQLite backend, its
own artifact store), read back through the server's REST API: an `ftray run` (and its resume into
the same MLflow run) and a 3-trial `ftray sweep` (a parent run, each trial nested under it)."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from ftray import cli
from tests.conftest import blobs, cli_summary, mlp_spec, write_spec

pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free loopback port; stopped by its process group at the end."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        cwd=root, stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a hang guard: it starts in seconds on an idle machine
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def rest(uri: str, endpoint: str, body: dict | None = None, **query) -> dict:
    """One call of MLflow's REST API (POST with a JSON body, else GET with the query)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(query)}")
    else:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def runs_of(uri: str, experiment: str) -> list[dict]:
    exp = rest(uri, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    return rest(uri, "runs/search", {"experiment_ids": [exp], "max_results": 100}).get("runs", [])


def history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    got = rest(uri, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    return sorted((int(m.get("step", 0)), m["value"]) for m in got)


def params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def artifacts(uri: str, run_id: str, path: str = "") -> set[str]:
    got = rest(uri, "artifacts/list", run_id=run_id, **({"path": path} if path else {}))
    return {f["path"] for f in got.get("files", [])}


def tracked_spec(tmp_path: Path, uri: str, name: str, experiment: str, **sections) -> Path:
    pq.write_table(blobs(120, seed=3), tmp_path / "d.parquet")
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path / "runs", name, train={"epochs": 2, "batch_size": 32},
                   **sections)
    raw["run"]["tracking"] = {"mlflow": {"uri": uri, "experiment": experiment, "tags": {"team": "t1"}}}
    return write_spec(tmp_path / f"{name}.yaml", raw)


def test_run_logs_params_epochs_final_metrics_and_artifacts_and_resumes_into_the_same_run(
        ray_session, mlflow_server, tmp_path, capsys):
    spec = tracked_spec(tmp_path, mlflow_server, "tracked", "runs-exp")
    s = cli_summary(capsys, "run", str(spec))
    (run,) = runs_of(mlflow_server, "runs-exp")
    run_id = run["info"]["run_id"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "tracked"
    assert tags(run)["team"] == "t1" and tags(run)["ftray.kind"] == "run"
    p = params(run)  # the resolved spec, defaults included
    assert (p["train.epochs"], p["model.units"], p["train.lr"], p["method.name"]) == ("2", "16", "0.01", "full")
    assert p["train.optimizer.name"] == s["spec"]["train"]["optimizer"]["name"]
    # Every epoch's metrics at step = epoch, equal to the run's own history.
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert history(mlflow_server, run_id, key) == [
            (h["epoch"], pytest.approx(h[key], rel=1e-9)) for h in s["history"]], key
    assert history(mlflow_server, run_id, "final_val_accuracy") == [
        (2, pytest.approx(s["metrics"]["val_accuracy"], rel=1e-9))]
    assert {"curves.png", "model"} <= artifacts(mlflow_server, run_id)
    exported = {f"model/{f.name}" for f in Path(s["model"]).iterdir()}  # the exported model's files
    assert artifacts(mlflow_server, run_id, "model") == exported
    # More epochs resume the run folder, and with it the same MLflow run: one history of 3 epochs.
    s2 = cli_summary(capsys, "run", str(spec), "--set", "train.epochs=3")
    assert s2["resumes"] and [r["info"]["run_id"] for r in runs_of(mlflow_server, "runs-exp")] == [run_id]
    assert [step for step, _ in history(mlflow_server, run_id, "val_loss")] == [1, 2, 3]


def test_sweep_logs_a_parent_run_and_each_trial_nested_under_it(ray_session, mlflow_server, tmp_path, capsys):
    spec = tracked_spec(tmp_path, mlflow_server, "sw", "sweep-exp")
    raw = yaml.safe_load(spec.read_text())
    raw["tune"] = {"space": {"train.lr": {"grid": [0.001, 0.01, 0.1]}}, "metric": "val_loss", "mode": "min",
                   "num_samples": 1, "max_concurrent": 1, "trial": "packed", "searcher": "grid",
                   "scheduler": {"name": "fifo"}}
    write_spec(spec, raw)
    assert cli.main(["sweep", str(spec)]) == 0, capsys.readouterr().err[-3000:]
    folder = Path(capsys.readouterr().out.strip().splitlines()[-1])
    trials = {r["trial_id"]: r for r in csv.DictReader((folder / "trials.csv").open())}
    runs = runs_of(mlflow_server, "sweep-exp")
    (parent,) = [r for r in runs if tags(r).get("ftray.kind") == "sweep"]
    children = [r for r in runs if tags(r).get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert len(runs) == 4 and len(children) == 3 and parent["info"]["status"] == "FINISHED"
    assert params(parent)["tune.metric"] == "val_loss"
    assert {"summary.json", "trials.csv", "best.yaml"} <= artifacts(mlflow_server, parent["info"]["run_id"])
    # Each trial: its sampled value as a param, one val_loss per epoch equal to its own history.
    seen = set()
    for child in children:
        lr = float(params(child)["train.lr"])
        (trial_id,) = [t for t, r in trials.items() if float(r["train.lr"]) == lr]
        seen.add(trial_id)
        own = json.loads((folder / "trials" / trial_id / "summary.json").read_text())["history"]
        assert [v for _, v in history(mlflow_server, child["info"]["run_id"], "val_loss")] == [
            pytest.approx(h["val_loss"], rel=1e-6) for h in own]
        assert tags(child)["team"] == "t1"
    assert seen == set(trials)


@pytest.mark.parametrize("mode", ["fail", "warn"])
def test_a_server_that_does_not_answer_is_reported_before_ray(mode, tmp_path, capsys, no_ray):
    dead = f"http://127.0.0.1:{_free_port()}"
    spec = tracked_spec(tmp_path, dead, "t", "e")
    raw = yaml.safe_load(spec.read_text())
    raw["run"]["tracking"]["unreachable"] = mode
    write_spec(spec, raw)
    code = cli.main(["validate", str(spec)])
    out, err = capsys.readouterr()
    if mode == "fail":
        assert code == 2 and "run.tracking.mlflow.uri" in err and dead in err and "does not answer" in err, err
    else:
        assert code == 0 and "does not answer" in out + err and "not tracked" in out + err, (out, err)
