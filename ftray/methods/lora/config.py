"""The `method:` section of `lora` (and the LoRA parameters `attention` shares)."""

from __future__ import annotations

from typing import Literal, Union

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class LoraParams(MethodConfig):
    r: int = describe("LoRA rank.", 8, ge=1, le=4096)
    alpha: float = describe("LoRA scaling numerator (the update is scaled by alpha / r).", 16.0, gt=0.0)
    dropout: float = describe("Dropout on the LoRA branch.", 0.0, ge=0.0, lt=1.0)

    def check_job(self, spec):
        # Adapters (and the attention preset) name a transformer's projection layers.
        if spec.model.name != "hf":
            raise ValueError(f"method.name: {self.name} needs model.name: hf")


class LoraMethod(LoraParams):
    name: Literal["lora"] = describe("Low-rank adapters through peft; the base weights stay frozen.", "lora")
    target_modules: Union[Literal["attention", "mlp", "all-linear"], list[str]] = describe(
        "Modules that get adapters: a preset, or module names (suffixes such as `query`, `q_proj`).",
        "attention")
    adapter_from: str | None = describe(
        "Continue the adapter of an earlier lora run (its run folder) instead of a fresh one.", None)

    path_fields = ("adapter_from",)
