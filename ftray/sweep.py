"""`ftray sweep`: a Ray Tune hyperparameter sweep over any spec field.

Read top to bottom: check the spec, its data and every searched key before Ray starts; each trial
is a Tune function that applies its sampled values to the spec (through the same validation as
`--set`) and trains it in one of two shapes (`tune.trial`):
- `train`: a Ray Train run (`ftray.train.run`), whose every epoch reaches Tune through
  `TuneReportCallback` so schedulers such as ASHA can stop it early;
- `packed`: the trial process itself runs the same training loop (`ftray.train.fit`) and reports a
  Tune checkpoint each epoch, so that PBT/PB2 can restart a trial from a better one's checkpoint
  with mutated hyperparameters; trials take a fraction of a GPU and pack several per device.
Finally the sweep folder gets `summary.json`, `trials.csv`, `best.yaml`, `curves.png` and
`params.png`. With `tune.group_by`, the whole sweep runs once per value of a data column (per-task
search) and the folder gets `tasks.csv` and one ready spec per task under `best/`.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Callable

import yaml

from ftray import data, ray_context, train
from ftray.checkpoint import MODEL_DIR, load_progress
from ftray.redact import redact
from ftray.spec import PBT_MUTABLE, JobSpec, SpecError, apply_overrides, validate

TUNE_DIR = "tune"


# ------------------------------------------------------------------------------- before Ray
def check_space(raw: dict, spec: JobSpec, source: str) -> None:
    """Every searched key must name a spec field that accepts every listed value (or the bounds)."""
    for key, dist in spec.tune.space.items():
        (kind, args), = dist.items()
        values = args if kind in ("choice", "grid") else args[:2]
        for value in values:
            if kind == "randint":
                value = int(value)
            try:
                validate(apply_overrides(raw, [(key, value)]), source)
            except SpecError as e:
                raise SpecError(f"{source}: tune.space.{key} = {value!r}: "
                                f"{str(e).split(': ', 2)[-1]}") from None


def trial_spec(raw: dict, values: dict, sweep_dir: str, trial_id: str, source: str) -> JobSpec:
    """The spec of one trial: sampled values applied, stored under the sweep folder by trial id."""
    trial_raw = apply_overrides(raw, list(values.items()) + [
        ("run.name", trial_id), ("run.storage_path", f"{sweep_dir}/trials"), ("tune", None)])
    return validate(trial_raw, f"{source} (trial {trial_id})")


def param_space(spec: JobSpec) -> dict:
    from ray import tune
    makers = {"choice": lambda a: tune.choice(a), "grid": lambda a: tune.grid_search(a),
              "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
              "randint": lambda a: tune.randint(int(a[0]), int(a[1])), "quniform": lambda a: tune.quniform(*a)}
    space = {}
    for key, dist in spec.tune.space.items():
        (kind, args), = dist.items()
        if spec.tune.searcher == "grid" and kind == "choice":
            kind = "grid"
        space[key] = makers[kind](args)
    return space


def searcher(spec: JobSpec):
    t = spec.tune  # metric and mode reach the searcher through TuneConfig
    if t.searcher in ("random", "grid"):
        # Seeded, so a sweep samples the same trials every time it runs.
        from ray.tune.search import BasicVariantGenerator
        # Its own limit: TuneConfig.max_concurrent_trials does not reach a generator passed in.
        return BasicVariantGenerator(random_state=spec.run.seed, max_concurrent=t.max_concurrent)
    try:
        if t.searcher == "optuna":
            from ray.tune.search.optuna import OptunaSearch
            alg = OptunaSearch(seed=spec.run.seed)
        else:
            from ray.tune.search.hyperopt import HyperOptSearch
            alg = HyperOptSearch(random_state_seed=spec.run.seed)
    except (ImportError, AssertionError) as e:
        raise SpecError(f"tune.searcher: {t.searcher} needs its package ({e}); "
                        f"pip install {t.searcher}") from None
    from ray.tune.search import ConcurrencyLimiter
    return ConcurrencyLimiter(alg, max_concurrent=t.max_concurrent)


def scheduler(spec: JobSpec):
    from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                     PopulationBasedTraining)
    from ray.tune.schedulers.pb2 import PB2
    s = spec.tune.scheduler  # metric and mode reach schedulers through TuneConfig
    if s.name == "asha":
        return ASHAScheduler(max_t=spec.train.epochs, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "median":
        # Its default clock is seconds (`time_total_s`); the spec's grace period is in epochs.
        return MedianStoppingRule(time_attr="training_iteration", grace_period=s.grace_period,
                                  min_samples_required=2)
    if s.name == "hyperband":
        return HyperBandScheduler(max_t=spec.train.epochs, reduction_factor=s.reduction_factor)
    if s.name in ("pbt", "pb2"):
        mutable = {k: d for k, d in spec.tune.space.items() if k in PBT_MUTABLE}
        if s.name == "pb2":
            return PB2(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                       quantile_fraction=s.quantile_fraction, synch=s.synch,
                       hyperparam_bounds={k: list(next(iter(d.values()))) for k, d in mutable.items()})
        space = param_space(spec)
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability, synch=s.synch,
            hyperparam_mutations={k: space[k] for k in mutable}, custom_explore_fn=Clip(spec.tune.space))
    return FIFOScheduler()


class Clip:
    """PBT's explore step scales values by 0.8 or 1.2 without looking at bounds: keep each mutated
    value inside its searched range, so that it stays a valid spec value (momentum < 1, ...)."""

    def __init__(self, space: dict):
        self.bounds = {k: next(iter(d.values()))[:2] for k, d in space.items()
                       if next(iter(d)) not in ("choice", "grid")}

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            if key in config:
                config[key] = type(config[key])(min(max(config[key], low), high))
        return config


def packed_trial(raw: dict, sweep_dir: str, source: str):
    """The Tune function of a packed trial: `train.fit` in this process, a Tune checkpoint per epoch."""
    def trial(values: dict) -> None:
        import ray.data
        import torch
        from ray import tune
        tspec = trial_spec(raw, values, sweep_dir, tune.get_context().get_trial_id(), source)
        plan = data.inspect(tspec)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # Small data comes back materialized (see `data.ray_datasets`): the trial's epochs do not
        # re-run Ray Data. A PBT exploit restarts the trial function, and with it this read.
        datasets, rows = data.ray_datasets(tspec, plan)
        train_ds, val_ds = datasets["train"], datasets["val"]

        def report(metrics: dict, folder: str | None) -> None:
            # `done` on the trial's last epoch makes Tune end the trial before its scheduler sees the
            # result. Without it, synchronous PBT could pause a trial on its final report (waiting for
            # the population) and restore it from that checkpoint, where it reports the same last
            # epoch again, is paused again, and so on: `jobs/pbt.yaml` never ended.
            done = metrics["epoch"] >= tspec.train.epochs or metrics["early_stopped"]
            tune.report({**metrics, "done": done},
                        checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

        # Tune sets CUDA_VISIBLE_DEVICES to the trial's (possibly shared) GPU.
        device = torch.device("cuda" if tspec.scaling.use_gpu and torch.cuda.is_available() else "cpu")
        train.fit(train.LoopConfig(tspec, plan.info, rows["train"]),
                  train.Worker(rank=0, world=1, device=device, train_data=train_ds, val_data=val_ds,
                               resume=tune.get_checkpoint(), report=report,
                               adopt_hyperparameters=spec_has_pbt(raw)))
    return trial


def spec_has_pbt(raw: dict) -> bool:
    return (raw.get("tune") or {}).get("scheduler", {}).get("name") in ("pbt", "pb2")


# --------------------------------------------------------------------------------- the sweep
def run_sweep(raw: dict, spec: JobSpec, source: str, address: str | None = None) -> tuple[int, str]:
    """Run the sweep (or, with `tune.group_by`, one per task) and write its folder.
    Returns (exit status, sweep folder)."""
    if spec.tune is None:
        raise SpecError(f"{source}: tune: a sweep needs a tune section (space, metric, mode, ...)")
    if spec.tune.group_by:
        return run_grouped(raw, spec, source, address)
    t0 = time.perf_counter()
    check_space(raw, spec, source)
    train.prepare(spec, address)
    sweep_dir = train.storage(spec)[1]
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    search_alg = searcher(spec)
    return fit_sweep(raw, spec, source, address, sweep_dir, search_alg, t0), sweep_dir


def fit_sweep(raw: dict, spec: JobSpec, source: str, address: str | None, sweep_dir: str, search_alg,
              t0: float) -> int:
    """Start (or restore) the Tuner of a checked sweep, fit it and write the sweep folder."""
    from ray import tune
    t = spec.tune
    packed = t.trial == "packed"
    cpus = spec.scaling.cpus_per_worker
    # A Train trial drives its own workers (1 CPU for the driver, plus theirs); a packed trial trains
    # in place. One more CPU leaves Ray Data's tasks room to run beside every trial.
    per_trial = cpus if packed else math.ceil(spec.scaling.num_workers * cpus) + 1
    trial_scheduler = scheduler(spec)  # before Ray starts: PB2 refuses to build without scikit-learn
    def trial(values: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback
        tspec = trial_spec(raw, values, sweep_dir, tune.get_context().get_trial_id(), source)
        status, run_dir = train.run(tspec, address, callbacks=[TuneReportCallback()])
        if status:
            raise RuntimeError(f"trial failed; see {run_dir}/summary.json")

    # PBT/PB2 restore a trial from another trial's checkpoint some time after it was reported; a
    # limit on kept checkpoints can delete it first (seen: "holds no exported ftray model"). Keep all.
    keep = None if t.scheduler.name in ("pbt", "pb2") else spec.run.keep_checkpoints
    run_config = tune.RunConfig(name=TUNE_DIR, storage_path=sweep_dir,
                                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep))
    tune_dir = f"{sweep_dir}/{TUNE_DIR}"
    if packed:
        gpu = t.gpu_fraction if spec.scaling.use_gpu else 0
        trainable = tune.with_resources(packed_trial(raw, sweep_dir, source), {"CPU": cpus, "GPU": gpu})
    else:
        trainable = tune.with_resources(trial, {"CPU": 1})
    with ray_context.use_ray(spec, address, cpus=math.ceil(t.max_concurrent * per_trial) + 1):
        if tune.Tuner.can_restore(tune_dir):  # a re-run resumes: finished trials are not repeated
            tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space(spec), run_config=run_config,
                tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                            max_concurrent_trials=t.max_concurrent, search_alg=search_alg,
                                            scheduler=trial_scheduler))
        results = tuner.fit()
        return write_outputs(results, raw, spec, sweep_dir, time.perf_counter() - t0)


def run_grouped(raw: dict, spec: JobSpec, source: str, address: str | None) -> tuple[int, str]:
    """Per-task architecture search: the sweep once per value of the `tune.group_by` column, each on
    that task's rows only. Writes `tasks.csv` (each task's best values and metric), `best/<task>.yaml`
    (a ready spec per task, on that task's rows) and `summary.json`; each task's own sweep folder is
    `tasks/<task>/`."""
    t0 = time.perf_counter()
    column = spec.tune.group_by
    sweep_dir = train.storage(spec)[1]
    task_dir = Path(sweep_dir) / "tasks"
    # Split before Ray: every task's data, spec and searched keys are checked before any trial runs.
    sources = [("path", data.resolve(spec.data.path, spec.data.format, "data.path"))]
    if spec.data.val_path:
        sources.append(("val_path", data.resolve(spec.data.val_path, spec.data.format, "data.val_path")))
    tables = {}
    for key, src in sources:
        try:
            tables[key] = data.read_table(src, data.needed_columns(spec) + [column])
        except SpecError as e:
            raise SpecError(f"{source}: tune.group_by: {e}") from None
    values = sorted(set(tables["path"].column(column).to_pylist()), key=str)
    if len(values) < 2:
        raise SpecError(f"{source}: tune.group_by: column {column!r} of {spec.data.path} has "
                        f"{len(values)} distinct value(s); per-task search needs at least 2")
    names = {v: re.sub(r"[^A-Za-z0-9_.-]", "_", str(v)) for v in values}
    if len(set(names.values())) < len(values):
        raise SpecError(f"{source}: tune.group_by: values of {column!r} collide as folder names: {values}")
    tasks = []
    for value in values:
        folder = task_dir / names[value]
        folder.mkdir(parents=True, exist_ok=True)
        overrides = [("run.name", names[value]), ("run.storage_path", str(task_dir)),
                     ("tune.group_by", None), ("data.format", "parquet")]
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
        for key, table in tables.items():
            rows = table.filter(pc.equal(table.column(column), value)).drop_columns([column])
            if rows.num_rows == 0:
                raise SpecError(f"{source}: tune.group_by: data.{key} has no rows of task {value!r}")
            pq.write_table(rows, folder / f"{key}.parquet")
            overrides.append((f"data.{key}", str(folder / f"{key}.parquet")))
        task_raw = apply_overrides(raw, overrides)
        task_source = f"{source} (tune.group_by {column} = {value!r})"
        task_spec = validate(task_raw, task_source)
        check_space(task_raw, task_spec, task_source)
        train.prepare(task_spec, address)
        tasks.append((value, task_raw, task_spec, task_source, searcher(task_spec)))

    rows, status = [], 0
    for value, task_raw, task_spec, task_source, search_alg in tasks:
        folder = str(task_dir / names[value])
        status |= fit_sweep(task_raw, task_spec, task_source, address, folder, search_alg, time.perf_counter())
        summary = json.loads(Path(f"{folder}/summary.json").read_text())
        best = summary["best"] or {}
        rows.append({column: value, **best.get("config", {}), spec.tune.metric: best.get("metrics", {}).get(
            spec.tune.metric), "trials": summary["trials"], "sweep": folder})
        if best:
            (Path(sweep_dir) / "best").mkdir(exist_ok=True)
            text = Path(f"{folder}/best.yaml").read_text()
            Path(sweep_dir, "best", f"{names[value]}.yaml").write_text(
                f"# Task {column} = {value!r}: the best of its sweep ({folder}).\n" + text)
    import pandas as pd
    pd.DataFrame(rows).to_csv(f"{sweep_dir}/tasks.csv", index=False)
    Path(f"{sweep_dir}/summary.json").write_text(json.dumps({
        "status": "failed" if status else "succeeded", "group_by": column, "metric": spec.tune.metric,
        "mode": spec.tune.mode, "tasks": rows, "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        "spec": spec.model_dump(mode="json")}, indent=2, default=str))
    return status, sweep_dir


def checkpoint_path(result) -> str | None:
    """A trial's latest checkpoint: Train trials name their Train checkpoint in the metrics, packed
    trials report Tune checkpoints."""
    m = result.metrics or {}
    if m.get("checkpoint_path"):
        return m["checkpoint_path"]
    return result.checkpoint.path if result.checkpoint else None


def ran_its_budget(result, spec: JobSpec) -> bool:
    """A supervised trial trained every epoch of its own `train.epochs` (or stopped on its own
    early-stopping rule); one that did not was stopped by the sweep's scheduler."""
    m = result.metrics or {}
    return m.get("training_iteration", 0) >= int((result.config or {}).get("train.epochs", spec.train.epochs)) \
        or bool(m.get("early_stopped"))


def write_outputs(results, raw: dict, spec: JobSpec, sweep_dir: str, seconds: float,
                  ended_on_its_own: Callable = ran_its_budget, close_trial: Callable | None = None) -> int:
    """Write the sweep folder. `ended_on_its_own(result, spec)` tells a trial the scheduler stopped
    from one that ended by its own rule; `close_trial(result)` writes the summary of a trial that
    did not write one (default: `close_trial_folder`, for supervised trials)."""
    t = spec.tune
    keys = list(t.space)
    rows = []
    for result in results:
        m = result.metrics or {}
        rows.append({**{k: (result.config or {}).get(k) for k in keys},
                     t.metric: m.get(t.metric), "iterations": m.get("training_iteration", 0),
                     "status": "error" if result.error else "done" if ended_on_its_own(result, spec) else "stopped",
                     "trial_id": m.get("trial_id"), "run": str(Path(sweep_dir) / "trials" / str(m.get("trial_id")))})
    for result in results:
        if close_trial:
            close_trial(result)
        else:
            close_trial_folder(result, sweep_dir, spec.train.epochs)
    import pandas as pd
    table = pd.DataFrame(rows)
    table.to_csv(f"{sweep_dir}/trials.csv", index=False)
    ok = [r for r in results if not r.error and r.metrics and r.metrics.get(t.metric) is not None]
    summary = {"status": "succeeded" if ok else "failed", "metric": t.metric, "mode": t.mode,
               "trials": len(rows), "errors": len(results) - len(ok),
               # Trials a scheduler (ASHA, median, HyperBand) ended before their budget, and the
               # iterations (epochs) all trials trained together: what early stopping saved.
               "stopped_early": sum(1 for r in rows if r["status"] == "stopped"),
               "trial_epochs": int(sum(r["iterations"] or 0 for r in rows)),
               "timings": {"total_s": round(seconds, 3)},
               "best": None, "spec": spec.model_dump(mode="json")}
    if ok:
        best = results.get_best_result(metric=t.metric, mode=t.mode, filter_nan_and_inf=True)
        values = {k: best.config[k] for k in keys}
        trial_id = best.metrics["trial_id"]
        best_raw = apply_overrides(raw, list(values.items()) + [("run.name", f"{spec.run.name}_best"),
                                                                 ("tune", None)])
        best_raw.pop("tune", None)
        Path(f"{sweep_dir}/best.yaml").write_text(
            f"# Best trial {trial_id} of sweep {spec.run.name} ({t.metric} = {best.metrics[t.metric]}).\n"
            f"#   ftray run {sweep_dir}/best.yaml\n" + yaml.safe_dump(best_raw, sort_keys=False))
        summary["best"] = {"config": values, "trial_id": trial_id,
                           "metrics": {k: v for k, v in best.metrics.items()
                                       if k.startswith("val_") or k in (t.metric, "eval_return", "env_steps")},
                           "checkpoint": checkpoint_path(best),
                           "run": f"{sweep_dir}/trials/{trial_id}"}
        if t.ensemble:
            summary["ensemble"] = build_ensemble(ok, spec, sweep_dir)
    if t.scheduler.name in ("pbt", "pb2"):
        summary["pbt"] = pbt_log(sweep_dir)
    Path(f"{sweep_dir}/summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, table, keys, t.metric, sweep_dir)
    return 0 if ok else 1


def pbt_log(sweep_dir: str) -> dict:
    """Every exploit step PBT/PB2 took: which trial copied which, the copied trial's values and the
    mutated ones the trial went on with. Tune's log names the copied trial's config (not the
    target's old one), and each trial's iteration as of its last processed result, which can lag
    the exploit's epoch by one: hence these names."""
    path = Path(sweep_dir) / TUNE_DIR / "pbt_global.txt"
    steps = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        target, clone, target_iteration, clone_iteration, copied, new = json.loads(line)
        steps.append({"trial": target, "copied": clone, "trial_iteration": target_iteration,
                      "copied_iteration": clone_iteration, "copied_config": copied, "new_config": new})
    return {"exploits": len(steps), "log": steps}


def close_trial_folder(result, sweep_dir: str, epochs: int) -> None:
    """A Train trial that a scheduler stopped (or that crashed) ended before it could write its
    summary, and a packed trial never writes one: write it from the trial's last checkpoint so
    every trial folder reads the same."""
    m = result.metrics or {}
    folder = Path(sweep_dir) / "trials" / str(m.get("trial_id"))
    if not m.get("trial_id") or (folder / "summary.json").is_file():
        return
    ckpt = checkpoint_path(result)
    try:
        progress = load_progress(Path(ckpt)) if ckpt else {}
    except OSError:  # a crashed trial's checkpoint may not have reached storage
        progress, ckpt = {}, None
    history = progress.get("history", [])
    # Packed trials never write a summary themselves: one that trained every epoch (or stopped on its
    # own early-stopping rule) succeeded.
    finished = progress.get("epoch", 0) >= int((result.config or {}).get("train.epochs", epochs)) or \
        bool(history and history[-1].get("early_stopped"))
    status = "failed" if result.error else "succeeded" if finished else "stopped"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(redact({
        "status": status,
        "error": str(result.error) if result.error else
        None if status == "succeeded" else "stopped early by the sweep's scheduler",
        **train.progress_summary(progress, ckpt), "config": result.config}), indent=2, default=str))


def validation_batch(spec: JobSpec) -> dict:
    """The sweep's validation rows as one batch of tensors (the same rows every trial validated on)."""
    import torch

    from ftray.data import inspect, row_transform, validation_table
    plan = inspect(spec)
    return {k: torch.as_tensor(v) for k, v in row_transform(spec, plan)(validation_table(spec, plan)).items()}


def build_ensemble(finished: list, spec: JobSpec, sweep_dir: str) -> dict:
    """Combine the top-k trials' exported models, evaluate on the validation rows, export it."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from ftray.models import load_exported
    from ftray.models.ensemble import Ensemble, combine
    t, task = spec.tune, spec.data.task
    ranked = sorted(finished, key=lambda r: r.metrics[t.metric], reverse=t.mode == "max")[:t.ensemble.top_k]
    ids = [r.metrics["trial_id"] for r in ranked]
    # A trial that a scheduler stopped early has no final export: its last checkpoint's model is it.
    members = [load_exported(f"{checkpoint_path(r)}/{MODEL_DIR}").eval() for r in ranked]
    batch = validation_batch(spec)
    with torch.no_grad():
        outputs = [m(batch) for m in members]

    def score(out: torch.Tensor) -> float:
        if task == "regression":
            return float(((out - batch["y"]) ** 2).mean())
        return float((out.argmax(-1) == batch["y"]).float().mean())

    how, stacker = t.ensemble.combine, None
    if task == "classification" and how == "stack":
        # Reported score: out-of-fold predictions, so the stacker is never scored on rows it saw.
        feats = torch.stack([o.softmax(-1) for o in outputs], 1).reshape(len(batch["y"]), -1).numpy()
        labels = batch["y"].numpy()
        folds = max(2, min(5, int(min(torch.bincount(batch["y"]).tolist()))))
        oof = cross_val_predict(LogisticRegression(max_iter=1000), feats, labels, cv=folds)
        value = float((oof == labels).mean())
        fit = LogisticRegression(max_iter=1000).fit(feats, labels)
        coef, intercept = fit.coef_, fit.intercept_
        if coef.shape[0] == 1:  # sklearn's binary form: one row for class 1
            coef, intercept = [(-coef[0] / 2).tolist(), (coef[0] / 2).tolist()], [-intercept[0] / 2, intercept[0] / 2]
        stacker = {"coef": coef.tolist() if hasattr(coef, "tolist") else coef,
                   "intercept": intercept.tolist() if hasattr(intercept, "tolist") else intercept}
    else:
        value = score(combine(outputs, how, task))
    name = "val_mse" if task == "regression" else "val_accuracy"
    Ensemble(members, how, members[0].info, stacker).export(Path(sweep_dir) / "ensemble")
    return {"members": ids, "combine": how if task == "classification" else "average",
            "metric": {name: value}, "best_single": {name: score(outputs[0])},
            "member_metrics": [{name: score(o)} for o in outputs],
            "model": f"{sweep_dir}/ensemble"}


def plot(results, table, keys: list[str], metric: str, sweep_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for result in results:
        df = result.metrics_dataframe
        if df is not None and metric in df:
            ax.plot(df["training_iteration"], df[metric], "o-", alpha=0.7)
    ax.set_xlabel("epoch (training iteration)"), ax.set_ylabel(metric), ax.set_title("every trial")
    fig.tight_layout()
    fig.savefig(f"{sweep_dir}/curves.png", dpi=100)
    plt.close(fig)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        x = table[key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
        ax.scatter(x if numeric else x.astype(str), table[metric])
        if numeric and key.endswith("lr"):
            ax.set_xscale("log")
        ax.set_xlabel(key), ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(f"{sweep_dir}/params.png", dpi=100)
    plt.close(fig)

