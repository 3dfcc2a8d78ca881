"""The `method:` section of `distill` and its rules across the spec."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class DistillMethod(MethodConfig):
    name: Literal["distill"] = describe(
        "Knowledge distillation: alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher/T || student/T).",
        "distill")
    teacher: str = describe("The teacher: an earlier ftray run folder (or its exported model folder).")
    alpha: float = describe("Weight of the hard-label loss.", 0.5, ge=0.0, le=1.0)
    temperature: float = describe("Softmax temperature of both teacher and student.", 2.0, gt=0.0, le=100.0)
    precompute: bool = describe(
        "Compute the teacher's logits once with Ray Data and stream them to the student (classifiers), "
        "instead of running the teacher in every worker.", False)

    path_fields = ("teacher",)

    @property
    def precomputes_teacher(self) -> bool:
        return self.precompute

    def check_job(self, spec):
        if self.precompute and spec.data.task == "causal_lm":
            raise ValueError("method.precompute: token-level logits (vocabulary x sequence per row) are too "
                             "large to store; run the teacher in the workers (precompute: false)")
