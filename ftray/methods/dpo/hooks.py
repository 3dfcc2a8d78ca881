"""`dpo`: direct preference optimisation (Rafailov et al., 2023) and what `simpo` shares with it.

Each row is a prompt with a `chosen` and a `rejected` answer, encoded as two SFT examples (labels
on the answer only, `ftray.data.PairRows`); one forward pass over both gives each answer's summed
and length-normalized log-prob (`sequence_logps`). DPO compares those with a frozen reference,
the starting model: its log-probs are computed once by Ray Data actors before training
(`method.reference: precompute`, as distillation's precomputed teacher) or in the worker at every
step (`live`). With `method.lora` the reference is the same model with its adapters switched off
(peft's `disable_adapter`), so no second copy is held.

Metrics per epoch (and once before training, under `start` in summary.json): the preference loss,
`val_preference_accuracy` (pairs whose implicit reward prefers chosen), `val_logprob_preference`
(pairs where the policy itself gives chosen the higher length-normalized log-prob: at the start,
the SFT model's own preference), the mean reward margin, and the mean summed log-prob of the
chosen and the rejected answer.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ftray.methods.base import Method
from ftray.methods.lora.hooks import Lora
from ftray.numerics import all_sum

PARTS = ("chosen", "rejected")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-prob of its labelled tokens and that sum over their count (the
    length-normalized log-prob). Position i predicts token i + 1, as in `task_loss`; `logits` may
    be cut to the batch's longest row, `labels` (-100: no label) are padded to max_length."""
    labels = labels[:, 1:logits.shape[1]]
    token = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none")
    count = (labels != -100).sum(-1)
    summed = token.sum(-1)
    return summed, summed / count.clamp(min=1)


def pair_logps(model, batch: dict) -> dict:
    """`{chosen, rejected}_{sum, mean}` log-probs of a batch of pairs from one forward pass."""
    n = len(batch["chosen_input_ids"])
    both = {k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
            for k in ("input_ids", "attention_mask", "labels")}
    summed, mean = sequence_logps(model(both), both["labels"])
    return {"chosen_sum": summed[:n], "rejected_sum": summed[n:], "chosen_mean": mean[:n], "rejected_mean": mean[n:]}


def dpo_loss(kind: str, beta: float, label_smoothing: float, policy_chosen, policy_rejected,
             ref_chosen, ref_rejected) -> torch.Tensor:
    """Per-pair DPO loss of summed log-probs. margin = (policy - ref)(chosen) - (policy - ref)(rejected);
    sigmoid: -(1 - e) log sigmoid(beta * margin) - e log sigmoid(-beta * margin) (e: label smoothing);
    ipo: (margin - 1 / (2 beta))^2."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "ipo":
        return (margin - 1 / (2 * beta)) ** 2
    return -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)


def simpo_loss(beta: float, gamma: float, chosen_mean, rejected_mean) -> torch.Tensor:
    """Per-pair SimPO loss of length-normalized log-probs: -log sigmoid(beta * (chosen - rejected) - gamma)."""
    return -F.logsigmoid(beta * (chosen_mean - rejected_mean) - gamma)


def preference_sums(loss, chosen_reward, rejected_reward, logps: dict) -> list[float]:
    """The sums the metrics are made of, for one batch: [loss, pairs, reward prefers chosen,
    length-normalized log-prob prefers chosen, reward margin, chosen log-prob, rejected log-prob]."""
    return [float(loss.sum()), len(loss), float((chosen_reward > rejected_reward).sum()),
            float((logps["chosen_mean"] > logps["rejected_mean"]).sum()),
            float((chosen_reward - rejected_reward).sum()), float(logps["chosen_sum"].sum()),
            float(logps["rejected_sum"].sum())]


def preference_metrics(sums: list[float]) -> dict:
    """The validation metrics from `preference_sums` added up over batches (and workers)."""
    loss, n, prefers, lp_prefers, margin, chosen, rejected = sums
    n = max(1.0, n)
    return {"val_loss": loss / n, "val_preference_accuracy": prefers / n, "val_logprob_preference": lp_prefers / n,
            "val_reward_margin": margin / n, "val_chosen_logp": chosen / n, "val_rejected_logp": rejected / n}


class Preference(Method):
    """The hooks the preference methods share: pair batches, optional LoRA, the validation pass.
    A subclass gives `pair_loss` (per-pair losses and the chosen and rejected rewards)."""

    def _lora(self) -> Lora | None:
        """LoRA's own hooks on this spec with `method.lora` as its method (None: no adapters)."""
        lora = self.spec.method.lora
        return Lora(self.spec.model_copy(update={"method": lora})) if lora is not None else None

    def check(self, info):
        if self._lora():
            self._lora().check(info)

    def build(self, info, checkpoint_dir):
        self.info = info
        self.model = self._lora().build(info, checkpoint_dir) if self._lora() else super().build(info, checkpoint_dir)
        return self.model

    def prepare(self, model):
        if not self._lora():  # peft froze the base and left the adapters trainable
            super().prepare(model)

    def pair_loss(self, model, batch: dict, logps: dict):
        raise NotImplementedError

    def loss(self, model, batch):
        logps = pair_logps(model, batch)
        losses, _, _ = self.pair_loss(model, batch, logps)
        return losses.mean(), None

    @torch.no_grad()
    def validate(self, loop, model):
        model.eval()
        sums = [0.0] * 7
        for batch in loop.data("val").iter_torch_batches(batch_size=self.spec.micro_batch_size,
                                                         device=loop.worker.device):
            with loop.autocast:
                logps = pair_logps(model, batch)
                losses, chosen, rejected = self.pair_loss(model, batch, logps)
            sums = [a + b for a, b in zip(sums, preference_sums(losses.float(), chosen, rejected, logps))]
        return preference_metrics(all_sum(sums, loop.worker.device))

    def extra_summary(self, loop):
        # The starting model's held-out metrics, beside the final ones.
        return {"start": self.validate(loop, loop.model)}


