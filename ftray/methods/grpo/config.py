"""The `method:` section of `grpo`."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import field_validator

from ftray.methods.dpo.config import PreferenceMethod
from ftray.schema import describe

# The built-in rewards (`ftray.methods.grpo.rewards`); any other `method.reward` is `module:function`.
BUILTIN_REWARDS = ("exact_match", "numeric", "regex", "json")
# The validation metrics of a GRPO epoch, the first one shown on the console.
GRPO_METRICS = ("val_reward", "val_answer_length")


class GrpoMethod(PreferenceMethod):
    """Shares the preference methods' language-model rules and optional LoRA (the reference is the
    base with its adapters off), but reads prompts, not pairs."""
    pairs: ClassVar[bool] = False
    prompts: ClassVar[bool] = True
    metrics: ClassVar[tuple[str, ...]] = GRPO_METRICS

    name: Literal["grpo"] = describe(
        "GRPO: sample `group_size` answers per prompt with the current policy, score them with `reward`, "
        "and raise the log-prob of the answers that beat their group's mean (clipped ratio, KL to the "
        "starting model).", "grpo")
    reward: str = describe(
        "exact_match (the answer `extract` finds equals `data.answer`), numeric (the last number is within "
        "`tolerance` of `data.answer`), regex (the whole answer matches `pattern`), json (the answer is "
        "valid JSON), each 0 or 1; or `module:function`, a plain function (prompt, completion, answer) "
        "-> number, importable by the driver and the workers.", "exact_match")
    extract: str = describe(
        "exact_match: regex whose last match in the answer (its first group, if it has one) is compared; "
        "the default takes the last word without trailing punctuation.", r"([^\s.!?]+)[.!?]*\s*$")
    pattern: str | None = describe("regex: the pattern the whole (stripped) answer must match.", None)
    tolerance: float = describe("numeric: the largest absolute difference that still scores 1.", 1e-6, ge=0.0)
    group_size: int = describe("Answers sampled per prompt (their rewards are compared within the group).",
                               4, ge=2, le=256)
    temperature: float = describe("Sampling temperature of the rollouts (validation is greedy).", 1.0,
                                  gt=0.0, le=10.0)
    max_new_tokens: int = describe("Longest answer generated, in tokens.", 16, ge=1, le=8192)
    clip: float = describe("PPO clip range: the policy ratio is clipped to [1 - clip, 1 + clip].", 0.2,
                           gt=0.0, lt=1.0)
    kl_coef: float = describe(
        "Weight of the KL penalty to the reference, the starting model (k3 estimator); 0: no reference "
        "is kept at all.", 0.04, ge=0.0, le=100.0)
    steps_per_batch: int = describe(
        "Optimizer steps on each batch of rollouts (1: on-policy, the ratio is 1 and `clip` never binds).",
        1, ge=1, le=16)

    @field_validator("reward")
    @classmethod
    def _reward_name(cls, v: str) -> str:
        if v not in BUILTIN_REWARDS and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
            raise ValueError(f"{v!r} is neither a built-in reward ({', '.join(BUILTIN_REWARDS)}) "
                             "nor module:function")
        return v

    @field_validator("extract", "pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return v

    def check_job(self, spec):
        super().check_job(spec)
        d = spec.data
        if self.reward == "regex" and not self.pattern:
            raise ValueError("method.pattern: reward: regex needs the pattern answers must match")
        if self.reward in ("exact_match", "numeric") and not d.answer:
            raise ValueError(f"data.answer: reward: {self.reward} compares each answer with the column "
                             "of expected answers")
        if spec.train.grad_accum_steps != 1:
            raise ValueError("train.grad_accum_steps: grpo takes its steps on each batch of rollouts "
                             "(method.steps_per_batch), not on accumulated micro-batches")
        if spec.scaling.strategy != "ddp":
            raise ValueError(f"scaling.strategy: grpo generates on each worker with its whole model; "
                             f"{spec.scaling.strategy} is not supported yet (use ddp)")
