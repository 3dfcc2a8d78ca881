"""`lora`: low-rank adapters through peft on the modules a preset or a name list picks; the base
weights stay frozen, in 4-bit NF4 under `method.quantize: nf4` (QLoRA, `ftray.models.quantize`),
with DoRA or rank-stabilised scaling on request. Exports the adapter alone (`model/adapter/`) beside
the merged model (or, with `method.export: adapter`, the adapter only)."""

from __future__ import annotations

import functools
from pathlib import Path

from torch import nn

from ftray.checkpoint import MODEL_DIR
from ftray.methods.base import Method
from ftray.models import build_model
from ftray.models.hf import ADAPTER_DIR
from ftray.models.quantize import check_quantizable, check_torchao, keep_out_of_ddp, quantize_blocks
from ftray.schema import SpecError


def linear_modules(model: nn.Module, blocks: list[nn.Module]) -> dict[str, str]:
    """Qualified names of the linear layers inside the backbone blocks -> `attention` or `mlp`."""
    from transformers.pytorch_utils import Conv1D  # GPT-2 style linear layers
    inside = {id(m) for b in blocks for m in b.modules()}
    out = {}
    for name, module in model.named_modules():
        if id(module) in inside and isinstance(module, (nn.Linear, Conv1D)):
            out[name] = "attention" if any(p in ("attn", "attention", "self_attn") or "attention" in p
                                           for p in name.split(".")) else "mlp"
    return out


def target_modules(model, blocks, targets) -> list[str] | str:
    """Resolve a preset or user names to the module names peft should adapt (SpecError if none)."""
    if targets == "all-linear":
        return "all-linear"
    found = linear_modules(model, blocks)
    if isinstance(targets, str):
        names = sorted(n for n, kind in found.items() if kind == targets)
        if not names:
            raise SpecError(f"method.target_modules: preset {targets!r} matches no linear layer of this model")
        return names
    for t in targets:
        if not any(n == t or n.endswith("." + t) for n, _ in model.named_modules()):
            sample = sorted({n.split(".")[-1] for n in found})[:12]
            raise SpecError(f"method.target_modules: {t!r} matches no module of this model "
                            f"(its linear layers are named like {sample})")
    return list(targets)


class Lora(Method):
    def _targets(self):
        return self.spec.method.target_modules

    def _adapter_from(self) -> str | None:
        """The earlier lora run whose adapter this one continues (None: a fresh adapter)."""
        return self.spec.method.adapter_from

    def check(self, info):
        from ftray.models.hf import HFClassifier
        quantize = self.spec.method.quantize != "none"
        if quantize:
            check_torchao()
        if self._adapter_from():
            _adapter_of(self._adapter_from())
        if self._adapter_from() and not quantize:
            return
        model = HFClassifier.skeleton(self.spec, info)
        if not self._adapter_from():
            target_modules(model.hf, model.blocks(), self._targets())
        if quantize:
            check_quantizable(model.blocks())

    def build(self, info, checkpoint_dir: Path | None):
        from peft import PeftModel, get_peft_model
        model = build_model(self.spec, info)
        quantized = self.spec.method.quantize == "nf4"
        if quantized:  # before peft wraps the layers: its LoRA then wraps the NF4 layers as nn.Linear
            quantize_blocks(model.blocks())
        adapter = (checkpoint_dir / MODEL_DIR / ADAPTER_DIR if checkpoint_dir else
                   _adapter_of(self._adapter_from()) if self._adapter_from() else None)
        if adapter:
            model.hf = PeftModel.from_pretrained(model.hf, str(adapter), is_trainable=True)
        else:
            model.hf = get_peft_model(model.hf, self._config(model, info))
        if self.spec.train.precision != "fp32":
            skip_input_casts(model.hf)
        add_adapters_in_place(model.hf)
        if quantized:
            keep_out_of_ddp(model)
        model.merge_on_export = self.spec.method.export == "merged"
        return model

    def _config(self, model, info):
        from peft import LoraConfig
        m = self.spec.method
        head = [n for n, child in model.hf.named_children()
                if n != model.hf.base_model_prefix and any(True for _ in child.parameters())]
        return LoraConfig(r=m.r, lora_alpha=m.alpha, lora_dropout=m.dropout, use_dora=m.dora,
                          use_rslora=m.rslora,
                          target_modules=target_modules(model.hf, model.blocks(), self._targets()),
                          modules_to_save=head if info.task != "causal_lm" else None)

    def prepare(self, model):
        pass  # peft froze the base and left adapters (and the task head) trainable


def skip_input_casts(peft_model: nn.Module) -> None:
    """Under autocast, stop peft casting each adapter's input to the adapter's fp32: autocast runs
    the adapter's matrix products in bf16/fp16 anyway, so the cast only copied every adapted layer's
    input to fp32 and back (on a 1.1B Llama those copies were 21% of LoRA's step time). The outputs
    are the same with `method.dropout: 0` (the default); with dropout, it runs in bf16 instead."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def add_adapters_in_place(peft_model: nn.Module) -> None:
    """Give each plain LoRA linear layer (one adapter, no dropout, no variant such as DoRA) a forward
    that adds the adapter's product into the base layer's output with one in-place addmm (the
    matrix product reads the output as its accumulator), where peft writes the product, scales it
    and adds it: two passes over every adapted layer's output instead of six. Same values."""
    from peft.tuners.lora import Linear as LoraLinear
    for module in peft_model.modules():
        if isinstance(module, LoraLinear) and _plain_adapter(module):
            module.forward = functools.partial(_forward_adding_in_place, module)


def _plain_adapter(layer) -> bool:
    """One unmerged adapter without dropout or a variant (DoRA is one of peft's `lora_variant`s)."""
    names = list(layer.lora_A.keys())
    return (len(names) == 1 and not layer.merged and not layer.lora_variant
            and isinstance(layer.lora_dropout[names[0]], nn.Identity))


def _forward_adding_in_place(layer, x, *args, **kwargs):
    """`add_adapters_in_place`'s forward: base(x) + scaling * B(A(x)), the sum made by addmm_ on
    the base output, flattened to a matrix first (in place on a view would make autograd copy)."""
    if layer.disable_adapters or layer.merged:  # peft's own handling of these states
        return type(layer).forward(layer, x, *args, **kwargs)
    name = layer.active_adapters[0]
    flat_x = x.reshape(-1, x.shape[-1])
    out = layer.base_layer(flat_x, *args, **kwargs)
    h = layer.lora_A[name](flat_x)
    out.addmm_(h.to(out.dtype), layer.lora_B[name].weight.to(out.dtype).t(), alpha=layer.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])


def _adapter_of(run_dir: str) -> Path:
    for cand in (Path(run_dir) / MODEL_DIR / ADAPTER_DIR, Path(run_dir) / ADAPTER_DIR, Path(run_dir)):
        if (cand / "adapter_config.json").is_file():
            return cand
    raise SpecError(f"method.adapter_from: {run_dir!r} holds no exported LoRA adapter")


HOOKS = Lora  # what `MethodConfig.hooks` finds beside the config
