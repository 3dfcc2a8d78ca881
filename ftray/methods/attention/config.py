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

    def check_job(self, spec):
        super().check_job(spec)
        # The LoRA options only mean something with adapters; without them the projections
        # themselves train, and a trained weight cannot stay quantized.
        if not self.lora:
            for key in ("quantize", "dora", "rslora", "export"):
                if getattr(self, key) != type(self).model_fields[key].default:
                    raise ValueError(f"method.{key}: needs method.lora: true (without adapters the "
                                     "attention projections themselves train)")
