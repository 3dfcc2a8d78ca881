"""What a kind of run provides, so that neither the CLI nor the sweep branches on a method's name.

A kind of run is a supervised Ray Train run (`TrainRunner`: every method in `ftray.methods`) or an
RLlib run (`RLRunner`: `method.name: rl`, in `ftray.rl`). A method's config says which
(`supervised`, a class attribute), and `runner_for(spec)` hands out the runner. `ftray run` calls
`check` then `run`; `ftray validate` calls `check`; `ftray sweep` (`ftray.sweep`, the one place
that builds a Tuner) calls `check` once, `run_trial` in every trial, and `ended_on_its_own` and
`summarise_trial` when the trials are done. Both runners are thin: the work stays in `ftray.train`
and `ftray.rl`, whose modules read top to bottom.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from ftray.spec import JobSpec
from ftray.storage_check import check_writable


class Runner(Protocol):
    """One kind of run. `spec` is the spec the runner was made for (a sweep's, with its `tune`
    section, when it runs trials); every method runs before or outside Ray unless it says so."""

    spec: JobSpec

    def check(self, address: str | None = None, devices: bool = True, local_storage: bool = True) -> Any:
        """Everything that can be checked before Ray starts (raises SpecError, exit 2); returns the
        plan `run` takes. `devices=False` leaves out this machine's devices and the cluster's
        storage (a trial, already placed by Tune, checks only its own spec). `local_storage=False`
        leaves out that `run.storage_path` can be written from this machine: `ftray submit` checks
        a job that writes on the cluster, not here."""

    def run(self, plan: Any, address: str | None = None) -> tuple[int, str]:
        """A whole run: start or join Ray, train, write the run folder. (exit status, run folder)."""

    def trial_resources(self) -> tuple[dict, float]:
        """(Tune resources of one trial's own process, CPUs one trial holds on the cluster in all)."""

    def trial_budget(self) -> int:
        """The most results (epochs or iterations) one trial reports: ASHA's and HyperBand's max_t."""

    def run_trial(self, trial_spec: JobSpec, address: str | None = None) -> None:
        """The body of one Tune trial (runs inside Tune): train `trial_spec`, reporting every epoch
        or iteration to Tune. Raises if the trial failed."""

    def ended_on_its_own(self, result, trial_spec: JobSpec) -> bool:
        """Whether a finished trial (a Tune `Result`) met its own stop rule (budget, early
        stopping, target); one that did not was stopped by the sweep's scheduler."""

    def summarise_trial(self, result, trial_spec: JobSpec) -> None:
        """Write the `summary.json` of a trial folder that has none (a trial the scheduler stopped,
        one that crashed, a packed trial), from the trial's last checkpoint."""


def runner_for(spec: JobSpec) -> Runner:
    """The runner of `spec`'s kind of run: its method config says whether it is supervised (Ray
    Train) or learns from an environment (RLlib)."""
    return TrainRunner(spec) if spec.method.supervised else RLRunner(spec)


def trial_checkpoint(result) -> str | None:
    """A finished trial's (a Tune `Result`'s) latest checkpoint: Train and rl trials name their own
    checkpoint in their metrics, packed trials report Tune checkpoints."""
    m = result.metrics or {}
    if m.get("checkpoint_path"):
        return m["checkpoint_path"]
    return result.checkpoint.path if result.checkpoint else None


def _population_based(spec: JobSpec) -> bool:
    return bool(spec.tune) and spec.tune.scheduler.name in ("pbt", "pb2")


# ======================================================================== supervised Ray Train runs
class TrainRunner:
    """Supervised fine-tuning with Ray Train (`ftray.train`); in a sweep, trials of either shape
    (`tune.trial`): `train`, a Ray Train run per trial, or `packed`, the training loop in the
    trial's own process."""

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def check(self, address: str | None = None, devices: bool = True, local_storage: bool = True):
        from ftray import train, tracking
        if local_storage:  # the machine that runs it writes the folder and reaches the tracking server
            check_writable(self.spec)
            tracking.check(self.spec)
        return train.prepare(self.spec, address)

    def run(self, plan, address: str | None = None) -> tuple[int, str]:
        from ftray import train
        return train.run(self.spec, address, plan)

    def trial_resources(self) -> tuple[dict, float]:
        s, t = self.spec.scaling, self.spec.tune
        if t.trial == "packed":  # trains in place, on a share of a GPU
            return {"CPU": s.cpus_per_worker, "GPU": t.gpu_fraction if s.use_gpu else 0}, s.cpus_per_worker
        # A Train trial drives its own workers (1 CPU for the driver, plus theirs). One more CPU
        # leaves Ray Data's tasks room to run beside every trial.
        return {"CPU": 1}, math.ceil(s.num_workers * s.cpus_per_worker) + 1

    def trial_budget(self) -> int:
        return self.spec.train.epochs

    def run_trial(self, trial_spec: JobSpec, address: str | None = None) -> None:
        if self.spec.tune.trial == "packed":
            packed_trial(trial_spec, adopt_hyperparameters=_population_based(self.spec))
            return
        from ray.tune.integration.ray_train import TuneReportCallback

        from ftray import train
        # Every epoch's report reaches Tune, so that schedulers such as ASHA can stop it early.
        status, run_dir = train.run(trial_spec, address, callbacks=[TuneReportCallback()])
        if status:
            raise RuntimeError(f"trial failed; see {run_dir}/summary.json")

    def ended_on_its_own(self, result, trial_spec: JobSpec) -> bool:
        m = result.metrics or {}
        return m.get("training_iteration", 0) >= trial_spec.train.epochs or bool(m.get("early_stopped"))

    def summarise_trial(self, result, trial_spec: JobSpec) -> None:
        import json

        from ftray import train
        from ftray.checkpoint import load_progress
        from ftray.redact import redact
        folder = Path(trial_spec.run.storage_path) / trial_spec.run.name
        if (folder / "summary.json").is_file():
            return
        ckpt = trial_checkpoint(result)
        try:
            progress = load_progress(Path(ckpt)) if ckpt else {}
        except OSError:  # a crashed trial's checkpoint may not have reached storage
            progress, ckpt = {}, None
        history = progress.get("history", [])
        # One that trained every epoch (or stopped on its own early-stopping rule) succeeded.
        finished = progress.get("epoch", 0) >= trial_spec.train.epochs or \
            bool(history and history[-1].get("early_stopped"))
        status = "failed" if result.error else "succeeded" if finished else "stopped"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(redact({
            "status": status,
            "error": str(result.error) if result.error else
            None if status == "succeeded" else "stopped early by the sweep's scheduler",
            **train.progress_summary(progress, ckpt), "config": result.config}), indent=2, default=str))


