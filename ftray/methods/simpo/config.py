"""The `method:` section of `simpo`."""

from __future__ import annotations

from typing import Literal

from ftray.methods.dpo.config import PreferenceMethod
from ftray.schema import describe


class SimpoMethod(PreferenceMethod):
    name: Literal["simpo"] = describe(
        "SimPO: reference-free preference optimisation, -log sigmoid(beta * (mean log-prob of chosen - "
        "of rejected) - gamma).", "simpo")
    beta: float = describe("Scale of the length-normalized log-prob reward.", 2.0, gt=0.0, le=100.0)
    gamma: float = describe("Target reward margin between chosen and rejected.", 1.0, ge=0.0, le=100.0)
