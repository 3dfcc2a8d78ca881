"""`grpo`: group-relative policy optimisation (Shao et al., 2024, DeepSeekMath) with verifiable rewards.

Rollouts are generated inside the Train workers, by the policy being trained: the simplest shape
(no second copy of the weights, nothing to broadcast after an update); rollouts in separate Ray
actors that receive the new weights after each step are a later step. Per batch of prompts
(`train.batch_size` over all workers) each worker samples `group_size` answers to each of its
prompts, scores them with the reward (`rewards.py`), and turns the scores into group-relative
advantages, (reward - group mean) / (group std + eps). The loss per answer token is the clipped
policy-ratio objective plus `kl_coef` times the k3 estimate of the KL to the reference (the starting
model; with LoRA the same model with its adapters off), averaged over each answer's tokens and then
over the answers. The workers average their gradients and the shared step updates the policy,
`steps_per_batch` times per batch. Dropout is off throughout, so that the ratio compares one function.

Sampling is seeded by (run.seed, epoch, batch, rank) and nothing else: an epoch restarted from its
checkpoint draws the same answers, so a resumed run ends where an uninterrupted one does.

Metrics per epoch: `train_reward` (mean reward of the sampled answers), `train_kl`,
`train_answer_length` (tokens), `train_equal_groups` (share of groups whose answers all scored the
same: no learning signal), the timings `generate_tokens_per_s` (answer tokens sampled per second),
`update_tokens_per_s` (sequence tokens the policy updates read per second, prompt and answer, each
of the `steps_per_batch` passes counted) and `generate_share` (the share of the training epoch's
wall time spent generating), and on held-out prompts with greedy answers `val_reward` and
`val_answer_length`; `val_loss` is 1 - val_reward, the shortfall that loss-watching parts
(early stopping's default, plateau schedules) read. summary.json holds the starting model's
validation metrics under `start`.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import torch

from ftray import data
from ftray.methods.dpo.hooks import Preference, reference_model
from ftray.methods.grpo.rewards import reward_function, score
from ftray.numerics import all_mean_, all_sum

EPS = 1e-4  # keeps a group with equal rewards at advantage 0 rather than 0 / 0


def group_advantages(rewards: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """(reward - group mean) / (group std + eps) for rewards shaped (prompts, group_size); the std is
    the sample standard deviation (n - 1), as in the GRPO paper's reference code."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean KL per token) of answers' token log-probs shaped (answers, tokens), `mask` 1 on
    answer tokens: -min(r A, clip(r, 1 - clip, 1 + clip) A) + kl_coef * (e^(ref - logp) - (ref - logp) - 1)
    per token (r = e^(logp - old_logp), A the answer's advantage), averaged over each answer's tokens,
    then over the answers. `ref_logp` None: no KL term (kl_coef 0)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(-1)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    kl = torch.zeros_like(logp)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_coef * kl
    count = mask.sum(-1).clamp(min=1)
    loss = ((per_token * mask).sum(-1) / count).mean()
    return loss, (kl * mask).sum() / mask.sum().clamp(min=1)


def token_logps(hf, ids: torch.Tensor, mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Log-probs of each answer token (the columns after `prompt_width`) under the transformers
    model `hf`; prompts are left-padded, so positions count from each row's first real token."""
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, prompt_width - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_width:, None]).squeeze(-1)