class Dpo(Preference):
    def datasets(self, plan, datasets, rows):
        if self.spec.method.reference != "precompute":
            return datasets, rows
        import ray.data
        # Once, before training, and materialized: every epoch then streams the columns.
        return {name: ds.map_batches(ReferenceLogps, fn_constructor_args=(self.spec, plan.info), batch_format="numpy",
                                     batch_size=16, compute=ray.data.ActorPoolStrategy(size=1),
                                     num_gpus=1 if self.spec.scaling.use_gpu else 0).materialize()
                for name, ds in datasets.items()}, rows

    def attach(self, device):
        if self.spec.method.reference == "live" and not self._lora():
            self.reference = reference_model(self.spec, self.info).to(device)

    def reference_logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's summed log-probs of chosen and rejected: the precomputed columns, or live."""
        if "ref_chosen_logp" in batch:
            return batch["ref_chosen_logp"], batch["ref_rejected_logp"]
        with torch.no_grad(), (self.model.hf.disable_adapter() if self._lora() else nullcontext()):
            logps = pair_logps(self.model if self._lora() else self.reference, batch)
        return logps["chosen_sum"], logps["rejected_sum"]

    def pair_loss(self, model, batch, logps):
        m = self.spec.method
        ref_chosen, ref_rejected = self.reference_logps(batch)
        losses = dpo_loss(m.loss, m.beta, m.label_smoothing, logps["chosen_sum"], logps["rejected_sum"],
                          ref_chosen, ref_rejected)
        return losses, m.beta * (logps["chosen_sum"] - ref_chosen), m.beta * (logps["rejected_sum"] - ref_rejected)


def reference_model(spec, info):
    """The starting model, frozen: the spec's model as `Method.build` makes it for a fresh run
    (random `model.config` weights seeded as the worker seeds them), without touching the caller's RNG."""
    from ftray.models import build_model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.run.seed)
        return build_model(spec, info).eval().requires_grad_(False)


class ReferenceLogps:
    """map_batches actor: adds the reference's summed log-probs of each pair's answers as
    `ref_chosen_logp` and `ref_rejected_logp`; on a GPU when the run trains on GPUs (it runs
    before training, so the workers' GPUs are still free), at the training's precision."""

    def __init__(self, spec, info):
        self.device = torch.device("cuda" if spec.scaling.use_gpu and torch.cuda.is_available() else "cpu")
        self.model = reference_model(spec, info).to(self.device)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.train.precision)
        self.autocast = torch.autocast(self.device.type, dtype=half) if half else nullcontext()

    def __call__(self, batch: dict) -> dict:
        with torch.no_grad(), self.autocast:
            logps = pair_logps(self.model, {k: torch.as_tensor(v).to(self.device) for k, v in batch.items()})
        batch["ref_chosen_logp"] = logps["chosen_sum"].float().cpu().numpy()
        batch["ref_rejected_logp"] = logps["rejected_sum"].float().cpu().numpy()
        return batch


HOOKS = Dpo  # what `MethodConfig.hooks` finds beside the config
