"""Shared training numerics: optimizers, LR schedules, penalties, metric reduction.

These live once so that every method and every Ray mode (Train, Tune) computes them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import math

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from ftray.spec.job import JobSpec


def make_optimizer(spec: JobSpec, groups: list[dict]) -> torch.optim.Optimizer:
    """The spec's optimizer over parameter groups; a group's `lr_scale` multiplies `train.lr`."""
    o, lr = spec.train.optimizer, spec.train.lr
    groups = [{"params": g["params"], "lr": lr * g["lr_scale"], "lr_scale": g["lr_scale"]}
              for g in groups if g["params"]]
    if not groups:
        raise ValueError("the method left no parameter trainable")
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=o.alpha, eps=o.eps, momentum=o.momentum,
                                   centered=o.centered, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    # One fused kernel per step instead of a launch per tensor, where every parameter is on a GPU.
    fused = all(p.is_cuda for g in groups for p in g["params"]) or None
    return cls(groups, lr=lr, betas=o.betas, eps=o.eps, amsgrad=o.amsgrad, weight_decay=o.weight_decay,
               fused=fused)


def lr_factor(spec: JobSpec, steps_per_epoch: int):
    """Multiplier of the peak LR after `step` optimizer steps (warmup, then the schedule)."""
    s = spec.train.schedule
    total = max(1, spec.train.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        if s.name == "step":
            return s.gamma ** (step // (s.step_epochs * steps_per_epoch))
        progress = min(1.0, (step - s.warmup_steps) / max(1, total - s.warmup_steps))
        if s.name == "cosine":
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if s.name == "linear":
            return 1.0 - (1.0 - s.min_lr_ratio) * progress
        return 1.0  # constant (and plateau, which acts per epoch on top)

    return factor


def make_scheduler(spec: JobSpec, optimizer, steps_per_epoch: int):
    """Per-step schedule (LambdaLR); `plateau` is a ReduceLROnPlateau stepped once per epoch."""
    s = spec.train.schedule
    if s.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=s.factor,
                                                          patience=s.patience)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec, steps_per_epoch))


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of absolute values of trainable weight matrices (biases and norms are not penalised)."""
    terms = [p.abs().sum() for p in model.parameters() if p.requires_grad and p.dim() > 1]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def all_sum(values: list[float], device) -> list[float]:
    """Sum a few numbers over all workers (identity on one worker)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def all_mean_(tensors: list[torch.Tensor], world: int) -> None:
    """Average `tensors` over the workers in place, with one all-reduce of one flat buffer (for
    methods that make their own gradients: meta's meta-gradient, grpo's rollout updates)."""
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta
