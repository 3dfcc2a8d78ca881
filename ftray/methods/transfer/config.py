"""The `method:` section of `transfer` and its rules across the spec."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class TransferMethod(MethodConfig):
    name: Literal["transfer"] = describe(
        "Freeze the backbone and train a head (and optionally the last blocks).", "transfer")
    new_head: bool = describe("Replace the head with a fresh one sized for this data's labels.", True)
    unfreeze_last: int = describe("Backbone blocks, counted from the top, that train too.", 0, ge=0)
    backbone_lr_scale: float = describe(
        "Learning rate of unfrozen backbone blocks as a multiple of `train.lr`.", 1.0, gt=0.0, le=1.0)

    @property
    def replaces_head(self) -> bool:
        return self.new_head

    def check_job(self, spec):
        if spec.model.name == "mlp" and self.unfreeze_last > spec.model.layers:
            raise ValueError(f"method.unfreeze_last: {self.unfreeze_last} blocks asked, the mlp has "
                             f"{spec.model.layers} (model.layers)")
