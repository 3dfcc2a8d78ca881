"""`tune:`: a hyperparameter sweep (search space, searcher, trial schedulers, ensembles)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ftray.schema import Strict, describe

Distribution = Literal["choice", "grid", "uniform", "loguniform", "randint", "quniform"]


class FifoScheduler(Strict):
    name: Literal["fifo"] = describe("Run every trial to the end.", "fifo")


class AshaScheduler(Strict):
    name: Literal["asha"] = describe("Asynchronous successive halving: stop the worse trials at each rung.", "asha")
    grace_period: int = describe("Epochs every trial runs before it can be stopped.", 1, ge=1)
    reduction_factor: float = describe("Keep 1/reduction_factor of the trials at each rung.", 3.0, gt=1.0)


class MedianScheduler(Strict):
    name: Literal["median"] = describe("Stop a trial whose best result is below the median of the others'.",
                                       "median")
    grace_period: int = describe("Epochs every trial runs before it can be stopped.", 1, ge=1)


class HyperbandScheduler(Strict):
    name: Literal["hyperband"] = describe("HyperBand: successive halving over several brackets.", "hyperband")
    reduction_factor: float = describe("Keep 1/reduction_factor of the trials at each rung.", 3.0, gt=1.0)


# What PBT/PB2 may change in a running trial: values the training loop reads from the spec at every
# step (optimizer hyperparameters, penalties, and the method's own loss and sampling weights: grpo's
# rollout temperature and KL weight, dpo's and simpo's beta, distill's temperature). Structure
# (layers, units, dropout) is baked into the checkpointed model, and grpo's group size shapes every
# batch's advantages, so such keys are only sampled at the start and copied along with a checkpoint.
PBT_MUTABLE = ("train.lr", "train.l1", "train.grad_clip", "train.optimizer.weight_decay",
               "train.optimizer.momentum", "method.temperature", "method.kl_coef", "method.beta")


class _Population(Strict):
    """What PBT and PB2 share: when and from whom a trial copies a better trial's checkpoint."""
    perturbation_interval: int = describe("Epochs between exploit/explore steps.", 1, ge=1)
    quantile_fraction: float = describe("Share of trials that copy (bottom) and are copied (top).", 0.25,
                                        gt=0.0, le=0.5)
    synch: bool = describe("Wait for every trial at each perturbation point (exploits even when trials run "
                           "one after another on a small machine).", False)


class PBTScheduler(_Population):
    name: Literal["pbt"] = describe(
        "Population Based Training: every `perturbation_interval` epochs the worse trials continue from "
        "a better trial's checkpoint with mutated hyperparameters (needs `tune.trial: packed`).", "pbt")
    resample_probability: float = describe(
        "Chance that a mutated value is drawn afresh from `space` instead of scaled by 0.8 or 1.2.", 0.25,
        ge=0.0, le=1.0)


class PB2Scheduler(_Population):
    name: Literal["pb2"] = describe(
        "PB2: PBT whose new hyperparameters come from a Gaussian-process bandit over the `space` bounds "
        "(uniform/loguniform dimensions; needs `tune.trial: packed`).", "pb2")


SchedulerSpec = Annotated[Union[FifoScheduler, AshaScheduler, MedianScheduler, HyperbandScheduler,
                                PBTScheduler, PB2Scheduler], Field(discriminator="name")]


class EnsembleSpec(Strict):
    top_k: int = describe("Members: the k best trials.", 3, ge=2, le=100)
    combine: Literal["vote", "average", "stack"] = describe(
        "Majority vote, mean of class probabilities, or a logistic regression on the members' "
        "probabilities fit on the validation data (regression: always the mean).", "average")


class TuneSpec(Strict):
    space: dict[str, dict[Distribution, list]] = describe(
        "Dotted spec keys mapped to one distribution each, e.g. `train.lr: {loguniform: [1e-4, 1e-1]}`.")
    metric: str = describe("Trial metric to optimise (a validation metric of the task).", "val_loss")
    mode: Literal["min", "max"] = describe("Whether smaller or larger `metric` is better.", "min")
    num_samples: int = describe("Trials to sample (with grid search: repeats of the whole grid).", 4,
                                ge=1, le=100000)
    max_concurrent: int = describe("Trials running at the same time.", 2, ge=1, le=1024)
    searcher: Literal["random", "grid", "optuna", "hyperopt"] = describe(
        "How trials are chosen: random sampling, the grid, or Ray Tune's Optuna / HyperOpt integration.",
        "random")
    scheduler: SchedulerSpec = describe("Early stopping of trials, or PBT/PB2.", default_factory=FifoScheduler)
    trial: Literal["train", "packed"] = describe(
        "Trial shape: a Ray Train run per trial (`scaling` applies), or `packed`: one process per trial "
        "training in place, reporting a Tune checkpoint each epoch (what PBT/PB2 need), with "
        "`gpu_fraction` of a GPU when `scaling.use_gpu`.", "train")
    gpu_fraction: float = describe("Packed trials with `scaling.use_gpu`: share of one GPU per trial.", 1.0,
                                   gt=0.0, le=1.0)
    group_by: str | None = describe(
        "A data column: run the sweep once per value of it (per-task search) and write the best spec "
        "per value.", None)
    ensemble: EnsembleSpec | None = describe("Combine the top trials into one exported model.", None)

    @model_validator(mode="after")
    def _space_is_well_formed(self):
        for key, dist in self.space.items():
            if len(dist) != 1:
                raise ValueError(f"space.{key}: give exactly one distribution, got {sorted(dist)}")
            (kind, args), = dist.items()
            if kind in ("choice", "grid"):
                if not args:
                    raise ValueError(f"space.{key}.{kind}: needs at least one value")
            elif kind == "quniform":
                if len(args) != 3 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
                    raise ValueError(f"space.{key}.quniform: needs [low, high, step] numbers with low < high")
            elif len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] >= args[1]:
                raise ValueError(f"space.{key}.{kind}: needs [low, high] numbers with low < high")
            elif kind == "loguniform" and args[0] <= 0:
                raise ValueError(f"space.{key}.loguniform: bounds must be positive")
            if self.searcher == "grid" and kind not in ("grid", "choice"):
                raise ValueError(f"space.{key}: the grid searcher takes only grid/choice dimensions")
        if not self.space:
            raise ValueError("space: name at least one spec key to search")
        return self

    def check_population_based(self) -> None:
        """PBT/PB2 need packed trials, their own sampling, a population and a key they may mutate."""
        s = self.scheduler
        if s.name not in ("pbt", "pb2"):
            return
        if self.trial != "packed":
            raise ValueError(f"tune.scheduler.name: {s.name} exploits trial checkpoints, which only packed "
                             f"trials report; set tune.trial: packed")
        if self.searcher != "random":
            raise ValueError(f"tune.searcher: {s.name} picks new values itself; use searcher: random")
        if self.num_samples < 2:
            raise ValueError(f"tune.num_samples: {s.name} needs a population of at least 2 trials")
        mutable = [k for k in self.space if k in PBT_MUTABLE]
        if not mutable:
            raise ValueError(f"tune.space: {s.name} needs at least one key it can change during training: "
                             f"{', '.join(PBT_MUTABLE)}")
        for key in mutable if s.name == "pb2" else ():
            (kind, _), = self.space[key].items()
            if kind not in ("uniform", "loguniform"):
                raise ValueError(f"tune.space.{key}: pb2 searches continuous bounds; give uniform or "
                                 f"loguniform, not {kind}")
