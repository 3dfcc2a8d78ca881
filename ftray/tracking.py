"""Experiment tracking with MLflow (`run.tracking.mlflow`).

- `ftray run`: one MLflow run per ftray run. The driver creates it (params: the resolved spec,
  flattened), `EpochLogger` (a Ray Train callback, in the controller) logs every epoch's metrics as
  they are reported, and `finish` logs the final metrics, `curves.png` and the exported model as
  artifacts and ends it. Its id is kept in the run folder (`tracking.json`), so a resumed run goes
  on logging into the same MLflow run.
- `ftray sweep`: a parent run for the sweep (the base spec as params, the sweep's plots and tables
  as artifacts at the end) and each trial as a nested run, through Ray Tune's own
  `MLflowLoggerCallback` (the trial's sampled values as params, every reported result as metrics);
  each trial's `curves.png` joins its run at the end.

Ray's `setup_mlflow` is not used: it starts runs in the Train workers, one per worker, while
ftray's epoch reports already meet in the controller, where one callback logs them once.
"""

from __future__ import annotations

import importlib.util
import json
import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import ray.train

from ftray.redact import redact
from ftray.resume import flatten
from ftray.spec import JobSpec, SpecError

RECORD = "tracking.json"  # in the run folder: the MLflow run id a resumed run goes on with
PARAM_VALUE_MAX = 500  # MLflow refuses longer param values (6000 on recent servers; be safe)


@dataclass(frozen=True)
class Target:
    """Where a run logs: a tracking URI and an experiment (picklable: it travels to the controller)."""
    uri: str
    experiment: str

    def client(self):
        from mlflow.tracking import MlflowClient
        return MlflowClient(tracking_uri=self.uri)

    def experiment_id(self) -> str:
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found else client.create_experiment(self.experiment)


def check(spec: JobSpec) -> JobSpec:
    """Before Ray starts: the tracking library is installed and the server answers. Returns the spec
    to run: unchanged, or without tracking when the server is down and `unreachable: warn`."""
    tracking = spec.run.tracking
    if tracking is not None and tracking.wandb is not None and importlib.util.find_spec("wandb") is None:
        raise SpecError("run.tracking.wandb: wandb is not installed (pip install 'ftray[wandb]')")
    if tracking is None or tracking.mlflow is None:
        return spec
    if importlib.util.find_spec("mlflow") is None:
        raise SpecError("run.tracking.mlflow: MLflow is not installed (pip install 'ftray[tracking]')")
    uri = tracking.mlflow.uri
    problem = unreachable(uri)
    if problem is None:
        return spec
    if tracking.unreachable == "fail":
        raise SpecError(f"run.tracking.mlflow.uri: {uri} does not answer ({problem}); start the server, "
                        "or set run.tracking.unreachable: warn to run without it")
    print(f"[ftray] warning: run.tracking.mlflow.uri: {uri} does not answer ({problem}); "
          "this run is not tracked", flush=True)
    return spec.model_copy(update={"run": spec.run.model_copy(update={"tracking": None})})


def unreachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """Why an http(s) tracking server cannot be used (None: it answers). Local stores always can."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


def target(spec: JobSpec) -> Target | None:
    tracking = spec.run.tracking
    if tracking is None or tracking.mlflow is None:
        return None
    return Target(tracking.mlflow.uri, tracking.mlflow.experiment)


def params_of(spec: JobSpec) -> dict[str, str]:
    """The resolved spec as MLflow params: dotted keys, values as text (secrets redacted)."""
    flat = flatten(redact(spec.model_dump(mode="json")))
    return {k: (v if isinstance(v, str) else json.dumps(v))[:PARAM_VALUE_MAX] for k, v in flat.items()}


def numeric(metrics: dict) -> dict[str, float]:
    """The metrics MLflow can hold: finite numbers (booleans as 0/1)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def log_metrics(client, run_id: str, metrics: dict, step: int) -> None:
    from mlflow.entities import Metric
    now = _now_ms()
    batch = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
    if batch:
        client.log_batch(run_id, metrics=batch)


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=items[i:i + 100])


def _now_ms() -> int:
    import time
    return int(time.time() * 1000)


