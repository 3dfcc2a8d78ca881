"""LoRA specifics: an adapter adds (alpha / r) B A x, the exported adapter reloads with the same
outputs, the merged export matches base + adapter, and target modules that match nothing are
refused before Ray starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftray.methods import get_method
from ftray.models import ModelInfo, build_model, load_exported
from ftray.spec import JobSpec, SpecError

INFO = ModelInfo(task="classification", classes=["a", "b", "c"])


def lora_spec(tmp_path, tiny_bert, **method):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(tiny_bert), "max_length": 16},
        "data": {"path": str(tmp_path / "d.jsonl"), "text": "text"},
        "method": {"name": "lora", "r": 4, "alpha": 8, **method},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def _perturbed(model):
    """LoRA's B starts at zero (and DoRA's magnitude at the weight norms): move both, so that the
    adapter contributes; returns the model in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
            if "lora_magnitude" in name:
                p.mul_(1.2)
    return model.eval()


def bert_batch():
    """Three rows of 16 random token ids, unpadded, for the tiny BERT."""
    ids = torch.randint(5, 100, (3, 16))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_adapter_and_merged_exports(tmp_path, tiny_bert):
    m = get_method(lora_spec(tmp_path, tiny_bert))
    model = _perturbed(m.build(INFO, None))
    batch = bert_batch()
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
    _perturbed(model)
    batch = bert_batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        skipped = model(batch)
        for m in model.modules():
            if hasattr(m, "cast_input_dtype_enabled"):
                m.cast_input_dtype_enabled = True
        cast = model(batch)
    torch.testing.assert_close(skipped, cast, rtol=0, atol=0)


