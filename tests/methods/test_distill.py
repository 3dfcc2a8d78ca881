"""Distillation numerics and checks: the KD term, token-level masking, and teachers that cannot teach."""

from __future__ import annotations

import pytest
import torch

from ftray.methods import get_method
from ftray.methods.distill import kd_loss
from ftray.models import ModelInfo, build_model
from ftray.spec import JobSpec, SpecError

LM = ModelInfo(task="causal_lm")


def test_kd_loss_is_zero_for_equal_outputs_and_scales_with_t_squared():
    logits = torch.randn(5, 4)
    assert float(kd_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(5, 4)
    assert float(kd_loss(logits, other, 1.0)) > 0
    # T^2 * KL at temperature T: for large T the softened KL shrinks like 1/T^2, the product stays O(1)
    assert 0 < float(kd_loss(logits, other, 50.0)) < 10 * float(kd_loss(logits, other, 1.0))


def test_kd_loss_ignores_masked_tokens():
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    t_masked = t.clone()
    t_masked[0, 1:] = torch.randn(2, 7)  # differences where the mask is off must not count
    t_masked[1] = torch.randn(3, 7)
    assert float(kd_loss(s, t, 1.0, mask)) == pytest.approx(float(kd_loss(s, t_masked, 1.0, mask)))


def lm_spec(tmp_path, student, teacher):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(student), "max_length": 16},
        "data": {"path": str(tmp_path / "d.jsonl"), "text": "text", "task": "causal_lm", "label": None},
        "method": {"name": "distill", "teacher": str(teacher), "alpha": 0.5},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_token_level_distillation_for_causal_lms(tmp_path, tiny_gpt):
    base = JobSpec.model_validate({**lm_spec(tmp_path, tiny_gpt, tmp_path).model_dump(), "method": {"name": "full"}})
    build_model(base, LM).export(tmp_path / "teacher" / "model")
    m = get_method(lm_spec(tmp_path, tiny_gpt, tmp_path / "teacher"))
    m.check(LM)
    student = m.build(LM, None)
    m.attach(torch.device("cpu"))
    ids = torch.randint(5, 100, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: no loss there
    loss, out = m.loss(student, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    assert out.shape[:2] == (2, 10) and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_teacher_with_another_vocabulary_is_refused(tmp_path, tiny_gpt):
    from transformers import AutoTokenizer
    base = JobSpec.model_validate({**lm_spec(tmp_path, tiny_gpt, tmp_path).model_dump(), "method": {"name": "full"}})
    teacher = build_model(base, LM)
    tok = AutoTokenizer.from_pretrained(tiny_gpt)
    tok.add_tokens(["<extra_token_for_test>"])
    teacher.export(tmp_path / "teacher" / "model")
    tok.save_pretrained(tmp_path / "teacher" / "model")  # the teacher's tokenizer now differs
    with pytest.raises(SpecError, match="vocabulary differs"):
        get_method(lm_spec(tmp_path, tiny_gpt, tmp_path / "teacher")).check(LM)


def test_teacher_of_other_classes_is_refused(tmp_path):
    from tests.conftest import mlp_spec
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path)
    teacher_spec = JobSpec.model_validate(raw)
    build_model(teacher_spec, ModelInfo("classification", 4, [0, 1, 2])).export(tmp_path / "teacher" / "model")
    raw["method"] = {"name": "distill", "teacher": str(tmp_path / "teacher")}
    with pytest.raises(SpecError, match=r"its classes \[0, 1, 2\] differ"):
        get_method(JobSpec.model_validate(raw)).check(ModelInfo("classification", 4, [0, 1]))