class Grpo(Preference):
    # ------------------------------------------------------------------------------ the driver
    def check(self, info):
        super().check(info)
        from ftray.schema import SpecError
        if self.spec.method.reward not in ("exact_match", "numeric", "regex", "json"):
            reward_function(self.spec.method)  # imports and inspects the user's function, never calls it
        if self.spec.micro_batch_size < 1:
            raise SpecError("train.batch_size: fewer prompts than workers")

    def inputs(self, plan):
        """The prompt rows of `train` and `val`, each with its row number in its file (a reward that
        fails names it)."""
        spec = self.spec
        train, val = data.split_tables(spec, plan)
        if plan.val:
            numbers = np.arange(train.num_rows), np.arange(val.num_rows)
        else:
            numbers = data.split_rows(plan.train_table.num_rows, spec.data.val_fraction, spec.run.seed)
        udf = data.row_transform(spec, plan)
        datasets = {name: data._transformed_here(table.append_column(data.PromptRows.ROW, pa.array(rows)), udf)
                    for name, table, rows in (("train", train, numbers[0]), ("val", val, numbers[1]))}
        return datasets, {"train": train.num_rows, "val": val.num_rows}

    # ------------------------------------------------------------------------------ the worker
    def attach(self, device):
        from ftray.models.hf import load_tokenizer, resolve_source
        self.tok = load_tokenizer(resolve_source(self.spec))
        self.end = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        self.reward = reward_function(self.spec.method)
        self.reference = None
        if self.spec.method.kl_coef and not self._lora():
            self.reference = reference_model(self.spec, self.info).to(device)
        self.train_sums = None

    def _hf(self, model):
        return getattr(model, "module", model).hf

    def _batches(self, loop, name: str, epoch: int):
        shuffle = self.spec.data.shuffle_buffer if name == "train" else 0
        for batch in loop.data(name).iter_batches(
                batch_size=self.spec.micro_batch_size, batch_format="numpy", local_shuffle_buffer_size=shuffle or None,
                local_shuffle_seed=self.spec.run.seed * 100003 + epoch if shuffle else None):
            yield prompt_tensors(batch, loop.worker.device)

    @torch.no_grad()
    def generate(self, model, ids, mask, repeat: int, sample: bool, seed: int = 0):
        """(sequences, attention mask, answer mask) of `repeat` answers per prompt: the prompt's
        columns, then the answer up to and including its end token (the answer mask's 1s)."""
        m = self.spec.method
        ids, mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        how = {"do_sample": True, "temperature": m.temperature, "top_k": 0, "top_p": 1.0} if sample \
            else {"do_sample": False}
        devices = [ids.device] if ids.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # seeded here only: the loop's RNG stays as it was
            torch.manual_seed(seed)
            out = self._hf(model).generate(input_ids=ids, attention_mask=mask, max_new_tokens=m.max_new_tokens,
                                           pad_token_id=self.tok.pad_token_id, eos_token_id=self.end, **how)
        answer = out[:, ids.shape[1]:]
        ended = (answer == self.end).int()
        # 1 up to and including the first end token (or everything, when the answer never ended)
        answer_mask = ((ended.cumsum(-1) - ended) == 0).long()
        return out, torch.cat([mask, answer_mask], 1), answer_mask

    def _texts(self, seqs, answer_mask, width: int) -> list[str]:
        answers = seqs[:, width:] * answer_mask + self.tok.pad_token_id * (1 - answer_mask)
        return self.tok.batch_decode(answers, skip_special_tokens=True)

    def _rewards(self, batch: dict, texts: list[str], repeat: int, split: str) -> torch.Tensor:
        name, chat = self.spec.method.reward, bool(self.spec.data.messages)
        values = []
        for k, text in enumerate(texts):
            i = k // repeat
            prompt = json.loads(batch["prompt"][i]) if chat else batch["prompt"][i]
            answer = batch["answer"][i] if self.spec.data.answer else None
            values.append(score(self.reward, name, int(batch["row"][i]), split, prompt, text, answer))
        return torch.tensor(values, dtype=torch.float32)

    def _reference_logps(self, model, seqs, full_mask, width):
        if self.spec.method.kl_coef == 0:
            return None
        if self._lora():
            with self._hf(model).disable_adapter():
                return token_logps(self._hf(model), seqs, full_mask, width)
        return token_logps(self.reference.hf, seqs, full_mask, width)

    def rollout(self, model, batch: dict, seed: int, autocast=None) -> dict:
        """`group_size` sampled answers to each prompt of `batch` (PromptRows' columns; `prompt_ids`
        and `prompt_mask` as tensors on the model's device), scored: the sequences and masks, the
        rewards (prompts, group_size), the advantages, and the reference's token log-probs (None
        when kl_coef is 0)."""
        m, ids, mask = self.spec.method, batch["prompt_ids"], batch["prompt_mask"]
        started = _now(ids.device)
        seqs, full_mask, answer_mask = self.generate(model, ids, mask, m.group_size, True, seed)
        generate_s = _now(ids.device) - started
        width = ids.shape[1]
        rewards = self._rewards(batch, self._texts(seqs, answer_mask, width), m.group_size, "training")
        groups = rewards.view(-1, m.group_size)
        with torch.no_grad(), (autocast or nullcontext()):
            ref = self._reference_logps(model, seqs, full_mask, width)
        return {"seqs": seqs, "mask": full_mask, "answer_mask": answer_mask.float(), "width": width, "groups": groups,
                "advantages": group_advantages(groups).view(-1).to(ids.device), "ref": ref, "generate_s": generate_s}

    def rollout_loss(self, model, r: dict, old: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, mean KL) of a rollout under `model`'s current weights, `old` the sampling policy's
        token log-probs."""
        m = self.spec.method
        logp = token_logps(self._hf(model), r["seqs"], r["mask"], r["width"])
        return grpo_loss(logp, old, r["ref"], r["advantages"], r["answer_mask"], m.clip, m.kl_coef)

    def loss(self, model, batch):
        """One batch of prompts as one on-policy GRPO loss (roll out, score, loss); the training
        epoch is `run_epoch`'s, which reuses a rollout for `steps_per_batch` steps."""
        model.eval()
        r = self.rollout(model, batch, seed=self.spec.run.seed)
        old = token_logps(self._hf(model), r["seqs"], r["mask"], r["width"]).detach()
        return self.rollout_loss(model, r, old)[0], None

    def run_epoch(self, loop, epoch):
        m, model = self.spec.method, loop.model
        model.eval()  # dropout off: old and new log-probs come from one function
        loss_sum, seen, device = 0.0, 0, loop.worker.device
        # reward sum, answers, KL sum, KL steps, answer tokens, equal-reward groups, then the seconds
        # generating, the seconds of the rest, the epoch's seconds, and the tokens the updates read
        sums, started = np.zeros(10), _now(device)
        for i, batch in enumerate(self._batches(loop, "train", epoch)):
            seed = hash((self.spec.run.seed, epoch, i, loop.worker.rank)) % (1 << 62)
            r = self.rollout(model, batch, seed, loop.autocast)
            updating = _now(device)
            with torch.no_grad(), loop.autocast:
                old = token_logps(self._hf(model), r["seqs"], r["mask"], r["width"])
            for _ in range(m.steps_per_batch):
                with loop.autocast:
                    loss, kl = self.rollout_loss(model, r, old)
                loss.backward()
                # each worker had its own prompts
                all_mean_([p.grad for p in model.parameters() if p.requires_grad and p.grad is not None],
                          loop.worker.world)
                loop.step()
                sums[2:4] += (float(kl), 1)
            n, groups = len(batch["prompt_ids"]), r["groups"]
            loss_sum, seen = loss_sum + float(loss) * n, seen + n
            sums += (float(groups.sum()), groups.numel(), 0, 0, float(r["answer_mask"].sum()),
                     float((groups.max(-1).values == groups.min(-1).values).sum()), r["generate_s"],
                     _now(device) - updating, 0, float(r["mask"].sum()) * m.steps_per_batch)
        sums[8] = _now(device) - started
        self.train_sums = sums
        return loss_sum, seen

    def epoch_metrics(self, loop):
        reward, answers, kl, kl_steps, tokens, equal, generating, updating, epoch_s, read = all_sum(
            self.train_sums.tolist(), loop.worker.device)
        groups, world = answers / self.spec.method.group_size, loop.worker.world
        return {"train_reward": reward / max(1.0, answers), "train_kl": kl / max(1.0, kl_steps),
                "train_answer_length": tokens / max(1.0, answers), "train_equal_groups": equal / max(1.0, groups),
                # all workers' tokens over one worker's (mean) seconds
                "generate_tokens_per_s": tokens / max(1e-9, generating / world),
                "update_tokens_per_s": read / max(1e-9, updating / world),
                "generate_share": generating / max(1e-9, epoch_s)}

    @torch.no_grad()
    def validate(self, loop, model):
        """Greedy answers to the held-out prompts: their mean reward and length."""
        model = getattr(model, "module", model)
        model.eval()
        reward, answers, tokens = 0.0, 0, 0.0
        for batch in self._batches(loop, "val", 0):
            ids = batch["prompt_ids"]
            seqs, _, answer_mask = self.generate(model, ids, batch["prompt_mask"], 1, False)
            rewards = self._rewards(batch, self._texts(seqs, answer_mask, ids.shape[1]), 1, "validation")
            reward, answers, tokens = reward + float(rewards.sum()), answers + len(rewards), tokens + float(answer_mask.sum())
        reward, answers, tokens = all_sum([reward, answers, tokens], loop.worker.device)
        val_reward = reward / max(1.0, answers)
        return {"val_loss": 1.0 - val_reward, "val_reward": val_reward, "val_answer_length": tokens / max(1.0, answers)}


def prompt_tensors(batch: dict, device) -> dict:
    """A batch of PromptRows' columns with `prompt_ids` and `prompt_mask` as tensors on `device`,
    cut to the columns some prompt reaches (they are left-padded to the longest possible prompt)."""
    # a copy: Ray Data hands read-only NumPy arrays, which torch.as_tensor would wrap with a warning
    ids, mask = torch.tensor(batch["prompt_ids"]), torch.tensor(batch["prompt_mask"])
    start = int((mask.sum(0) > 0).int().argmax())
    return {**batch, "prompt_ids": ids[:, start:].to(device), "prompt_mask": mask[:, start:].to(device)}


HOOKS = Grpo  # what `MethodConfig.hooks` finds beside the config


def _now(device: torch.device) -> float:
    """Seconds, once the device's queued work is done (a GPU runs behind the Python that queues it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
