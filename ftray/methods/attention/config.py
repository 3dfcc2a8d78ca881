"""The `method:` section of `attention`."""

from __future__ import annotations

from typing import Literal

from ftray.methods.lora.config import LoraParams
from ftray.schema import describe


class AttentionMethod(LoraParams):
    name: Literal["attention"] = describe(
        "Only the attention projections (q, k, v, o) of the base model train (and the task head).",
        "attention")
    lora: bool = describe("Train them through LoRA (r, alpha, dropout) instead of directly.", False)
