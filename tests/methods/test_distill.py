"""Distillation numerics and checks: the KD term and the alpha mix against their closed form (for
classifiers and per token for causal LMs), token-level masking, and teachers that cannot teach."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ftray.methods import get_method
from ftray.methods.distill.hooks import kd_loss
from ftray.models import ModelInfo, build_model
from ftray.spec import JobSpec, SpecError
from tests.conftest import mlp_spec

LM = ModelInfo(task="causal_lm")
TWO = ModelInfo("classification", 3, [0, 1])


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def closed_form(student, teacher, labels, alpha, t) -> float:
    """mean over examples of alpha * CE(labels) + (1 - alpha) * T^2 * KL(softmax(teacher/T) || softmax(student/T)),
    in float64 numpy (rows of `student`/`teacher` are examples; `labels` their classes)."""
    s, te = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    ce = -log_softmax(s)[np.arange(len(labels)), labels]
    p, log_q = np.exp(log_softmax(te / t)), log_softmax(s / t)
    kl = (p * (np.log(p) - log_q)).sum(-1)
    return float(np.mean(alpha * ce + (1 - alpha) * t ** 2 * kl))


def test_kd_loss_is_t_squared_times_the_softened_kl():
    # Two logits worked by hand: the student [0, 0] is uniform, the teacher [ln 3, 0] says (3/4, 1/4),
    # so KL = 3/4 ln(3/2) + 1/4 ln(1/2). At T = 2 the teacher [2 ln 3, 0] softens to the same (3/4, 1/4),
    # the same KL, and the T^2 factor makes the loss 4 times as large.
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    assert float(kd_loss(s, t, 1.0)) == pytest.approx(kl, rel=1e-6)
    assert float(kd_loss(s, 2 * t, 2.0)) == pytest.approx(4 * kl, rel=1e-6)
    assert float(kd_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-7)
    # Several examples: the mean over them, at a temperature that is neither 1 nor 2.
    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 2, (5, 2)), rng.normal(0, 2, (5, 2))
    expected = closed_form(s, t, np.zeros(5, int), alpha=0.0, t=3.0)
    got = float(kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), 3.0))
    assert got == pytest.approx(expected, rel=1e-5)


def test_kd_loss_averages_over_the_unmasked_tokens_only():
    rng = np.random.default_rng(1)
    s, t = rng.normal(0, 2, (2, 3, 2)), rng.normal(0, 2, (2, 3, 2))
    mask = np.array([[True, False, True], [False, True, False]])
    expected = closed_form(s[mask], t[mask], np.zeros(3, int), alpha=0.0, t=2.0)  # 3 tokens count
    got = float(kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), 2.0,
                        torch.tensor(mask)))
    assert got == pytest.approx(expected, rel=1e-5)
    t_other = t.copy()
    t_other[~mask] = rng.normal(0, 2, (3, 2))  # differences where the mask is off must not count
    assert float(kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t_other, dtype=torch.float32), 2.0,
                         torch.tensor(mask))) == pytest.approx(got, rel=1e-6)


def classifier_distill(tmp_path, alpha, temperature):
    """A distill method over a two-class mlp student, its (different) mlp teacher exported and attached."""
    raw = mlp_spec(tmp_path / "d.parquet", tmp_path, model={"layers": 1, "units": 4})
    torch.manual_seed(1)
    build_model(JobSpec.model_validate(raw), TWO).export(tmp_path / "teacher" / "model")
    raw["method"] = {"name": "distill", "teacher": str(tmp_path / "teacher"), "alpha": alpha,
                     "temperature": temperature}
    m = get_method(JobSpec.model_validate(raw))
    m.check(TWO)
    torch.manual_seed(2)
    student = m.build(TWO, None)
    m.attach(torch.device("cpu"))
    return m, student


@pytest.mark.parametrize("alpha, temperature", [(0.3, 2.5), (0.8, 1.0), (0.0, 4.0), (1.0, 3.0)])
def test_classifier_loss_is_alpha_ce_plus_t_squared_kl(tmp_path, alpha, temperature):
    m, student = classifier_distill(tmp_path, alpha, temperature)
    batch = {"x": torch.randn(6, 3), "y": torch.tensor([0, 1, 1, 0, 1, 0])}
    loss, out = m.loss(student, batch)
    with torch.no_grad():
        teacher = m.teacher(batch)
    assert not torch.allclose(out, teacher)  # a teacher that says something else than the student
    expected = closed_form(out.detach().numpy(), teacher.numpy(), batch["y"].numpy(), alpha, temperature)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    # Teacher logits precomputed by Ray Data (method.precompute) enter the same formula.
    given = torch.tensor([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0], [0.0, 2.0], [1.0, 1.5], [4.0, 0.0]])
    loss, out = m.loss(student, {**batch, "teacher_logits": given})
    expected = closed_form(out.detach().numpy(), given.numpy(), batch["y"].numpy(), alpha, temperature)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def lm_spec(tmp_path, student, teacher, alpha=0.5, temperature=2.0):
    return JobSpec.model_validate({
        "model": {"name": "hf", "path": str(student), "max_length": 16},
        "data": {"path": str(tmp_path / "d.jsonl"), "text": "text", "task": "causal_lm", "label": None},
        "method": {"name": "distill", "teacher": str(teacher), "alpha": alpha, "temperature": temperature},
        "run": {"name": "t", "storage_path": str(tmp_path)}})


def test_token_level_distillation_for_causal_lms(tmp_path, tiny_gpt):
    base = JobSpec.model_validate({**lm_spec(tmp_path, tiny_gpt, tmp_path).model_dump(), "method": {"name": "full"}})
    teacher = build_model(base, LM)
    with torch.no_grad():  # the student starts from the same weights: make the teacher say something else
        torch.manual_seed(0)
        for p in teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    teacher.export(tmp_path / "teacher" / "model")
    alpha, temperature = 0.3, 2.5
    m = get_method(lm_spec(tmp_path, tiny_gpt, tmp_path / "teacher", alpha, temperature))
    m.check(LM)
    student = m.build(LM, None)
    m.attach(torch.device("cpu"))
    ids = torch.randint(5, 100, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: no loss there
    labels[1, 8:] = -100  # and padding at the end of the second row
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    loss, out = m.loss(student, batch)
    assert out.shape[:2] == (2, 10)
    with torch.no_grad():
        t_out = m.teacher(batch)
    # Position i predicts token i + 1: the loss counts the positions whose next token has a label,
    # CE on that token and the softened KL there, averaged over those 6 + 4 positions.
    nxt = labels[:, 1:].numpy()
    where = nxt != -100
    assert where.sum() == 10
    s, t = out[:, :-1].detach().numpy()[where], t_out[:, :-1].numpy()[where]
    assert float(loss.detach()) == pytest.approx(closed_form(s, t, nxt[where], alpha, temperature), rel=1e-4)
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
