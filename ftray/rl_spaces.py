"""What `method.name: rl` does differently for Discrete and for continuous (Box) actions.

`ftray.rl` calls these wherever an action space matters, so that it reads the same for both:

- Discrete: the policy network's outputs are one logit per action (a categorical distribution);
  the greedy action is the arg-max.
- Box (a flat vector of floats): the outputs are a Gaussian's means then log standard deviations,
  one pair per action dimension, as RLlib's `TorchDiagGaussian` reads them (RLlib's default PPO
  module lays them out the same way). PPO acts in the environment's own units, clipped to the
  bounds (`clip_actions`, no normalisation), so demonstrations' actions clone as they are; the
  greedy action is the mean, clipped. SAC (RLlib's default SAC module) squashes its Gaussian with
  tanh into [-1, 1] and RLlib rescales that to the bounds, so SAC needs bounded actions; its greedy
  action is tanh(mean), rescaled.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import torch

from ftray.models.base import ModelInfo
from ftray.spec import SpecError


def is_box(act) -> bool:
    return isinstance(act, gym.spaces.Box)


def check_spaces(env: str, algorithm: str, obs, act, pretrain: str | None = None) -> None:
    """The spaces `rl` supports: a flat Box observation; Discrete actions (PPO) or a flat float Box
    (PPO, and SAC when bounded). `pretrain` (with demonstrations): cql needs continuous actions."""
    flat_obs = isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1
    box_act = is_box(act) and len(act.shape) == 1 and np.issubdtype(act.dtype, np.floating)
    if not (flat_obs and (isinstance(act, gym.spaces.Discrete) or box_act)):
        raise SpecError(f"method.env: {env} has observations {obs} and actions {act}; method rl supports a "
                        "flat Box observation and Discrete actions or a flat Box of float actions")
    if pretrain == "cql" and not box_act:
        raise SpecError(f"method.pretrain: cql learns continuous (Box) actions; {env}'s actions are {act} "
                        "(use pretrain: marwil or bc with algorithm: ppo)")
    if algorithm == "sac" and not box_act:
        raise SpecError(f"method.algorithm: sac learns continuous actions; {env}'s actions are {act} "
                        "(use algorithm: ppo for Discrete actions)")
    if algorithm == "sac" and not (np.all(np.isfinite(act.low)) and np.all(np.isfinite(act.high))):
        raise SpecError(f"method.algorithm: sac squashes its actions into the action space's bounds; "
                        f"{env}'s actions {act} are unbounded (use algorithm: ppo, or bound the Box)")


def spaces_text(obs, act) -> str:
    if is_box(act):
        return f"{int(obs.shape[0])} observation features, {int(act.shape[0])} continuous actions"
    return f"{int(obs.shape[0])} observation features, {int(act.n)} actions"


def same_action_space(a, b) -> bool:
    """Whether a saved policy's action space is this environment's (count, or dimensions and bounds)."""
    if is_box(a) or is_box(b):
        return (is_box(a) and is_box(b) and a.shape == b.shape
                and np.allclose(a.low, b.low) and np.allclose(a.high, b.high))
    return getattr(a, "n", None) == getattr(b, "n", None)


def policy_info(width: int, act) -> ModelInfo:
    """The ftray `mlp` head of a policy: one logit per action, or a mean and a log-std per dimension
    (named in `classes`, so an export says what its outputs are)."""
    if is_box(act):
        dim = int(act.shape[0])
        return ModelInfo("classification", width, [f"mean[{i}]" for i in range(dim)]
                         + [f"log_std[{i}]" for i in range(dim)])
    return ModelInfo("classification", width, list(range(int(act.n))))


def _squashed(module) -> bool:
    from ray.rllib.core.distribution.torch.torch_distribution import TorchSquashedGaussian
    return module.get_inference_action_dist_cls() is TorchSquashedGaussian


def env_action(module, dist_inputs: torch.Tensor, act, rng: np.random.Generator | None = None):
    """The action the environment gets from one observation's distribution inputs: greedy, or
    sampled when `rng` is given."""
    if not is_box(act):
        if rng is None:
            return int(dist_inputs.argmax())
        return int(rng.choice(len(dist_inputs), p=torch.softmax(dist_inputs, -1).double().numpy()))
    mean, log_std = dist_inputs.double().numpy().reshape(2, -1)
    a = mean if rng is None else mean + np.exp(log_std) * rng.standard_normal(mean.shape)
    if _squashed(module):  # SAC: tanh into [-1, 1], then RLlib's rescaling to the bounds
        a = act.low + (np.tanh(a) + 1.0) * (act.high - act.low) / 2.0
    return np.clip(a, act.low, act.high).astype(act.dtype)


def demo_value(action):
    """A demonstration row's `actions` value as Parquet holds it (an int, or a list of floats)."""
    return action.tolist() if isinstance(action, np.ndarray) else action


def check_demo_actions(actions: list, act, where: str) -> None:
    """Each demonstration action must be one of this environment's: an action index (Discrete), or
    a vector of the action space's dimensions inside its bounds (Box)."""
    if is_box(act):
        dim = int(act.shape[0])
        for i, a in enumerate(actions):
            values = a if isinstance(a, (list, tuple)) else None  # a scalar is not a vector of one
            if values is None or len(values) != dim or any(v is None for v in values):
                raise SpecError(f"{where}: row {i}: action {a!r} has the wrong shape; the environment's "
                                f"actions are vectors of {dim} floats ({act})")
            v = np.asarray(values, np.float64)
            if not (np.all(v >= act.low - 1e-6) and np.all(v <= act.high + 1e-6)):
                raise SpecError(f"{where}: row {i}: action {a!r} is outside the environment's bounds {act}")
        return
    bad = next((i for i, a in enumerate(actions) if not isinstance(a, int) or not 0 <= a < act.n), None)
    if bad is not None:
        raise SpecError(f"{where}: row {bad}: action {actions[bad]!r} is not one of the "
                        f"environment's {act.n} actions")


def start_kl(policy_inputs: torch.Tensor, start_inputs: torch.Tensor, act) -> torch.Tensor:
    """KL(start || policy) per row: categorical over logits, or between diagonal Gaussians."""
    if not is_box(act):
        return torch.nn.functional.kl_div(torch.log_softmax(policy_inputs, -1), torch.log_softmax(start_inputs, -1),
                                          log_target=True, reduction="none").sum(-1)
    m_p, ls_p = policy_inputs.chunk(2, -1)
    m_s, ls_s = start_inputs.chunk(2, -1)
    kl = ls_p - ls_s + (torch.exp(2 * ls_s) + (m_s - m_p) ** 2) / (2 * torch.exp(2 * ls_p)) - 0.5
    return kl.sum(-1)


def apply_temperature(head: torch.nn.Linear, temperature: float, act) -> None:
    """`method.start_temperature` on the policy's last layer: logits / T (Discrete), or every
    standard deviation times T, i.e. log T added to the log-std outputs' bias (Box). The greedy
    action stays the same either way."""
    with torch.no_grad():
        if is_box(act):
            dim = int(act.shape[0])
            head.bias[dim:] += math.log(temperature)
        else:
            head.weight.div_(temperature)
            head.bias.div_(temperature)
