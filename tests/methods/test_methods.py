"""Table-driven over every method and a tiny model of each builder: what should train changes,
what should stay frozen does not; transfer's unfrozen blocks step at their own learning rate."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pytest
import torch

from ftray.methods import METHODS, get_method
from ftray.models import ModelInfo, build_model
from ftray.numerics import make_optimizer, make_scheduler
from ftray.spec import JobSpec
from tests.conftest import mlp_spec, write_jsonl

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


def pairs_case(tmp_path, method, tiny_gpt):
    """A preference method over the tiny GPT-2: a batch of two (prompt, chosen, rejected) pairs,
    labels on the answers' tokens (the last 10 of 16)."""
    raw = {"model": {"name": "hf", "path": str(tiny_gpt), "max_length": 16},
           "data": {"path": str(tmp_path / "d.jsonl"), "task": "causal_lm", "prompt": "p", "chosen": "c",
                    "rejected": "r", "label": None},
           "method": method, "run": {"name": "t", "storage_path": str(tmp_path)}}
    batch = {}
    for part in ("chosen", "rejected"):
        ids = torch.randint(5, 100, (2, 16))
        batch.update({f"{part}_input_ids": ids, f"{part}_attention_mask": torch.ones_like(ids),
                      f"{part}_labels": torch.where(torch.arange(16) < 6, -100, ids)})
    return JobSpec.model_validate(raw), ModelInfo(task="causal_lm"), batch


def prompts_case(tmp_path, method, tiny_gpt):
    """A method that answers prompts itself (grpo) over the tiny GPT-2: a batch of two prompts as
    `ftray.data.PromptRows` encodes them, rewarded by length (tests/methods/grpo_rewards.py)."""
    from ftray import data
    from ftray.methods.grpo.hooks import prompt_tensors
    write_jsonl(tmp_path / "d.jsonl", [{"p": "say a few words."}, {"p": "say more words, please."}])
    raw = {"model": {"name": "hf", "path": str(tiny_gpt), "max_length": 16},
           "data": {"path": str(tmp_path / "d.jsonl"), "task": "causal_lm", "prompt": "p", "label": None,
                    "val_fraction": 0.5},
           "method": {"reward": "tests.methods.grpo_rewards:length_reward", "max_new_tokens": 6, **method},
           "run": {"name": "t", "storage_path": str(tmp_path)}}
    spec = JobSpec.model_validate(raw)
    rows = data.PromptRows(spec, str(tiny_gpt))(data.inspect(spec).train_table)
    return spec, ModelInfo(task="causal_lm"), prompt_tensors(rows, torch.device("cpu"))


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
    "pairs": [  # causal LMs on preference pairs (the reference runs live: the batch has no columns of it)
        ({"name": "dpo", "reference": "live"}, ["hf.transformer.h.0", "hf.transformer.wte"], []),
        ({"name": "dpo", "reference": "live", "lora": {"target_modules": "all-linear"}},
         ["hf.base_model.model.transformer.h.0.attn.c_attn.lora_"],
         ["hf.base_model.model.transformer.wte", "hf.base_model.model.transformer.h.0.attn.c_attn.base_layer"]),
        ({"name": "simpo"}, ["hf.transformer.h.1", "hf.transformer.wte"], []),
    ],
    "prompts": [  # causal LMs that sample their own answers and learn from their rewards
        ({"name": "grpo"}, ["hf.transformer.h.0", "hf.transformer.wte"], []),
        ({"name": "grpo", "lora": {"target_modules": "all-linear"}},
         ["hf.base_model.model.transformer.h.0.attn.c_attn.lora_"],
         ["hf.base_model.model.transformer.wte", "hf.base_model.model.transformer.h.0.attn.c_attn.base_layer"]),
    ],
}


def test_every_method_is_covered():
    covered = {m["name"] for cases in CASES.values() for m, _, _ in cases}
    assert covered == {name for name, config in METHODS.items() if config.supervised}


@pytest.mark.parametrize("builder, method, trains, frozen",
                         [(b, *case) for b, cases in CASES.items() for case in cases],
                         ids=lambda v: v if isinstance(v, str) else None)
def test_trainable_change_frozen_do_not(tmp_path, tiny_bert, tiny_gpt, teachers, builder, method, trains, frozen):
    if "teacher" in method:
        method = {**method, "teacher": str(teachers / method["teacher"])}
    init_from = None
    if method["name"] in ("incremental", "meta"):
        method, init_from = with_files(tmp_path, teachers, method)
    spec, info, batch = (mlp_case(tmp_path, method, init_from) if builder == "mlp"
                         else pairs_case(tmp_path, method, tiny_gpt) if builder == "pairs"
                         else prompts_case(tmp_path, method, tiny_gpt) if builder == "prompts"
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


def test_transfer_steps_unfrozen_blocks_at_backbone_lr_scale(tmp_path):
    """unfreeze_last: 1, backbone_lr_scale: 0.1: the head's group runs at train.lr, the top block's
    at lr * 0.1, both under the same schedule; one SGD step moves each by its own rate times its
    gradient, and the frozen blocks not at all."""
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path, method={"name": "transfer", "unfreeze_last": 1,
                                                            "backbone_lr_scale": 0.1},
                   train={"lr": 0.5, "optimizer": {"name": "sgd"}, "schedule": {"warmup_steps": 4}})
    raw["model"] = {"name": "mlp", "layers": 3, "units": 8}
    spec = JobSpec.model_validate(raw)
    m = get_method(spec)
    model = m.build(MLP_INFO, None)
    m.prepare(model)
    opt = make_optimizer(spec, m.param_groups(model))
    groups = [{id(p) for p in g["params"]} for g in opt.param_groups]
    assert groups == [{id(p) for p in model.classifier.parameters()}, {id(p) for p in model.backbone[2].parameters()}]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.05])
    make_scheduler(spec, opt, steps_per_epoch=10)  # warmup: the first step runs at a quarter of each rate
    rates = {id(p): lr for g, lr in zip(opt.param_groups, [0.125, 0.0125]) for p in g["params"]}
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.125, 0.0125])

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, _ = m.loss(model, {"x": torch.randn(6, 4), "y": torch.tensor([0, 1, 2, 0, 1, 2])})
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {"classifier.weight", "classifier.bias", "backbone.2.0.weight", "backbone.2.0.bias"}
    opt.step()
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.detach(), before[n] - rates[id(p)] * grads[n], rtol=0, atol=1e-7)
        else:
            assert torch.equal(p.detach(), before[n]), n