# ------------------------------------------------------------------------------- ftray run
def start_run(spec: JobSpec, run_dir: Path | None, kind: str = "run") -> str | None:
    """The MLflow run of `spec` (None: not tracked): the one an earlier attempt of this run folder
    started (a resume), else a new one with the resolved spec as params."""
    where = target(spec)
    if where is None:
        return None
    client = where.client()
    record = run_dir / RECORD if run_dir is not None else None
    if record is not None and record.is_file():
        run_id = json.loads(record.read_text())["mlflow_run_id"]
        client.update_run(run_id, status="RUNNING")
        return run_id
    mlflow = spec.run.tracking.mlflow
    run = client.create_run(where.experiment_id(), run_name=mlflow.run_name or spec.run.name,
                            tags={"ftray.kind": kind, "ftray.method": spec.method.name, **mlflow.tags})
    log_params(client, run.info.run_id, params_of(spec))
    if record is not None:
        record.write_text(json.dumps({"mlflow_run_id": run.info.run_id, "uri": where.uri}))
    return run.info.run_id


class EpochLogger(ray.train.UserCallback):
    """Ray Train callback (in the controller): each epoch's report as MLflow metrics at step = epoch.
    A report without a checkpoint is no new epoch (see `ftray.train.Progress`)."""

    def __init__(self, where: Target, run_id: str):
        self.where, self.run_id, self._client = where, run_id, None

    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is None:
            return
        m = metrics[0]
        try:
            if self._client is None:
                self._client = self.where.client()
            log_metrics(self._client, self.run_id, {k: v for k, v in m.items() if k != "epoch"}, int(m["epoch"]))
        except Exception as e:  # noqa: BLE001 - tracking never fails the training run
            print(f"[ftray] warning: MLflow: epoch {m['epoch']} not logged ({e})", flush=True)


def finish(spec: JobSpec, run_id: str | None, summary: dict, run_dir: Path | None, artifacts=("curves.png", "model")) -> None:
    """End the MLflow run: the summary's final metrics (as `final_<name>`), the run folder's
    artifacts, and its status."""
    if run_id is None:
        return
    try:
        _finish(target(spec).client(), run_id, summary, run_dir, artifacts)
    except Exception as e:  # noqa: BLE001 - the run folder is complete; tracking is an extra
        print(f"[ftray] warning: MLflow run {run_id} not finished ({e})", flush=True)


def _finish(client, run_id: str, summary: dict, run_dir: Path | None, artifacts) -> None:
    steps = summary.get("epochs_done") or summary.get("rl", {}).get("iterations") or 0
    log_metrics(client, run_id, {f"final_{k}": v for k, v in (summary.get("metrics") or {}).items()}, int(steps))
    for name in artifacts if run_dir is not None else ():
        path = run_dir / name
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FAILED" if summary.get("status") == "failed" else "FINISHED")


# ----------------------------------------------------------------------------- ftray sweep
def start_sweep(spec: JobSpec, sweep_dir: Path) -> str | None:
    """The sweep's parent MLflow run (the same one when a re-run resumes the sweep)."""
    return start_run(spec, sweep_dir, kind="sweep")


def sweep_callbacks(spec: JobSpec, parent_id: str | None) -> list:
    """Ray Tune's MLflow logger: each trial a run nested under the sweep's parent run."""
    if parent_id is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    mlflow = spec.run.tracking.mlflow
    return [MLflowLoggerCallback(tracking_uri=mlflow.uri, experiment_name=mlflow.experiment,
                                 tags={"mlflow.parentRunId": parent_id, "ftray.kind": "trial",
                                       "ftray.sweep": spec.run.name, **mlflow.tags},
                                 save_artifact=False)]


def finish_sweep(spec: JobSpec, parent_id: str | None, sweep_dir: Path, ok: bool) -> None:
    """End the sweep's parent run: its plots and tables as artifacts, and each trial's
    `curves.png` on that trial's nested run."""
    if parent_id is None:
        return
    try:
        _finish_sweep(target(spec).client(), parent_id, sweep_dir, ok)
    except Exception as e:  # noqa: BLE001 - the sweep folder is complete; tracking is an extra
        print(f"[ftray] warning: MLflow run {parent_id} not finished ({e})", flush=True)


def _finish_sweep(client, parent_id: str, sweep_dir: Path, ok: bool) -> None:
    for path in sorted(sweep_dir.iterdir()):
        if path.suffix in (".png", ".csv", ".yaml") or path.name == "summary.json":
            client.log_artifact(parent_id, str(path))
    experiment = client.get_run(parent_id).info.experiment_id
    for trial_run in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'"):
        trial_id = trial_run.data.tags.get("trial_name", "").removeprefix("trial_")
        curves = sweep_dir / "trials" / trial_id / "curves.png"
        if curves.is_file():
            client.log_artifact(trial_run.info.run_id, str(curves))
    client.set_terminated(parent_id, status="FINISHED" if ok else "FAILED")