# ------------------------------------------------------------------------ QLoRA, DoRA, rsLoRA, exports
LM = ModelInfo(task="causal_lm")
# A 2-layer Llama-style decoder (random weights from a config); its block linears fit NF4's blocks.
LLAMA = {"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64, "pad_token_id": 0}


def lm_spec(tmp_path, **method):
    from tests.conftest import minilm_path
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": minilm_path(), "max_length": 16, "config": LLAMA},
        "data": {"path": str(tmp_path / "d.jsonl"), "task": "causal_lm", "prompt": "p", "response": "r",
                 "label": None},
        "method": {"name": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear", **method},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def lm_batch(seed=0):
    ids = torch.randint(5, 512, (4, 16), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def nf4_layers(model):
    from ftray.models.quantize import NF4Linear
    return {n: m for n, m in model.named_modules() if isinstance(m, NF4Linear)}


def test_qlora_trains_the_adapters_on_a_frozen_nf4_base(tmp_path):
    torch.manual_seed(0)
    m = get_method(lm_spec(tmp_path, quantize="nf4"))
    model = m.build(LM, None)
    layers = nf4_layers(model)
    assert len(layers) == 2 * 7  # every linear of both blocks: q, k, v, o, gate, up, down
    before = {n: layer.dequantize().clone() for n, layer in layers.items()}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2)
    batch, losses = lm_batch(), []
    for _ in range(8):
        loss, _ = m.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert nf4_layers(model).keys() == layers.keys()  # still 4-bit, and bit for bit the same weights
    for n, layer in nf4_layers(model).items():
        assert type(layer.weight).__name__ == "NF4Tensor"
        assert torch.equal(layer.dequantize(), before[n])


def test_the_nf4_base_takes_about_a_quarter_of_bf16(tmp_path):
    model = get_method(lm_spec(tmp_path, quantize="nf4")).build(LM, None)
    layers = nf4_layers(model).values()
    nf4 = sum(layer.storage_bytes() for layer in layers)
    bf16 = sum(2 * layer.weight.numel() for layer in layers)
    assert 0.25 < nf4 / bf16 < 0.27  # 4 bits a weight + one 8-bit scale per 64 weights + scales' scales


@pytest.mark.parametrize("method", [{"name": "lora"}, {"name": "attention", "lora": True}])
def test_dora_and_rslora_reach_peft(tmp_path, tiny_bert, method):
    r, alpha = 4, 8.0
    model = get_method(lora_spec(tmp_path, tiny_bert, **method, r=r, alpha=alpha, dora=True,
                                 rslora=True)).build(INFO, None)
    cfg = model.hf.peft_config["default"]
    assert (cfg.use_dora, cfg.use_rslora) == (True, True)
    layer = model.hf.base_model.model.bert.encoder.layer[0].attention.self.query
    assert layer.scaling["default"] == pytest.approx(alpha / r ** 0.5)  # rank-stabilised: alpha / sqrt(r)
    magnitude = layer.lora_magnitude_vector["default"].weight  # DoRA: one trained magnitude per output
    assert magnitude.shape == (32,) and magnitude.requires_grad
    plain = get_method(lora_spec(tmp_path, tiny_bert, **method)).build(INFO, None).hf.peft_config["default"]
    assert (plain.use_dora, plain.use_rslora) == (False, False)


# Merged exports against base + adapter: LoRA and DoRA (fp32 model, fp32 export) to float rounding;
# over an NF4 base the export is bf16 throughout, so within 2% of the largest logit (bf16 keeps 8
# bits: 0.4% a weight; measured 0.3-0.7%), and each merged weight is bf16(dequantized NF4 + update).
@pytest.mark.parametrize("method, dtype, tol", [
    ({}, torch.float32, 1e-5), ({"dora": True}, torch.float32, 1e-5),
    ({"quantize": "nf4"}, torch.bfloat16, 0.02), ({"quantize": "nf4", "dora": True}, torch.bfloat16, 0.02)],
    ids=["lora", "dora", "qlora", "qdora"])
def test_merged_export_loads_with_transformers_and_matches_base_plus_adapter(tmp_path, method, dtype, tol):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = _perturbed(get_method(lm_spec(tmp_path, **method)).build(LM, None))
    batch = lm_batch(1)
    with torch.no_grad():
        expected = model(batch)
    model.export(tmp_path / "model")
    assert (tmp_path / "model" / "adapter" / "adapter_config.json").is_file()
    saved = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    assert {p.dtype for p in saved.parameters()} == {dtype}
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"), dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=tol * float(expected.abs().max()))
    if method == {"quantize": "nf4"}:  # the merged weight is the dequantized NF4 base + (alpha / r) B A
        q = model.hf.base_model.model.model.layers[0].self_attn.q_proj
        want = q.base_layer.dequantize().float() + 2.0 * q.lora_B["default"].weight @ q.lora_A["default"].weight
        torch.testing.assert_close(saved.model.layers[0].self_attn.q_proj.weight, want.to(torch.bfloat16),
                                   rtol=2 ** -8, atol=0)
    assert len(nf4_layers(model)) == (14 if "quantize" in method else 0)  # the live model stays 4-bit


def test_adapter_only_export_is_small_and_reloads_through_peft(tmp_path):
    from peft import PeftModel
    torch.manual_seed(0)
    m = get_method(lm_spec(tmp_path, export="adapter"))
    model = _perturbed(m.build(LM, None))
    batch = lm_batch(2)
    with torch.no_grad():
        expected = model(batch)
    out = tmp_path / "run" / "model"
    model.export(out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter"]
    assert (out / "adapter" / "adapter_model.safetensors").stat().st_size < 100_000
    assert (out / "adapter" / "tokenizer.json").is_file()
    torch.manual_seed(0)  # the same random base
    base = build_model(lm_spec(tmp_path), LM)
    base.hf = PeftModel.from_pretrained(base.hf, str(out / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(batch), expected, rtol=0, atol=1e-6)
    with pytest.raises(SpecError, match="holds only a LoRA adapter"):
        load_exported(str(tmp_path / "run"))
    torch.manual_seed(0)
    again = get_method(lm_spec(tmp_path, adapter_from=str(tmp_path / "run"))).build(LM, None).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(batch), expected, rtol=0, atol=1e-6)

    # A model tuned with a built-in chat template exports it with the adapter too.
    from transformers import AutoTokenizer

    from ftray.chat import CHATML
    model.chat_template = CHATML
    model.export(tmp_path / "chat")
    assert AutoTokenizer.from_pretrained(tmp_path / "chat" / "adapter").chat_template == CHATML


def test_quantize_without_torchao_exits_2_with_the_pip_command(tmp_path, monkeypatch, capsys, no_ray):
    import importlib.util

    from ftray import cli
    from tests.conftest import write_jsonl, write_spec
    write_jsonl(tmp_path / "d.jsonl", [{"p": "a", "r": "b"}] * 8)
    spec = write_spec(tmp_path / "job.yaml", lm_spec(tmp_path, quantize="nf4").model_dump(mode="json"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "method.quantize: nf4 needs torchao, which is not installed: pip install 'torchao>=0.18'" in err


def test_adapters_add_in_place_with_peft_outputs_and_gradients(tmp_path, tiny_bert):
    """The in-place addmm forward of plain adapters gives peft's own outputs and gradients; a layer
    with LoRA dropout keeps peft's forward (its adapter input differs from the base's)."""
    from peft.tuners.lora import Linear as LoraLinear
    model = get_method(lora_spec(tmp_path, tiny_bert)).build(INFO, None).eval()
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all("forward" in vars(m) for m in layers)  # every plain adapter adds in place
    _perturbed(model)
    batch = bert_batch()

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
