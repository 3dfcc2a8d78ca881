"""`grpo`'s rewards: the built-ins by name, or the user's own `module:function`.

A reward is a function (prompt, completion, answer) -> number: `prompt` is the row's prompt (text,
or its chat turns), `completion` the generated text, `answer` the row's `data.answer` as text (None
without that column). The built-ins score 0 or 1. Pure Python (no torch): the driver checks a
user's function here before Ray starts, by importing it and reading its signature, never calling it.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import numbers
import re
from typing import Callable

from ftray.schema import SpecError

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")

Reward = Callable[[object, str, "str | None"], float]


def exact_match(extract: str) -> Reward:
    """1 when the last match of `extract` in the completion (its first group, if any) equals the answer."""
    rx = re.compile(extract)

    def reward(prompt, completion: str, answer: str | None) -> float:
        found = list(rx.finditer(completion))
        if not found:
            return 0.0
        got = found[-1].group(1) if rx.groups else found[-1].group(0)
        return float(got.strip() == str(answer).strip())
    return reward


def numeric(tolerance: float) -> Reward:
    """1 when the completion's last number is within `tolerance` of the answer (a number)."""
    def reward(prompt, completion: str, answer: str | None) -> float:
        found = NUMBER.findall(completion)
        return float(bool(found) and abs(float(found[-1]) - float(answer)) <= tolerance)
    return reward


def regex(pattern: str) -> Reward:
    """1 when the whole completion, stripped, matches `pattern`."""
    rx = re.compile(pattern)
    return lambda prompt, completion, answer: float(rx.fullmatch(completion.strip()) is not None)


def valid_json(prompt, completion: str, answer: str | None) -> float:
    """1 when the completion is one valid JSON value."""
    try:
        json.loads(completion)
    except ValueError:
        return 0.0
    return 1.0


def import_function(name: str) -> Callable:
    """The function `module:function` names; SpecError unless it is a plain function that takes
    (prompt, completion, answer). It is imported and inspected, not called."""
    module, _, attr = name.partition(":")
    where = f"method.reward: {name!r}"
    try:
        fn = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise SpecError(f"{where}: cannot import {module!r} ({e})") from None
    except AttributeError:
        raise SpecError(f"{where}: module {module!r} has no {attr!r}") from None
    if not inspect.isfunction(fn):
        raise SpecError(f"{where}: is a {type(fn).__name__}, not a plain function (prompt, completion, answer)")
    try:
        inspect.signature(fn).bind("prompt", "completion", "answer")
    except TypeError:
        raise SpecError(f"{where}: its signature {inspect.signature(fn)} does not take "
                        "(prompt, completion, answer)") from None
    return fn


def reward_function(method) -> Reward:
    """The reward `method` (the `grpo` config) names."""
    if method.reward == "exact_match":
        return exact_match(method.extract)
    if method.reward == "numeric":
        return numeric(method.tolerance)
    if method.reward == "regex":
        return regex(method.pattern)
    if method.reward == "json":
        return valid_json
    return import_function(method.reward)


class RewardError(RuntimeError):
    """A reward raised, or returned something other than a finite number, on a row."""


def score(reward: Reward, name: str, row: int, split: str, prompt, completion: str, answer) -> float:
    """`reward` on one completion as a float; RewardError naming the row otherwise."""
    where = f"method.reward {name!r} on {split} row {row} (prompt {str(prompt)[:60]!r}, answer {completion[:40]!r})"
    try:
        value = reward(prompt, completion, answer)
    except Exception as e:  # noqa: BLE001 - the user's code: any error stops the run, named
        raise RewardError(f"{where}: raised {type(e).__name__}: {e}") from e
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise RewardError(f"{where}: returned {value!r}, not a finite number")
    return float(value)
