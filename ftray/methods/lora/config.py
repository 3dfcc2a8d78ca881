"""The `method:` section of `lora` (and the LoRA parameters `attention` shares)."""

from __future__ import annotations

from typing import Literal, Union

from ftray.methods.config import MethodConfig
from ftray.schema import describe


class LoraParams(MethodConfig):
    r: int = describe("LoRA rank.", 8, ge=1, le=4096)
    alpha: float = describe("LoRA scaling numerator (the update is scaled by alpha / r).", 16.0, gt=0.0)
    dropout: float = describe("Dropout on the LoRA branch.", 0.0, ge=0.0, lt=1.0)
    quantize: Literal["none", "nf4"] = describe(
        "nf4: QLoRA: the frozen base's linear layers inside its blocks are stored in 4-bit NF4 "
        "(torchao) and computed in the training precision (bf16 on a GPU); none: the base as loaded.",
        "none")
    dora: bool = describe("DoRA: adapters learn a magnitude per output and a low-rank direction (peft use_dora).",
                          False)
    rslora: bool = describe("Rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r.",
                            False)
    export: Literal["merged", "adapter"] = describe(
        "merged: the run's model/ holds the merged full model (loads like any other; bf16 for a "
        "quantized base) and model/adapter/ the adapter; adapter: only the adapter (small, for peft).",
        "merged")

    def check_job(self, spec):
        # Adapters (and the attention preset) name a transformer's projection layers.
        if spec.model.name != "hf":
            raise ValueError(f"method.name: {self.name} needs model.name: hf")
        if self.export == "adapter" and spec.tune is not None and spec.tune.ensemble is not None:
            raise ValueError("method.export: adapter leaves no merged model for tune.ensemble to combine")
        if self.quantize != "none" and spec.scaling.strategy == "fsdp":
            # FSDP2 would have to shard and gather NF4 tensors, and checkpoints gather full weights:
            # untested here, so refused rather than half working. One GPU is what QLoRA is for.
            raise ValueError(f"method.quantize: {self.quantize} runs under scaling.strategy: ddp only "
                             "(a replica of the 4-bit base per worker), not fsdp")


class LoraMethod(LoraParams):
    name: Literal["lora"] = describe("Low-rank adapters through peft; the base weights stay frozen.", "lora")
    target_modules: Union[Literal["attention", "mlp", "all-linear"], list[str]] = describe(
        "Modules that get adapters: a preset, or module names (suffixes such as `query`, `q_proj`).",
        "attention")
    adapter_from: str | None = describe(
        "Continue the adapter of an earlier lora run (its run folder) instead of a fresh one.", None)

    path_fields = ("adapter_from",)
