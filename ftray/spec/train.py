"""`train:`: hyperparameters of the training loop (optimizer, schedule, early stopping)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from ftray.schema import Strict, describe


class OptimizerBase(Strict):
    weight_decay: float = describe(
        "L2 penalty: coupled weight decay (sgd, rmsprop, adam), decoupled for adamw.", 0.0, ge=0.0, lt=1.0)


class SGD(OptimizerBase):
    name: Literal["sgd"] = describe("Stochastic gradient descent, optionally with momentum.", "sgd")
    momentum: float = describe("Momentum factor (0 = plain SGD).", 0.0, ge=0.0, lt=1.0)
    nesterov: bool = describe("Nesterov momentum (needs momentum > 0).", False)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class RMSprop(OptimizerBase):
    name: Literal["rmsprop"] = describe("RMSprop.", "rmsprop")
    alpha: float = describe("Smoothing constant of the squared-gradient average.", 0.99, gt=0.0, lt=1.0)
    eps: float = describe("Term added to the denominator.", 1e-8, gt=0.0)
    momentum: float = describe("Momentum factor.", 0.0, ge=0.0, lt=1.0)
    centered: bool = describe("Normalise by the gradient's estimated variance.", False)


class Adam(OptimizerBase):
    name: Literal["adam"] = describe("Adam.", "adam")
    betas: tuple[float, float] = describe("Decay rates of the first and second moments.", (0.9, 0.999))
    eps: float = describe("Term added to the denominator.", 1e-8, gt=0.0)
    amsgrad: bool = describe("Use the AMSGrad variant.", False)

    @model_validator(mode="after")
    def _betas_in_range(self):
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must lie in [0, 1)")
        return self


class AdamW(Adam):
    name: Literal["adamw"] = describe("AdamW (decoupled weight decay).", "adamw")
    weight_decay: float = describe("Decoupled weight decay.", 0.01, ge=0.0, lt=1.0)


OptimizerSpec = Annotated[Union[SGD, RMSprop, Adam, AdamW], Field(discriminator="name")]


class Schedule(Strict):
    name: Literal["constant", "step", "cosine", "linear", "plateau"] = describe(
        "Learning-rate schedule after warmup: constant, step decay, cosine or linear decay to "
        "`min_lr_ratio`, or reduce-on-plateau of the validation loss.", "constant")
    warmup_steps: int = describe("Optimizer steps of linear warmup from 0 (not with plateau).", 0, ge=0)
    step_epochs: int = describe("`step`: epochs between decays.", 1, ge=1)
    gamma: float = describe("`step`: decay factor.", 0.1, gt=0.0, le=1.0)
    min_lr_ratio: float = describe("`cosine`/`linear`: final rate as a share of `train.lr`.", 0.0,
                                   ge=0.0, le=1.0)
    factor: float = describe("`plateau`: factor applied when the loss stalls.", 0.5, gt=0.0, lt=1.0)
    patience: int = describe("`plateau`: epochs without improvement before a cut.", 2, ge=0)

    @model_validator(mode="after")
    def _plateau_has_no_warmup(self):
        if self.name == "plateau" and self.warmup_steps:
            raise ValueError("warmup_steps is not supported with the plateau schedule")
        return self


class EarlyStopping(Strict):
    patience: int = describe("Epochs without improvement before training stops (0 = never stop).",
                             0, ge=0)
    metric: str = describe("Validation metric to watch.", "val_loss")
    mode: Literal["min", "max"] = describe("Whether smaller or larger `metric` is better.", "min")
    min_delta: float = describe("Smallest change that counts as an improvement.", 0.0, ge=0.0)


class TrainSpec(Strict):
    epochs: int = describe("Passes over the training data.", 3, ge=1, le=100000)
    batch_size: int = describe("Examples per optimizer step, summed over all workers.", 32, ge=1,
                               le=1 << 20)
    lr: float = describe("Peak learning rate.", 1e-3, gt=0.0, le=10.0)
    optimizer: OptimizerSpec = describe("Optimizer and its own parameters.", default_factory=AdamW)
    schedule: Schedule = describe("Learning-rate schedule.", default_factory=Schedule)
    l1: float = describe("L1 penalty on trainable weights (added to the loss).", 0.0, ge=0.0)
    grad_clip: float | None = describe("Clip the global gradient norm to this value (None = off).",
                                       None, gt=0.0)
    grad_accum_steps: int = describe("Micro-batches accumulated into one optimizer step.", 1, ge=1)
    precision: Literal["fp32", "bf16", "fp16"] = describe(
        "Compute precision (bf16/fp16 through autocast; fp16 needs a GPU).", "fp32")
    compile: bool = describe("torch.compile the model: faster GPU steps after a compile warm-up. Each "
                             "epoch's last, incomplete training batch is then left out (its shape would "
                             "compile the model again).", False)
    early_stopping: EarlyStopping = describe("Stop when a validation metric stops improving.",
                                             default_factory=EarlyStopping)
