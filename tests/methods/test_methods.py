"""Table-driven over every method and a tiny model of each builder: what should train changes,
what should stay frozen does not."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
import torch

from ftray.methods import METHODS, get_method
from ftray.models import ModelInfo, build_model
from ftray.numerics import make_optimizer
from ftray.spec import JobSpec
from tests.conftest import mlp_spec

MLP_INFO = ModelInfo(task="classification", in_features=4, classes=[0, 1, 2])
HF_INFO = ModelInfo(task="classification", classes=[0, 1])


def mlp_case(tmp_path, method, init_from=None):
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path, method=method)
    raw["model"] = {"name": "mlp", "layers": 3, "units": 8, "init_from": init_from}
    batch = {"x": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])}
    return JobSpec.model_validate(raw), MLP_INFO, batch


def hf_case(tmp_path, method, tiny_bert):
    raw = mlp_spec(tmp_path / "d.jsonl", tmp_path, method=method)
    raw["model"] = {"name": "hf", "path": str(tiny_bert), "max_length": 16}
    raw["data"] = {"path": str(tmp_path / "d.jsonl"), "text": "text"}
    ids = torch.randint(5, 100, (4, 16))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "y": torch.tensor([0, 1, 0, 1])}
    return JobSpec.model_validate(raw), HF_INFO, batch


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, tiny_bert):
    """Exported teachers for the distill cases: an mlp and a tiny BERT classifier."""
    out = tmp_path_factory.mktemp("teachers")
    spec, info, _ = mlp_case(out, {"name": "full"})
    build_model(spec, info).export(out / "mlp" / "model")
    spec, info, _ = hf_case(out, {"name": "full"}, tiny_bert)
    build_model(spec, info).export(out / "hf" / "model")
    # Rows of the mlp cases' shape, with tasks: old-task data for incremental, tasks for meta.
    import pyarrow.parquet as pq
    from tests.conftest import blobs
    rows = blobs(48, classes=3, width=4)
    pq.write_table(rows.append_column("task", pa.array([i % 4 for i in range(48)])), out / "rows.parquet")
    return out


def with_files(tmp_path, teachers, method) -> tuple[dict, str | None]:
    """The method spec with the data files it reads, and the earlier run it continues (if any)."""
    if method["name"] == "incremental":
        rows = str(teachers / "rows.parquet")
        return {**method, "replay_path": rows, "old_val_path": rows}, str(teachers / "mlp")
    shutil.copy(teachers / "rows.parquet", tmp_path / "d.parquet")  # meta: the training tasks
    return method, None


# method spec, names that must train (prefixes), names that must stay frozen (prefixes), per builder
CASES = {
    "mlp": [
        ({"name": "full"}, ["backbone.0", "backbone.2", "classifier"], []),
        ({"name": "transfer"}, ["classifier"], ["backbone.0", "backbone.1", "backbone.2"]),
        ({"name": "transfer", "unfreeze_last": 1, "backbone_lr_scale": 0.1}, ["classifier", "backbone.2"],
         ["backbone.0", "backbone.1"]),
        ({"name": "distill", "teacher": "mlp"}, ["backbone.0", "classifier"], []),
        ({"name": "incremental", "ewc_lambda": 1.0}, ["backbone.0", "backbone.2", "classifier"], []),
        ({"name": "meta", "shots": 2}, ["backbone.0", "backbone.2", "classifier"], []),
    ],
    "hf": [
        ({"name": "full"}, ["hf.bert.embeddings", "hf.bert.encoder.layer.0", "hf.classifier"], []),
        ({"name": "transfer"}, ["hf.classifier"], ["hf.bert.embeddings", "hf.bert.encoder"]),
        ({"name": "transfer", "unfreeze_last": 1}, ["hf.classifier", "hf.bert.encoder.layer.1"],
         ["hf.bert.embeddings", "hf.bert.encoder.layer.0"]),
        ({"name": "lora", "r": 4}, ["hf.base_model.model.bert.encoder.layer.0.attention.self.query.lora_A",
                                    "hf.base_model.model.classifier.modules_to_save"],
         ["hf.base_model.model.bert.embeddings", "hf.base_model.model.bert.encoder.layer.0.attention.self.query.base_layer",
          "hf.base_model.model.bert.encoder.layer.0.intermediate"]),
        ({"name": "lora", "r": 4, "target_modules": "mlp"},
         ["hf.base_model.model.bert.encoder.layer.1.intermediate.dense.lora_B"],
         ["hf.base_model.model.bert.encoder.layer.1.attention",
          "hf.base_model.model.bert.encoder.layer.1.intermediate.dense.base_layer"]),
        ({"name": "attention"}, ["hf.bert.encoder.layer.0.attention.self.query",
                                 "hf.bert.encoder.layer.1.attention.output.dense", "hf.classifier"],
         ["hf.bert.embeddings", "hf.bert.encoder.layer.0.intermediate", "hf.bert.encoder.layer.0.output.dense",
          "hf.bert.encoder.layer.0.attention.output.LayerNorm"]),
        ({"name": "attention", "lora": True}, ["hf.base_model.model.bert.encoder.layer.0.attention.self.value.lora_A"],
         ["hf.base_model.model.bert.encoder.layer.0.intermediate",
          "hf.base_model.model.bert.encoder.layer.0.attention.self.value.base_layer"]),
        ({"name": "distill", "teacher": "hf"}, ["hf.bert.encoder.layer.0", "hf.classifier"], []),
    ],
}


def test_every_method_is_covered():
    covered = {m["name"] for cases in CASES.values() for m, _, _ in cases}
    assert covered == set(METHODS)


@pytest.mark.parametrize("builder, method, trains, frozen",
                         [(b, *case) for b, cases in CASES.items() for case in cases],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_trainable_change_frozen_do_not(tmp_path, tiny_bert, teachers, builder, method, trains, frozen):
    if "teacher" in method:
        method = {**method, "teacher": str(teachers / method["teacher"])}
    init_from = None
    if method["name"] in ("incremental", "meta"):
        method, init_from = with_files(tmp_path, teachers, method)
    spec, info, batch = (mlp_case(tmp_path, method, init_from) if builder == "mlp"
                         else hf_case(tmp_path, method, tiny_bert))
    m = get_method(spec)
    m.check(info)
    model = m.build(info, None)
    m.prepare(model)
    m.attach(torch.device("cpu"))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = make_optimizer(spec, m.param_groups(model))
    for _ in range(3):
        model.train()
        m.train_mode(model)
        loss, _ = m.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    for prefix in trains:
        assert any(k.startswith(prefix) for k in changed), f"{prefix} should train"
    for prefix in frozen:
        assert any(k.startswith(prefix) for k in before), f"{prefix} names no parameter"
        hit = [k for k in changed if k.startswith(prefix)]
        assert not hit, f"{hit} should be frozen"
        assert all(not p.requires_grad for k, p in after.items() if k.startswith(prefix))
