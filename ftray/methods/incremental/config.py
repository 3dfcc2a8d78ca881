"""The `method:` section of `incremental` and its rules across the spec."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class IncrementalMethod(MethodConfig):
    name: Literal["incremental"] = describe(
        "Continual learning: continue `model.init_from` on new data with replay of old data and an EWC "
        "penalty; reports forgetting on the old task.", "incremental")
    replay_path: str = describe("Old training data (same columns) to replay from: a file or folder, path or URI.")
    replay_ratio: float = describe(
        "Old rows mixed into training per new training row (0 = no replay).", 0.5, ge=0.0, le=10.0)
    old_val_path: str = describe("Old task's validation data (same columns): forgetting is measured on it.")
    ewc_lambda: float = describe(
        "Weight of the EWC penalty lambda/2 * sum F * (theta - theta_old)^2 (0 = off).", 100.0, ge=0.0)
    fisher_rows: int = describe("Rows of the replay data the diagonal Fisher information is estimated on.",
                                512, ge=1, le=1 << 20)

    path_fields = ("replay_path", "old_val_path")

    def check_job(self, spec):
        if not spec.model.init_from:
            raise ValueError("method.name: incremental continues an earlier run: set model.init_from")
