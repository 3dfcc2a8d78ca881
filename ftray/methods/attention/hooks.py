"""`attention`: only the attention projections (q, k, v, o) of the base model train, directly or
through LoRA restricted to them; the task head (for classifiers) trains too."""

from __future__ import annotations

from ftray.methods.base import Method
from ftray.methods.lora.hooks import Lora, linear_modules


class Attention(Lora):
    def _targets(self):
        return "attention"

    def _adapter_from(self):
        return None  # `attention` has no `adapter_from`: its LoRA always starts fresh

    def build(self, info, checkpoint_dir):
        if self.spec.method.lora:
            return super().build(info, checkpoint_dir)
        return Method.build(self, info, checkpoint_dir)

    def prepare(self, model):
        if self.spec.method.lora:
            return
        model.requires_grad_(False)
        names = {n for n, kind in linear_modules(model.hf, model.blocks()).items() if kind == "attention"}
        for name, module in model.hf.named_modules():
            if name in names:
                module.requires_grad_(True)
        if model.info.task != "causal_lm":
            model.head().requires_grad_(True)


HOOKS = Attention  # what `MethodConfig.hooks` finds beside the config
