"""Reward functions that tests name as `tests.methods.grpo_rewards:NAME` (the workers import them)."""

from __future__ import annotations

import os

CALLS = {"boom": 0}


def length_reward(prompt, completion, answer):
    """A reward with a spread: longer answers (up to 4 words) score more."""
    return min(len(completion.split()), 4) / 4


def never_call(prompt, completion, answer):
    """The check must accept it without calling it."""
    raise AssertionError("the reward was called while the spec was checked")


def two_args(prompt, completion):
    return 1.0


def not_a_number(prompt, completion, answer):
    return "high"


def raises_on_third_boom(prompt, completion, answer):
    """Raises the third time it scores the prompt "boom" in this process: the start's validation and
    epoch 1's pass, epoch 2's raises (one worker)."""
    if prompt == "boom":
        CALLS["boom"] += 1
        if CALLS["boom"] >= 3:
            raise ZeroDivisionError(f"boom in process {os.getpid()}")
    return 0.5


class Scorer:
    def __call__(self, prompt, completion, answer):
        return 1.0


scorer = Scorer()
