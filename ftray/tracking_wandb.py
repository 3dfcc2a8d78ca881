"""Experiment tracking with Weights & Biases (`run.tracking.wandb`).

- `ftray run`: one W&B run per ftray run, with a stable id kept in the run folder
  (`wandb_run.json`), so a resumed run goes on in the same W&B run. `EpochLogger` (a Ray Train
  callback, in the controller) opens it lazily at the first epoch report (the resolved spec as
  config), logs every epoch's metrics at step = epoch, and finishes it when the last epoch is
  reported; `finish` (the driver, after the summary) re-opens it by id (`resume="allow"`) for the
  summary's final metrics, `curves.png` and the exit status.
- `ftray sweep`: Ray Tune's own `WandbLoggerCallback`, each trial its own run, grouped under the
  sweep's name.

Why two processes: ftray's epoch reports meet in the controller, and the driver alone has the
summary and `curves.png`; a W&B run is owned by one process at a time, so the controller finishes
its part before the driver opens the run again. Ray's `setup_wandb` is not used: it needs the V1
AIR session and would start a run in every Train worker. A W&B failure never fails the run: it
costs a warning.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray.train

from ftray.redact import redact
from ftray.spec import JobSpec

RECORD = "wandb_run.json"  # in the run folder: the W&B run id a resumed run goes on with
# No console capture (the controller is a Ray actor), no system-stats sampling, no banner.
SETTINGS = {"silent": True, "console": "off", "x_disable_stats": True}


@dataclass(frozen=True)
class Target:
    """One W&B run's `wandb.init` arguments (picklable: it travels to the controller)."""
    run_id: str
    init: dict = field(default_factory=dict)

    def open(self, **extra):
        import wandb
        _environ(self.init["mode"], self.init.get("dir"))
        return wandb.init(id=self.run_id, resume="allow", settings=dict(SETTINGS), **{**self.init, **extra})


def _environ(mode: str, where: str | None) -> None:
    """W&B reads some settings from the environment only (Ray Tune's key check among them):
    offline and disabled runs need neither network nor an API key."""
    os.environ["WANDB_SILENT"] = "true"
    if mode != "online":
        os.environ["WANDB_MODE"] = mode
    if where:
        os.environ.setdefault("WANDB_DIR", where)


def config_of(spec: JobSpec) -> dict:
    """The resolved spec as W&B config: the nested mapping, secrets redacted."""
    return redact(spec.model_dump(mode="json"))


def start_run(spec: JobSpec, run_dir: Path | None) -> Target | None:
    """The W&B run of `spec` (None: not tracked): the id an earlier attempt of this run folder
    kept (a resume), else a new one. Nothing is sent yet: the controller opens the run."""
    tracking = spec.run.tracking
    if tracking is None or tracking.wandb is None:
        return None
    wb = tracking.wandb
    record = run_dir / RECORD if run_dir is not None else None
    if record is not None and record.is_file():
        run_id = json.loads(record.read_text())["wandb_run_id"]
    else:
        run_id = uuid.uuid4().hex[:12]
        if record is not None:
            record.write_text(json.dumps({"wandb_run_id": run_id, "project": wb.project}))
    where = wb.dir or (str(run_dir) if run_dir is not None else None)
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
    init = {"project": wb.project, "entity": wb.entity, "mode": wb.mode, "name": wb.run_name or spec.run.name,
            "tags": list(wb.tags), "dir": where, "config": config_of(spec), "job_type": "ftray-run"}
    return Target(run_id, init)


class EpochLogger(ray.train.UserCallback):
    """Ray Train callback (in the controller): each epoch's report as W&B metrics at step = epoch;
    the run is finished at the last epoch (or an early stop), so the driver can open it again.
    A report without a checkpoint is no new epoch (see `ftray.train.Progress`)."""

    def __init__(self, target: Target, epochs: int):
        self.target, self.epochs, self._run = target, epochs, None

    def after_report(self, run_context, metrics, checkpoint):
        if checkpoint is None:
            return
        m = metrics[0]
        try:
            if self._run is None:
                self._run = self.target.open()
            epoch = int(m["epoch"])
            self._run.log({k: v for k, v in m.items() if k != "epoch"} | {"epoch": epoch}, step=epoch)
            if epoch >= self.epochs or m.get("early_stopped"):
                _close(self._run, 0)
                self._run = None
        except Exception as e:  # noqa: BLE001 - tracking never fails the training run
            print(f"[ftray] warning: W&B: epoch {m.get('epoch')} not logged ({e})", flush=True)

    def after_exception(self, run_context, worker_exceptions):
        if self._run is not None:
            try:
                _close(self._run, 1)
            except Exception:  # noqa: BLE001 - the run's own error is the one to report
                pass
            self._run = None


def _close(run, exit_code: int) -> None:
    """Finish `run` and stop this process's W&B service: `finish` alone may return before the
    service has written the run's last records (seen offline), and the next process to open the
    run, or to read its files, must find them there."""
    import wandb
    run.finish(exit_code=exit_code)
    wandb.teardown()


def finish(target: Target | None, summary: dict, run_dir: Path | None) -> None:
    """Re-open the W&B run for the summary's final metrics (`final_<name>` in the run summary),
    `curves.png` as an image, and finish it with the run's status."""
    if target is None:
        return
    try:
        import wandb
        run = target.open()
        for key, value in (summary.get("metrics") or {}).items():
            run.summary[f"final_{key}"] = value
        run.summary["ftray_status"] = summary.get("status")
        curves = run_dir / "curves.png" if run_dir is not None else None
        if curves is not None and curves.is_file():
            # No explicit step: an online resume goes on after the last epoch's step by itself.
            run.log({"curves": wandb.Image(str(curves))})
        _close(run, 1 if summary.get("status") == "failed" else 0)
    except Exception as e:  # noqa: BLE001 - the run folder is complete; tracking is an extra
        print(f"[ftray] warning: W&B run {target.run_id} not finished ({e})", flush=True)


def sweep_callbacks(spec: JobSpec, sweep_dir: Path) -> list:
    """Ray Tune's W&B logger: each trial its own run, grouped under the sweep's name."""
    tracking = spec.run.tracking
    if tracking is None or tracking.wandb is None:
        return []
    wb = tracking.wandb
    where = wb.dir or str(sweep_dir)
    Path(where).mkdir(parents=True, exist_ok=True)
    _environ(wb.mode, where)
    kwargs = {"entity": wb.entity} if wb.entity else {}
    return [_logger_callback()(project=wb.project, group=spec.run.name, mode=wb.mode, dir=where,
                                tags=list(wb.tags), settings=dict(SETTINGS), job_type="ftray-trial", **kwargs)]


def _logger_callback():
    """Ray Tune's `WandbLoggerCallback` whose per-trial logging actor stops its W&B service after
    `finish` (see `_close`: the trial's last records are on disk when the sweep ends)."""
    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class FlushingActor(_WandbLoggingActor):
        def run(self):
            super().run()
            self._wandb.teardown()

    class Callback(WandbLoggerCallback):
        _logger_actor_cls = FlushingActor

    return Callback
