"""`run:`: the run's name, storage, seed and fault tolerance."""

from __future__ import annotations

from typing import Literal

from ftray.schema import Strict, describe


class MLflowTracking(Strict):
    uri: str = describe("MLflow tracking URI: a server (`http://host:5000`) or a local `file:` / `sqlite:` store.")
    experiment: str = describe("MLflow experiment the run is logged under (created if missing).", "ftray")
    run_name: str | None = describe("MLflow run name (default: `run.name`).", None)
    tags: dict[str, str] = describe("Tags set on the MLflow run (and on each trial's run of a sweep).", {})


class WandbTracking(Strict):
    project: str = describe("W&B project the run is logged under.")
    entity: str | None = describe("W&B entity (user or team; default: the API key's default entity).", None)
    mode: Literal["online", "offline", "disabled"] = describe(
        "`online` logs to the W&B server (needs an API key), `offline` writes the run under `dir` only "
        "(no network, no key; `wandb sync` uploads it later), `disabled` logs nothing.", "online")
    run_name: str | None = describe("W&B run name (default: `run.name`).", None)
    tags: list[str] = describe("Tags set on the W&B run (and on each trial's run of a sweep).", [])
    dir: str | None = describe("Folder W&B writes its `wandb/` files under (default: the run folder, or "
                               "the sweep folder).", None)


class TrackingSpec(Strict):
    mlflow: MLflowTracking | None = describe(
        "Log the resolved spec as params, every epoch's metrics, the final metrics and the run's plots "
        "and exported model as artifacts to MLflow (`pip install 'ftray[tracking]'`); a sweep logs one "
        "parent run and each trial as a nested run.", None)
    wandb: WandbTracking | None = describe(
        "Log the resolved spec as config, every epoch's metrics, the final metrics and `curves.png` to "
        "Weights & Biases (`pip install 'ftray[wandb]'`); a sweep logs each trial as a run, grouped under "
        "the sweep's name.", None)
    unreachable: Literal["fail", "warn"] = describe(
        "A tracking server that does not answer before Ray starts: `fail` exits 2, `warn` says so and "
        "runs without tracking.", "fail")


class RunSpec(Strict):
    name: str = describe("Run name: the folder under `storage_path`; re-running it resumes.",
                         pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    storage_path: str = describe("Where run folders live: a local path or a URI (s3://, gs://, ...).",
                                 "runs")
    seed: int = describe("Seed for weights, data split, shuffling and dropout.", 0, ge=0)
    max_failures: int = describe("Worker-group restarts from the last checkpoint before giving up.",
                                 0, ge=0, le=1000)
    keep_checkpoints: int = describe("Most recent checkpoints kept.", 2, ge=1)
    progress_every_s: float = describe(
        "Within an epoch, seconds between progress lines (step, loss, samples/s, ETA) when stdout is "
        "not a terminal; on a terminal one line updates in place. 0: no progress within epochs.", 30.0,
        ge=0.0, le=86400.0)
    tracking: TrackingSpec | None = describe("Experiment tracking (MLflow, W&B) beside the run folder.", None)
