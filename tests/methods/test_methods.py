"""Table-driven over every method and a tiny model of each builder: what should train changes,
what should stay frozen does not."""

from __future__ import annotations

import pytest
import torch

from ftray.methods import METHODS, get_method
from ftray.models import ModelInfo, build_model
from ftray.numerics import make_optimizer
from ftray.spec import JobSpec
from tests.conftest import mlp_spec


def mlp_case(tmp_path, method):
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path, method=method)
    raw["model"] = {"name": "mlp", "layers": 3, "units": 8}
    spec = JobSpec.model_validate(raw)
    model = build_model(spec, ModelInfo(task="classification", in_features=4, classes=[0, 1, 2]))
    batch = {"x": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    return spec, model, batch


def hf_case(tmp_path, method, tiny_bert):
    raw = mlp_spec(tmp_path / "d.jsonl", tmp_path, method=method)
    raw["model"] = {"name": "hf", "path": str(tiny_bert), "max_length": 16}
    raw["data"] = {"path": str(tmp_path / "d.jsonl"), "text": "text"}
    spec = JobSpec.model_validate(raw)
    model = build_model(spec, ModelInfo(task="classification", classes=[0, 1]))
    ids = torch.randint(5, 100, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "y": torch.tensor([0, 1, 0, 1])}
    return spec, model, batch


# method spec, names that must train (prefixes), names that must stay frozen (prefixes), per builder
CASES = {
    "mlp": [
        ({"name": "full"}, ["backbone.0", "backbone.2", "classifier"], []),
        ({"name": "transfer"}, ["classifier"], ["backbone.0", "backbone.1", "backbone.2"]),
        ({"name": "transfer", "unfreeze_last": 1, "backbone_lr_scale": 0.1}, ["classifier", "backbone.2"],
         ["backbone.0", "backbone.1"]),
    ],
    "hf": [
        ({"name": "full"}, ["hf.bert.embeddings", "hf.bert.encoder.layer.0", "hf.classifier"], []),
        ({"name": "transfer"}, ["hf.classifier"], ["hf.bert.embeddings", "hf.bert.encoder"]),
        ({"name": "transfer", "unfreeze_last": 1}, ["hf.classifier", "hf.bert.encoder.layer.1"],
         ["hf.bert.embeddings", "hf.bert.encoder.layer.0"]),
    ],
}


def test_every_method_is_covered():
    covered = {m["name"] for cases in CASES.values() for m, _, _ in cases}
    assert covered == set(METHODS)


@pytest.mark.parametrize("builder, method, trains, frozen",
                         [(b, *case) for b, cases in CASES.items() for case in cases],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_trainable_change_frozen_do_not(tmp_path, tiny_bert, builder, method, trains, frozen):
    spec, model, batch = (mlp_case(tmp_path, method) if builder == "mlp"
                          else hf_case(tmp_path, method, tiny_bert))
    m = get_method(spec)
    m.prepare(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = make_optimizer(spec, m.param_groups(model))
    for _ in range(3):
        loss, _ = m.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    for prefix in trains:
        assert any(k.startswith(prefix) for k in changed), f"{prefix} should train"
    for prefix in frozen:
        hit = [k for k in changed if k.startswith(prefix)]
        assert not hit, f"{hit} should be frozen"
        assert all(not p.requires_grad for k, p in after.items() if k.startswith(prefix))