def packed_trial(spec: JobSpec, adopt_hyperparameters: bool = False) -> None:
    """A packed Tune trial: the one training loop (`train.fit`) in this process, on the inputs
    `ftray run` builds (`Method.inputs`), reporting a Tune checkpoint each epoch, so that PBT/PB2
    can restart it from a better trial's checkpoint with mutated hyperparameters."""
    import ray.data
    import torch
    from ray import tune

    from ftray import data, train
    from ftray.methods import get_method
    plan = data.inspect(spec)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Small data comes back materialized (see `data.ray_datasets`): the trial's epochs do not
    # re-run Ray Data. A PBT exploit restarts the trial function, and with it this read.
    datasets, rows = get_method(spec).inputs(plan)

    def report(metrics: dict, folder: str | None) -> None:
        # `done` on the trial's last epoch makes Tune end the trial before its scheduler sees the
        # result. Without it, synchronous PBT could pause a trial on its final report (waiting for
        # the population) and restore it from that checkpoint, where it reports the same last
        # epoch again, is paused again, and so on: `jobs/pbt.yaml` never ended.
        done = metrics["epoch"] >= spec.train.epochs or metrics["early_stopped"]
        tune.report({**metrics, "done": done},
                    checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    # Tune sets CUDA_VISIBLE_DEVICES to the trial's (possibly shared) GPU.
    device = torch.device("cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu")
    train.fit(train.LoopConfig(spec, plan.info, rows["train"]),
              train.Worker(rank=0, world=1, device=device, train_data=datasets["train"], val_data=datasets["val"],
                           resume=tune.get_checkpoint(), report=report, shard=datasets.__getitem__,
                           adopt_hyperparameters=adopt_hyperparameters))


# ================================================================================== RLlib runs
class RLRunner:
    """Policy fine-tuning with RLlib's PPO (`ftray.rl`); in a sweep, one RLlib algorithm per trial,
    reporting every PPO iteration."""

    def __init__(self, spec: JobSpec):
        self.spec = spec

    def check(self, address: str | None = None, devices: bool = True, local_storage: bool = True):
        from ftray import rl, tracking
        if local_storage:  # the machine that runs it writes the folder and reaches the tracking server
            check_writable(self.spec)
            tracking.check(self.spec)
        return rl.prepare(self.spec, address, devices=devices)

    def run(self, plan, address: str | None = None) -> tuple[int, str]:
        from ftray import rl
        return rl.run(self.spec, address, plan)

    def trial_resources(self) -> tuple[dict, float]:
        from ftray import rl
        # The trial process is the driver (with its in-process learner); env runners are actors.
        return {"CPU": 1}, 1 + self.spec.method.env_runners + rl.learners(self.spec)

    def trial_budget(self) -> int:
        return self.spec.method.stop.iterations or 10 ** 6

    def run_trial(self, trial_spec: JobSpec, address: str | None = None) -> None:
        from ftray import rl
        rl.run_trial(trial_spec, address)

    def ended_on_its_own(self, result, trial_spec: JobSpec) -> bool:
        from ftray import rl
        return rl.met_its_stop(result.metrics or {}, trial_spec)

    def summarise_trial(self, result, trial_spec: JobSpec) -> None:
        from ftray import rl
        rl.summarise_trial(trial_spec, str(result.error) if result.error else None,
                           stopped=not result.error and not self.ended_on_its_own(result, trial_spec))
