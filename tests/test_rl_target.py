"""`method.stop.target_return` (ftray/rl.py): PPO lifts a weak pretrained policy to the target and
stops there, well inside its env-step cap.

The environment is tiny and seeded, so PPO solves it in a few thousand steps: `SignEnv` shows one
number x ~ U(-1, 1) per step and rewards action 1 when x > 0.5, action 0 otherwise. A linear policy
(`layers: 0`) can be exactly right; the weak start is exactly wrong, so its greedy return is 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from ftray import cli
from ftray.models.base import ModelInfo
from ftray.models.mlp import MLP
from ftray.spec import MLPModel
from tests.conftest import write_spec

HORIZON, THRESHOLD = 50, 0.5


class SignEnv(gym.Env):
    """Each step shows x ~ U(-1, 1); action 1 is right when x > threshold, action 0 otherwise (reward 1
    for a right action). Episodes are truncated after `horizon` steps, so a return counts right actions."""

    def __init__(self, horizon: int = HORIZON, threshold: float = THRESHOLD):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.horizon, self.threshold = horizon, threshold

    def _observe(self):
        self._x = self.np_random.uniform(-1.0, 1.0, size=(1,)).astype(np.float32)
        return self._x

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._observe(), {}

    def step(self, action):
        reward = float(int(action) == int(self._x[0] > self.threshold))
        self._t += 1
        return self._observe(), reward, False, self._t >= self.horizon, {}


def linear_export(run_dir: Path, sign: float) -> Path:
    """A linear ftray export whose logit(1) - logit(0) is sign * (x - 0.5): always right on SignEnv
    for sign +1, always wrong for -1. Its logits are small (|difference| <= 1.5), so sampling still
    tries the other action often enough for PPO to learn."""
    model = MLP(MLPModel(layers=0, units=1), ModelInfo("classification", 1, [0, 1]))
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[-0.5], [0.5]]) * sign)
        model.classifier.bias.copy_(torch.tensor([0.25, -0.25]) * sign)
    model.export(run_dir / "model")
    return run_dir


def greedy_return(model: MLP, episodes: int, seed: int = 0) -> float:
    env = SignEnv()
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        done = False
        while not done:
            with torch.no_grad():
                action = int(model({"x": torch.as_tensor(obs)[None]})[0].argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + reward, terminated or truncated
    return total / episodes


def expected_return(model: MLP) -> float:
    """Closed form for a linear policy on SignEnv: greedy picks 1 when d(x) = w x + b > 0 (w, b: action
    1's row minus action 0's). With w > 0 it is right except for x between -b/w and 0.5, a stretch
    of length |-b/w - 0.5| out of 2 (clipped to the observation range)."""
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    w, b = float(weight[1, 0] - weight[0, 0]), float(bias[1] - bias[0])
    cut = min(max(-b / w, -1.0), 1.0)
    wrong = abs(cut - THRESHOLD) if w > 0 else 2 - abs(cut - THRESHOLD)
    return HORIZON * (1 - wrong / 2)


TARGET, CAP, BATCH = 45.0, 12000, 400


def run_job(spec: dict, tmp_path: Path, capsys) -> dict:
    code = cli.main(["run", str(write_spec(tmp_path / "job.yaml", spec))])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())


def target_spec(start: Path, tmp_path: Path) -> dict:
    return {"model": {"name": "mlp", "layers": 0, "init_from": str(start)},
            "method": {"name": "rl", "env": f"{__name__}:SignEnv", "env_runners": 0, "train_batch": BATCH,
                       "minibatch": 100, "epochs": 4, "lr": 0.02, "gamma": 0.5, "evaluation_episodes": 4,
                       # The warm-up has its own test (test_rl.py); here it would only add held iterations.
                       "critic_warmup_steps": 0,
                       "stop": {"target_return": TARGET, "env_steps": CAP}},
            "run": {"name": "target", "storage_path": str(tmp_path), "seed": 0}}


def test_sign_env_and_its_closed_form(tmp_path):
    """The helpers this file's claims rest on: the right export scores every step, the wrong one
    none, and a policy that cuts at x = 0 instead of 0.5 is wrong on a quarter of the range."""
    right, wrong = (MLP.load(linear_export(tmp_path / str(s), s) / "model") for s in (1.0, -1.0))
    assert greedy_return(right, 3) == expected_return(right) == HORIZON
    assert greedy_return(wrong, 3) == expected_return(wrong) == 0.0
    with torch.no_grad():
        right.classifier.bias.zero_()
    assert expected_return(right) == 0.75 * HORIZON
    assert greedy_return(right, 100) == pytest.approx(0.75 * HORIZON, abs=1.5)


def test_ppo_lifts_a_wrong_start_to_target_return_and_stops_there(ray_session, tmp_path, capsys):
    """From a start whose greedy return is 0, PPO reaches the target (45 of 50) in ~2400 env steps
    (measured: evaluation 13, 36, 36, 42, 44, 46 over six iterations) and stops on the first
    iteration that meets it, far inside the 12000-step cap."""
    s = run_job(target_spec(linear_export(tmp_path / "weak", -1.0), tmp_path), tmp_path, capsys)
    rl, history = s["rl"], s["history"]
    evals = [h["eval_return"] for h in history]
    assert rl["start"] == "supervised" and rl["pretrained_return"] == 0.0, (rl, evals)
    # Stopped on the target: at the first iteration whose evaluation met it, well before the cap.
    assert evals[-1] >= TARGET and all(e < TARGET for e in evals[:-1]), evals
    assert rl["steps_to_target"] == rl["env_steps"] == BATCH * rl["iterations"] == history[-1]["env_steps"]
    assert 3 <= rl["iterations"] <= 15 and rl["env_steps"] <= CAP // 2, (rl, evals)  # measured: 6, 2400
    # It learned on the way: the first iteration already beats the start.
    assert evals[0] > rl["pretrained_return"], evals
    # The exported model is the policy that met the target: its closed-form return over all x
    # (measured 45.4) is near the 4 evaluation episodes' mean (45.75).
    model = MLP.load(Path(s["model"]))
    assert s["status"] == "succeeded" and expected_return(model) >= 42, evals
    # The final score is not that biased stopping evaluation but 20 fresh episodes (1000 steps: the
    # mean's standard error is ~0.5 here) of the same policy: near its closed-form return.
    final = rl["final"]
    assert final["episodes"] == 20 and s["metrics"]["episode_return_mean"] == final["mean"]
    assert final["mean"] == pytest.approx(expected_return(model), abs=2.5), (final, expected_return(model))
    assert final["min"] <= final["mean"] <= final["max"] and final["std"] > 0


def test_a_start_that_meets_the_target_trains_no_ppo(ray_session, tmp_path, capsys):
    """A start whose greedy return (50) already meets the target: steps_to_target is 0, no PPO
    iteration runs, and the run still ends with a checkpoint and the start's policy as its model."""
    s = run_job(target_spec(linear_export(tmp_path / "right", 1.0), tmp_path), tmp_path, capsys)
    rl = s["rl"]
    assert rl["pretrained_return"] == HORIZON and rl["steps_to_target"] == 0
    assert rl["iterations"] == 0 and rl["env_steps"] == 0 and s["history"] == []
    assert s["metrics"]["episode_return_mean"] == HORIZON and Path(s["checkpoint"]).is_dir()
    assert rl["final"] == {"episodes": 20, "mean": HORIZON, "std": 0.0, "min": HORIZON, "max": HORIZON}
    assert expected_return(MLP.load(Path(s["model"]))) == HORIZON
