"""`ftray sweep`: a Ray Tune hyperparameter sweep over any spec field.

Read top to bottom: check the spec, its data and every searched key before Ray starts; each trial
is a Tune function that applies its sampled values to the spec (through the same validation as
`--set`) and runs it with Ray Train (`ftray.train.run`), whose every epoch reaches Tune through
`TuneReportCallback` so schedulers such as ASHA can stop it early; finally the sweep folder gets
`summary.json`, `trials.csv`, `best.yaml`, `curves.png` and `params.png`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import yaml

from ftray import train
from ftray.checkpoint import MODEL_DIR, load_progress
from ftray.redact import redact
from ftray.spec import JobSpec, SpecError, apply_overrides, validate

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
        return None  # Tune's BasicVariantGenerator
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
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, MedianStoppingRule
    s = spec.tune.scheduler  # metric and mode reach schedulers through TuneConfig
    if s.name == "asha":
        return ASHAScheduler(max_t=spec.train.epochs, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor)
    if s.name == "median":
        return MedianStoppingRule(grace_period=s.grace_period, min_samples_required=2)
    if s.name == "hyperband":
        return HyperBandScheduler(max_t=spec.train.epochs, reduction_factor=s.reduction_factor)
    return FIFOScheduler()


# --------------------------------------------------------------------------------- the sweep
def run_sweep(raw: dict, spec: JobSpec, source: str, address: str | None = None) -> tuple[int, str]:
    """Run the sweep and write its folder. Returns (exit status, sweep folder)."""
    if spec.tune is None:
        raise SpecError(f"{source}: tune: a sweep needs a tune section (space, metric, mode, ...)")
    t0 = time.perf_counter()
    check_space(raw, spec, source)
    train.prepare(spec, address)
    sweep_dir = train.storage(spec)[1]
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    search_alg = searcher(spec)

    from ray import tune
    # Each trial drives its own Train workers: room for all running trials and their workers.
    per_trial = math.ceil(spec.scaling.num_workers * spec.scaling.cpus_per_worker) + 1
    train.start_ray(spec, address, cpus=spec.tune.max_concurrent * per_trial + 1)

    def trial(values: dict) -> None:
        from ray.tune.integration.ray_train import TuneReportCallback
        tspec = trial_spec(raw, values, sweep_dir, tune.get_context().get_trial_id(), source)
        status, run_dir = train.run(tspec, address, callbacks=[TuneReportCallback()])
        if status:
            raise RuntimeError(f"trial failed; see {run_dir}/summary.json")

    t = spec.tune
    run_config = tune.RunConfig(name=TUNE_DIR, storage_path=sweep_dir)
    tune_dir = f"{sweep_dir}/{TUNE_DIR}"
    trainable = tune.with_resources(trial, {"CPU": 1})
    if tune.Tuner.can_restore(tune_dir):  # a re-run resumes: finished trials are not repeated
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space(spec), run_config=run_config,
            tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, num_samples=t.num_samples,
                                        max_concurrent_trials=t.max_concurrent, search_alg=search_alg,
                                        scheduler=scheduler(spec)))
    results = tuner.fit()
    return write_outputs(results, raw, spec, sweep_dir, time.perf_counter() - t0), sweep_dir


def write_outputs(results, raw: dict, spec: JobSpec, sweep_dir: str, seconds: float) -> int:
    t = spec.tune
    keys = list(t.space)
    rows = []
    for result in results:
        m = result.metrics or {}
        rows.append({**{k: (result.config or {}).get(k) for k in keys},
                     t.metric: m.get(t.metric), "iterations": m.get("training_iteration", 0),
                     "status": "error" if result.error else "done",
                     "trial_id": m.get("trial_id"), "run": str(Path(sweep_dir) / "trials" / str(m.get("trial_id")))})
    for result in results:
        close_trial_folder(result, sweep_dir)
    import pandas as pd
    table = pd.DataFrame(rows)
    table.to_csv(f"{sweep_dir}/trials.csv", index=False)
    ok = [r for r in results if not r.error and r.metrics and r.metrics.get(t.metric) is not None]
    summary = {"status": "succeeded" if ok else "failed", "metric": t.metric, "mode": t.mode,
               "trials": len(rows), "errors": len(results) - len(ok), "timings": {"total_s": round(seconds, 3)},
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
                           "metrics": {k: v for k, v in best.metrics.items() if k.startswith("val_")},
                           "checkpoint": best.metrics.get("checkpoint_path"),
                           "run": f"{sweep_dir}/trials/{trial_id}"}
        if t.ensemble:
            summary["ensemble"] = build_ensemble(ok, spec, sweep_dir)
    Path(f"{sweep_dir}/summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, table, keys, t.metric, sweep_dir)
    return 0 if ok else 1


def close_trial_folder(result, sweep_dir: str) -> None:
    """A trial that a scheduler stopped (or that crashed) ended inside Ray Train, before it could
    write its summary: write one from its last checkpoint so every trial folder reads the same."""
    m = result.metrics or {}
    folder = Path(sweep_dir) / "trials" / str(m.get("trial_id"))
    if not m.get("trial_id") or (folder / "summary.json").is_file():
        return
    ckpt = m.get("checkpoint_path")
    progress = load_progress(Path(ckpt)) if ckpt else {}
    (folder / "summary.json").write_text(json.dumps(redact({
        "status": "failed" if result.error else "stopped",
        "error": str(result.error) if result.error else "stopped early by the sweep's scheduler",
        **train.progress_summary(progress, ckpt)}), indent=2))


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
    members = [load_exported(f"{r.metrics['checkpoint_path']}/{MODEL_DIR}").eval() for r in ranked]
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


def cmd_sweep(args) -> int:
    from ftray.spec import load_spec_and_raw
    spec, raw = load_spec_and_raw(args.spec, args.overrides)
    status, folder = run_sweep(raw, spec, args.spec, args.address)
    train.stop_ray()
    if status:
        print("ftray: every trial failed; see trials.csv and the trial folders", file=sys.stderr)
    print(folder, flush=True)
    return status
