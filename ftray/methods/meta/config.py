"""The `method:` section of `meta` and its rules across the spec."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class MetaMethod(MethodConfig):
    name: Literal["meta"] = describe(
        "Meta-learning over tasks (a task column): `train.batch_size` counts tasks per meta-batch, "
        "`train.lr` is the meta learning rate (outer step of `train.optimizer`).", "meta")
    algorithm: Literal["reptile", "fomaml"] = describe(
        "Reptile (move toward the adapted weights) or first-order MAML (query-loss gradient at them).",
        "reptile")
    task_column: str = describe("Column naming each row's task.", "task")
    shots: int = describe("k: support rows per task for adaptation (fomaml also takes k query rows).",
                          10, ge=1, le=100000)
    inner_steps: int = describe("SGD steps of adaptation to a task's support rows in training.", 5, ge=1, le=1000)
    inner_lr: float = describe("Learning rate of those adaptation steps.", 0.01, gt=0.0, le=10.0)
    eval_steps: int = describe("Adaptation steps on each held-out task's k shots at evaluation.", 10,
                               ge=0, le=10000)

    def check_job(self, spec):
        if spec.model.name != "mlp" or spec.data.task == "causal_lm":
            raise ValueError("method.name: meta needs model.name: mlp and a classification or regression task")
        if spec.train.grad_accum_steps != 1:
            raise ValueError("train.grad_accum_steps: meta takes one step per meta-batch (set 1)")
