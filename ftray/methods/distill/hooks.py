"""`distill`: a frozen teacher's softened outputs guide a (smaller) student.

loss = alpha * CE(labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T)),
per example for classifiers and per token for causal LMs (which must share the vocabulary)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ftray.methods.base import Method, task_loss
from ftray.models import exported_model_dir, load_exported
from ftray.models.base import EXPORT_CONFIG
from ftray.schema import SpecError


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher/T || student/T), averaged over examples (or unmasked tokens)."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)
    if mask is not None:
        kl = kl[mask]
    return temperature ** 2 * kl.mean()


class Distill(Method):
    def check(self, info):
        d = exported_model_dir(self.spec.method.teacher, "method.teacher")
        cfg = json.loads((d / EXPORT_CONFIG).read_text())
        teacher_info = cfg["info"]
        if teacher_info["task"] != info.task:
            raise SpecError(f"method.teacher: a {teacher_info['task']} model cannot teach a {info.task} task")
        if info.task == "classification" and [str(c) for c in teacher_info["classes"]] != \
                [str(c) for c in info.classes]:
            raise SpecError(f"method.teacher: its classes {teacher_info['classes']} differ from the data's "
                            f"{info.classes}")
        if info.task == "causal_lm":
            from ftray.models.hf import load_tokenizer, resolve_source
            ours, theirs = load_tokenizer(resolve_source(self.spec)), load_tokenizer(str(d))
            if ours.get_vocab() != theirs.get_vocab():
                raise SpecError("method.teacher: its tokenizer vocabulary differs from the student's; "
                                "token-level distillation needs a shared vocabulary")

    def attach(self, device):
        # Loaded even when its logits are precomputed: the summary reports its own metrics.
        self.teacher = load_exported(self.spec.method.teacher).to(device).eval().requires_grad_(False)

    def loss(self, model, batch):
        m, task = self.spec.method, self.spec.data.task
        out = model(batch)
        if "teacher_logits" in batch:  # precomputed once by Ray Data (method.precompute)
            teacher = batch["teacher_logits"]
        else:
            with torch.no_grad():
                teacher = self.teacher(batch)
        if task == "causal_lm":  # position i predicts token i + 1: compare where that token has a label
            mask = batch["labels"][:, 1:out.shape[1]] != -100
            soft = kd_loss(out[:, :-1], teacher[:, :-1], m.temperature, mask)
        else:
            soft = kd_loss(out, teacher, m.temperature)
        return m.alpha * task_loss(task, out, batch) + (1 - m.alpha) * soft, out

    def extra_summary(self, loop):
        params = sum(p.numel() for p in self.teacher.parameters())
        return {"teacher": {"metrics": loop.evaluate(self.teacher), "params": {"total": params, "trainable": 0}}}


HOOKS = Distill  # what `MethodConfig.hooks` finds beside the config
