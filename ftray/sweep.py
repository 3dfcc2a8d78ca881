"""`ftray sweep`: a Ray Tune hyperparameter sweep over any spec field, for every kind of run.

Read top to bottom: check the spec, its data and every searched key before Ray starts; each trial
is a Tune function that applies its sampled values to the spec (through the same validation as
`--set`) and hands it to the spec's runner (`ftray.runner`). A supervised trial trains in one of
two shapes (`tune.trial`):
- `train`: a Ray Train run (`ftray.train.run`), whose every epoch reaches Tune through
  `TuneReportCallback` so schedulers such as ASHA can stop it early;
- `packed`: the trial process itself runs the same training loop (`ftray.train.fit`) and reports a
  Tune checkpoint each epoch, so that PBT/PB2 can restart a trial from a better one's checkpoint
  with mutated hyperparameters; trials take a fraction of a GPU and pack several per device.
An rl trial runs one RLlib algorithm and reports every PPO iteration. This module is the one place
that builds a Tuner. Finally the sweep folder gets `summary.json`, `trials.csv`, `best.yaml`,
`curves.png` and `params.png`. With `tune.group_by`, the whole sweep runs once per value of a data
column (per-task search) and the folder gets `tasks.csv` and one ready spec per task under `best/`.
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import yaml

from ftray import data, ray_context, tracking, tracking_wandb, train
from ftray.checkpoint import MODEL_DIR
from ftray.runner import Runner, runner_for, trial_checkpoint
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


def check(raw: dict, spec: JobSpec, source: str, address: str | None = None, local_storage: bool = True):
    """Everything a sweep checks before Ray starts: a tune section, every searched key and value,
    the run's own checks (`Runner.check`), and that the searcher and scheduler can be built (their
    packages are installed). Returns the runner's plan. `ftray validate` and `ftray submit --sweep`
    run this too."""
    if spec.tune is None:
        raise SpecError(f"{source}: tune: a sweep needs a tune section (space, metric, mode, ...)")
    check_space(raw, spec, source)
    runner = runner_for(spec)
    plan = runner.check(address, local_storage=local_storage)
    searcher(spec)
    scheduler(spec, runner.trial_budget())  # PB2 refuses to build without scikit-learn
    return plan


def trial_spec(raw: dict, values: dict, sweep_dir: str, trial_id: str, source: str) -> JobSpec:
    """The spec of one trial: sampled values applied, stored under the sweep folder by trial id."""
    trial_raw = apply_overrides(raw, list(values.items()) + [
        ("run.name", trial_id), ("run.storage_path", f"{sweep_dir}/trials"), ("tune", None),
        ("run.tracking", None)])  # the sweep tracks its trials (`tracking.sweep_callbacks`)
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


def scheduler(spec: JobSpec, max_t: int):
    """The trial scheduler; `max_t` is the most results a trial reports (`Runner.trial_budget`)."""
    from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule,
                                     PopulationBasedTraining)
    from ray.tune.schedulers.pb2 import PB2
    s = spec.tune.scheduler  # metric and mode reach schedulers through TuneConfig
    if s.name == "asha":
        return ASHAScheduler(max_t=max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "median":
        # Its default clock is seconds (`time_total_s`); the spec's grace period is in epochs.
        return MedianStoppingRule(time_attr="training_iteration", grace_period=s.grace_period,
                                  min_samples_required=2)
    if s.name == "hyperband":
        return HyperBandScheduler(max_t=max_t, reduction_factor=s.reduction_factor)
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


# --------------------------------------------------------------------------------- the sweep
def run_sweep(raw: dict, spec: JobSpec, source: str, address: str | None = None) -> tuple[int, str]:
    """Run the sweep (or, with `tune.group_by`, one per task) and write its folder.
    Returns (exit status, sweep folder)."""
    if spec.tune is None:
        raise SpecError(f"{source}: tune: a sweep needs a tune section (space, metric, mode, ...)")
    if spec.tune.group_by:
        return run_grouped(raw, spec, source, address)
    t0 = time.perf_counter()
    check(raw, spec, source, address)
    sweep_dir = train.storage(spec)[1]
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    return fit_sweep(raw, spec, source, address, sweep_dir, searcher(spec), t0), sweep_dir


def trial_function(runner: Runner, raw: dict, sweep_dir: str, source: str, address: str | None):
    """The Tune function of every trial: its spec (sampled values applied), run by the runner."""
    def trial(values: dict) -> None:
        from ray import tune
        runner.run_trial(trial_spec(raw, values, sweep_dir, tune.get_context().get_trial_id(), source), address)
    return trial


def tuner(trainable, spec: JobSpec, sweep_dir: str, search_alg, trial_scheduler, callbacks: list = ()):
    """The sweep's Tuner: restored from the sweep folder when an earlier run of it left one (a
    re-run resumes: finished trials are not repeated), else a new one."""
    from ray import tune
    t = spec.tune
    tune_dir = f"{sweep_dir}/{TUNE_DIR}"
    if tune.Tuner.can_restore(tune_dir):
        return tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    # PBT/PB2 restore a trial from another trial's checkpoint some time after it was reported; a
    # limit on kept checkpoints can delete it first (seen: "holds no exported ftray model"). Keep all.
    keep = None if t.scheduler.name in ("pbt", "pb2") else spec.run.keep_checkpoints
    return tune.Tuner(
        trainable, param_space=param_space(spec),
        run_config=tune.RunConfig(name=TUNE_DIR, storage_path=sweep_dir, callbacks=list(callbacks),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                    max_concurrent_trials=t.max_concurrent, search_alg=search_alg,
                                    scheduler=trial_scheduler))


def fit_sweep(raw: dict, spec: JobSpec, source: str, address: str | None, sweep_dir: str, search_alg,
              t0: float) -> int:
    """Start (or restore) the Tuner of a checked sweep, fit it and write the sweep folder."""
    from ray import tune
    runner = runner_for(spec)
    resources, _ = runner.trial_resources()
    trial_scheduler = scheduler(spec, runner.trial_budget())  # before Ray: PB2 needs scikit-learn
    trainable = tune.with_resources(trial_function(runner, raw, sweep_dir, source, address), resources)
    parent = tracking.start_sweep(spec, Path(sweep_dir))
    with ray_context.use_ray(spec, address, cpus=ray_cpus(spec)):
        results = tuner(trainable, spec, sweep_dir, search_alg, trial_scheduler,
                        tracking.sweep_callbacks(spec, parent)
                        + tracking_wandb.sweep_callbacks(spec, Path(sweep_dir))).fit()
        status = write_outputs(results, raw, spec, sweep_dir, time.perf_counter() - t0, source)
    tracking.finish_sweep(spec, parent, Path(sweep_dir), status == 0)
    return status


def ray_cpus(spec: JobSpec) -> int:
    """Logical CPUs of a private Ray for the sweep: its concurrent trials, and one more."""
    return math.ceil(spec.tune.max_concurrent * runner_for(spec).trial_resources()[1]) + 1


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
        check(task_raw, task_spec, task_source, address)
        tasks.append((value, task_raw, task_spec, task_source, searcher(task_spec)))

    rows, status = [], 0
    with ray_context.use_ray(spec, address, cpus=max(ray_cpus(t[2]) for t in tasks)):  # one Ray for every task
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


def write_outputs(results, raw: dict, spec: JobSpec, sweep_dir: str, seconds: float, source: str) -> int:
    """Write the sweep folder; every trial folder gets a summary (the runner's `summarise_trial`
    for a trial that did not write one)."""
    t = spec.tune
    runner = runner_for(spec)
    keys = list(t.space)
    rows = []
    for result in results:
        m = result.metrics or {}
        trial_id = m.get("trial_id")
        # The trial's own spec tells the trial's own budget (a searched `train.epochs`, say).
        tspec = trial_spec(raw, result.config or {}, sweep_dir, str(trial_id), source) if trial_id else None
        ended = "error" if result.error else "done" if tspec and runner.ended_on_its_own(result, tspec) else "stopped"
        rows.append({**{k: (result.config or {}).get(k) for k in keys},
                     t.metric: m.get(t.metric), "iterations": m.get("training_iteration", 0),
                     "status": ended, "trial_id": trial_id, "run": str(Path(sweep_dir) / "trials" / str(trial_id))})
        if tspec:
            runner.summarise_trial(result, tspec)
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
        best = ranked(ok, spec)[0]
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
                           "checkpoint": trial_checkpoint(best),
                           "run": f"{sweep_dir}/trials/{trial_id}"}
        if t.ensemble:
            summary["ensemble"] = build_ensemble(ok, spec, sweep_dir)
    if t.scheduler.name in ("pbt", "pb2"):
        summary["pbt"] = pbt_log(sweep_dir)
    Path(f"{sweep_dir}/summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, table, keys, t.metric, sweep_dir)
    return 0 if ok else 1


def ranked(finished: list, spec: JobSpec) -> list:
    """Finished trials, best first by `tune.metric` (NaN and infinities last), ties by trial id: a
    restored sweep names the same best trial (Tune's own pick follows the order of its results,
    which a restore changes)."""
    t = spec.tune
    sign = -1.0 if t.mode == "max" else 1.0

    def key(result):
        value = result.metrics[t.metric]
        return (not math.isfinite(value), sign * value if math.isfinite(value) else 0.0, result.metrics["trial_id"])
    return sorted(finished, key=key)


def pbt_log(sweep_dir: str) -> dict:
    """Every exploit step PBT/PB2 took: which trial copied which, the copied trial's values and the
    mutated ones the trial went on with. Tune's log names the copied trial's config (not the
    target's old one), and each trial's iteration as of its last processed result, which can lag
    the exploit's epoch by one: hence these names."""
    path = Path(sweep_dir) / TUNE_DIR / "pbt_global.txt"
    ids = trial_ids(Path(sweep_dir) / TUNE_DIR)
    steps = []
    for line in (path.read_text().splitlines() if path.is_file() else []):
        target, clone, target_iteration, clone_iteration, copied, new = json.loads(line)
        steps.append({"trial": target, "copied": clone, "trial_id": ids.get(target.split("_")[0]),
                      "copied_id": ids.get(clone.split("_")[0]), "trial_iteration": target_iteration,
                      "copied_iteration": clone_iteration, "copied_config": copied, "new_config": new})
    return {"exploits": len(steps), "log": steps}


def trial_ids(tune_dir: Path) -> dict[str, str]:
    """{trial index: trial id} from Tune's trial folders (`trial_<id>_<index>_<values>_<time>`): PBT's
    log names trials by their tag (`<index>_<values>`), the trial folders under `trials/` by id."""
    ids = {}
    for folder in tune_dir.glob("trial_*"):
        m = re.match(r"trial_(\w+?_(\d+))_(\d+)_", folder.name)
        if m and int(m.group(2)) == int(m.group(3)):
            ids[m.group(3)] = m.group(1)
    return ids


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
    top = ranked(finished, spec)[:t.ensemble.top_k]
    ids = [r.metrics["trial_id"] for r in top]
    # A trial that a scheduler stopped early has no final export: its last checkpoint's model is it.
    members = [load_exported(f"{trial_checkpoint(r)}/{MODEL_DIR}").eval() for r in top]
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
    """`curves.png` (every trial's metric per training iteration) and `params.png` (the metric
    against each searched value)."""
    from ftray.plots import Panel, curves_png
    curves = [(df["training_iteration"], df[metric], None) for df in (r.metrics_dataframe for r in results)
              if df is not None and metric in df]
    Path(f"{sweep_dir}/curves.png").write_bytes(curves_png([Panel("epoch (training iteration)", metric, curves,
                                                                  title="every trial")]))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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

