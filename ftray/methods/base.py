"""The hooks a method provides to the one training loop in `ftray.train`.

A method decides which parameters train (`prepare`), how they group into optimizer parameter
groups (`param_groups`) and what the loss is (`loss`). The loop, numerics, checkpoints and
metrics are shared; a method that needs another loop overrides one hook instead of forking it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ftray import data
from ftray.checkpoint import MODEL_DIR
from ftray.models import build_model, check_model_source, load_exported
from ftray.models.base import FtModel


def task_loss(task: str, out: torch.Tensor, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """The supervised loss of a task: cross-entropy, mean squared error, or next-token CE. A 0-d
    `out` is the mean next-token loss the model computed itself (`model.fused_loss`, training)."""
    if out.dim() == 0:
        return out
    if task == "classification":
        return F.cross_entropy(out.float(), batch["y"], reduction=reduction)
    if task == "regression":
        return F.mse_loss(out.float(), batch["y"], reduction=reduction)
    logits, labels = out[:, :-1].float(), batch["labels"][:, 1:out.shape[1]]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100, reduction=reduction)


class Method:
    def __init__(self, spec):
        self.spec = spec

    def check(self, info) -> None:
        """Driver-side checks before Ray starts (raise SpecError); default: nothing to check."""

    def build(self, info, checkpoint_dir: Path | None) -> FtModel:
        """The model to train: the checkpoint's when resuming, else the spec's."""
        if checkpoint_dir is not None:
            return load_exported(str(checkpoint_dir / MODEL_DIR))
        return build_model(self.spec, info)

    def check_source(self, info) -> None:
        """Driver-side check that the starting weights load (default: the model builder's check)."""
        check_model_source(self.spec, info)

    def inputs(self, plan) -> tuple[dict, dict]:
        """Driver-side, once Ray runs: every Ray Dataset the training loop reads (by name) and the
        row counts, built the one way `ftray run` and both shapes of sweep trial build them: the
        data's `train` and `val` (`data.ray_datasets`), then this method's `datasets` hook."""
        return self.datasets(plan, *data.ray_datasets(self.spec, plan))

    def datasets(self, plan, datasets: dict, rows: dict) -> tuple[dict, dict]:
        """Driver-side, once Ray runs: the Ray Datasets the workers read (by name) and their row
        counts (`rows["train"]` sizes an epoch). Default: the data's `train` and `val` as they are."""
        return datasets, rows

    def attach(self, device) -> None:
        """Called once in the worker after the model is placed: load what the loss needs."""

    def extra_summary(self, loop) -> dict:
        """Extra `summary.json` entries, computed once per run before training; `loop` is the
        worker's `ftray.train.Loop` (`loop.evaluate(model) -> metrics`)."""
        return {}

    def run_epoch(self, loop, epoch: int) -> tuple[float, int] | None:
        """A method's own training epoch (meta-learning): train through `loop.step()` and return
        (loss sum, examples) of this worker. None (default) runs the shared supervised epoch."""
        return None

    def epoch_metrics(self, loop) -> dict:
        """More training metrics of the epoch just trained, over all workers (every rank calls it);
        default: none."""
        return {}

    def validate(self, loop, model) -> dict:
        """This epoch's validation metrics (default: loss and task metric on the validation data)."""
        return loop.evaluate(model)

    def epoch_summary(self, extra: dict, metrics: dict) -> dict:
        """The extra summary entries after an epoch that reported `metrics` (default: unchanged)."""
        return extra

    def prepare(self, model: FtModel) -> None:
        """Set `requires_grad` on the model's parameters (default: everything trains)."""
        model.requires_grad_(True)

    def train_mode(self, model: FtModel) -> None:
        """Called after `model.train()` before each epoch: put parts that do not train in eval mode."""

    def param_groups(self, model: FtModel) -> list[dict]:
        """Optimizer parameter groups; `lr_scale` multiplies `train.lr` for a group."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to minimise, model output) for one micro-batch."""
        out = model(batch)
        return task_loss(self.spec.data.task, out, batch), out
