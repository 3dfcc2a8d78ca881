"""LoRA specifics: an adapter adds (alpha / r) B A x, the exported adapter reloads with the same
outputs, the merged export matches base + adapter, and target modules that match nothing are
refused before Ray starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftray.methods import get_method
from ftray.models import ModelInfo, load_exported
from ftray.spec import JobSpec, SpecError

INFO = ModelInfo(task="classification", classes=["a", "b", "c"])


def lora_spec(tmp_path, tiny_bert, **method):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(tiny_bert), "max_length": 16},
        "data": {"path": str(tmp_path / "d.jsonl"), "text": "text"},
        "method": {"name": "lora", "r": 4, "alpha": 8, **method},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_adapter_and_merged_exports(tmp_path, tiny_bert):
    m = get_method(lora_spec(tmp_path, tiny_bert))
    model = m.build(INFO, None)
    with torch.no_grad():  # LoRA's B starts at zero: give the adapter something to contribute
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.eval()
    ids = torch.randint(5, 100, (3, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    out = model(batch)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # Only the adapters and the new head: 2 blocks x 4 attention projections (32 -> 32) x r (32 + 32),
    # plus the 3-class head 32 x 3 + 3.
    assert trainable == 2 * 4 * 4 * (32 + 32) + 32 * 3 + 3

    model.export(tmp_path / "run" / "model")
    assert (tmp_path / "run" / "model" / "adapter" / "adapter_config.json").is_file()
    merged = load_exported(str(tmp_path / "run")).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(batch), out, rtol=0, atol=1e-5)

    again = get_method(lora_spec(tmp_path, tiny_bert, adapter_from=str(tmp_path / "run"))).build(INFO, None)
    again.eval()
    torch.testing.assert_close(again(batch), out, rtol=0, atol=1e-6)
    assert any(p.requires_grad for n, p in again.named_parameters() if "lora_A" in n)


@pytest.mark.parametrize("method", [{"name": "lora"}, {"name": "attention", "lora": True}])
def test_adapter_adds_alpha_over_r_times_b_a(tmp_path, tiny_bert, method):
    """An adapted layer computes W x + b + (alpha / r) B A x: method.r and method.alpha reach peft
    as its rank and scaling numerator (plain LoRA, not rank-stabilised alpha / sqrt(r))."""
    r, alpha = 2, 6.0
    model = get_method(lora_spec(tmp_path, tiny_bert, **method, r=r, alpha=alpha)).build(INFO, None)
    cfg = model.hf.peft_config["default"]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora) == (r, alpha, False)
    layer = model.hf.base_model.model.bert.encoder.layer[0].attention.self.query
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (r, 32)), rng.normal(0, 1, (32, r))  # A: r x in, B: out x r
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor(a))
        layer.lora_B["default"].weight.copy_(torch.tensor(b))
    x = rng.normal(0, 1, (3, 32))
    w, bias = (t.detach().double().numpy() for t in (layer.base_layer.weight, layer.base_layer.bias))
    expected = x @ w.T + bias + alpha / r * x @ a.T @ b.T
    got = layer(torch.tensor(x, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method, expected", [
    ({"target_modules": ["q_proj"]}, "'q_proj' matches no module of this model"),
    ({"target_modules": "all-linear", "adapter_from": "/nonexistent/run"}, "holds no exported LoRA adapter"),
])
def test_bad_targets_and_adapters_are_refused_in_the_driver(tmp_path, tiny_bert, method, expected):
    with pytest.raises(SpecError, match=expected):
        get_method(lora_spec(tmp_path, tiny_bert, **method)).check(INFO)


def _cast_flags(model) -> set:
    from peft.tuners.tuners_utils import BaseTunerLayer
    return {m.cast_input_dtype_enabled for m in model.modules() if isinstance(m, BaseTunerLayer)}


def test_adapters_skip_the_fp32_input_copy_under_autocast_with_the_same_outputs(tmp_path, tiny_bert):
    fp32 = lora_spec(tmp_path, tiny_bert)
    assert _cast_flags(get_method(fp32).build(INFO, None)) == {True}  # peft's own behaviour, kept in fp32
    bf16 = JobSpec.model_validate({**fp32.model_dump(), "train": {"precision": "bf16"}})
    model = get_method(bf16).build(INFO, None).eval()
    assert _cast_flags(model) == {False}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.randint(5, 100, (3, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        skipped = model(batch)
        for m in model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = True
        cast = model(batch)
    torch.testing.assert_close(skipped, cast, rtol=0, atol=0)


def test_adapters_add_in_place_with_peft_outputs_and_gradients(tmp_path, tiny_bert):
    """The in-place addmm forward of plain adapters gives peft's own outputs and gradients; a layer
    with LoRA dropout keeps peft's forward (its adapter input differs from the base's)."""
    from peft.tuners.lora import Linear as LoraLinear
    model = get_method(lora_spec(tmp_path, tiny_bert)).build(INFO, None).eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all("forward" in vars(m) for m in layers)  # every plain adapter adds in place
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.randint(5, 100, (3, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def outputs_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(batch)
        out.pow(2).sum().backward()
        return out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    in_place, in_place_grads = outputs_and_grads()
    for m in layers:
        del m.forward  # back to peft's LoraLinear.forward
    peft_out, peft_grads = outputs_and_grads()
    torch.testing.assert_close(in_place, peft_out, rtol=1e-6, atol=1e-6)
    assert in_place_grads.keys() == peft_grads.keys()
    for name, g in peft_grads.items():
        torch.testing.assert_close(in_place_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    dropped = get_method(lora_spec(tmp_path, tiny_bert, dropout=0.1)).build(INFO, None)
    assert not any("forward" in vars(m) for m in dropped.modules() if isinstance(m, LoraLinear))
