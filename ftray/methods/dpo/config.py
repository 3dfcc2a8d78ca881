"""The `method:` sections of the preference methods: `dpo`, and what `simpo` shares with it."""

from __future__ import annotations

from typing import Literal

from ftray.methods.config import MethodConfig
from ftray.methods.lora.config import LoraMethod
from ftray.schema import describe

# Every preference method's validation metrics, the first one shown on the console.
PREFERENCE_METRICS = ("val_preference_accuracy", "val_logprob_preference", "val_reward_margin",
                      "val_chosen_logp", "val_rejected_logp")


class PreferenceMethod(MethodConfig):
    """What the preference methods share: pair rows, their metrics, optional LoRA adapters."""
    pairs = True
    metrics = PREFERENCE_METRICS

    lora: LoraMethod | None = describe(
        "Train LoRA adapters (this section as `method: {name: lora}` takes it) instead of every weight; "
        "the reference is then the base with its adapters switched off (no second copy).", None)

    def check_job(self, spec):
        if spec.model.name != "hf":
            raise ValueError(f"method.name: {self.name} needs model.name: hf")
        if self.lora is not None:
            if self.lora.adapter_from:
                raise ValueError("method.lora.adapter_from: the reference is the base without adapters; "
                                 "start from a merged model instead (model.init_from)")
            self.lora.check_job(spec)


class DpoMethod(PreferenceMethod):
    name: Literal["dpo"] = describe(
        "Direct preference optimisation: raise the policy's log-prob ratio to a frozen reference (the "
        "starting model) on `data.chosen` over `data.rejected`.", "dpo")
    beta: float = describe("Strength of the pull towards the reference (the implicit reward's scale).",
                           0.1, gt=0.0, le=100.0)
    loss: Literal["sigmoid", "ipo"] = describe(
        "sigmoid: -log sigmoid(beta * margin) (the DPO paper); ipo: (margin - 1 / (2 beta))^2 (IPO), "
        "margin being the log-ratio difference of chosen and rejected (summed over the answer's tokens).",
        "sigmoid")
    label_smoothing: float = describe(
        "sigmoid: the assumed share of pairs whose preference is flipped (conservative DPO; 0: none).",
        0.0, ge=0.0, lt=0.5)
    reference: Literal["precompute", "live"] = describe(
        "precompute: the reference's log-probs computed once with Ray Data actors before training and "
        "streamed as columns; live: the reference runs in every worker at every step.", "precompute")

    def check_job(self, spec):
        super().check_job(spec)
        if self.loss == "ipo" and self.label_smoothing:
            raise ValueError("method.label_smoothing: label smoothing is for loss: sigmoid")
