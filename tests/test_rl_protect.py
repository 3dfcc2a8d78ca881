"""The protections of a pretrained start in `method.name: rl` (ftray/rl.py): the pull toward the start
(`bc_weight`, decaying over `bc_decay_steps`), the JSRL guide (`guide_steps`, `guide_stages`) and the
start's temperature (`start_temperature`). The critic warm-up is tested in test_rl.py.

The guide and the temperature are checked without Ray on the real wrapper and module folders; one tiny
PPO run (no env-runner actors, 200-step batches) shows the pull's weight and the guide's k on schedule.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from ray.rllib.core.columns import Columns

from ftray import rl
from ftray.spec import load_spec
from tests.conftest import write_spec
from tests.test_rl import balancing_export, rl_spec, run_cli


def supervised_spec(tmp_path: Path, name: str = "protect", **method) -> dict:
    spec = rl_spec(tmp_path, name, **method)
    spec["model"] = {"name": "mlp", "layers": 0, "init_from": str(balancing_export(tmp_path / "supervised"))}
    return spec


def start_dir(tmp_path: Path, **method) -> Path:
    """The start's module folder as `fit` makes it (no Ray: behaviour cloning aside, this is local)."""
    spec = load_spec(write_spec(tmp_path / "s.yaml", supervised_spec(tmp_path, **method)))
    plan = rl.prepare(spec, devices=False)
    run_dir = tmp_path / "run"
    rl.set_up_start(spec, plan, run_dir, {})
    return rl.start_module_dir(spec, plan, run_dir)


def logits(module_dir: Path, obs: torch.Tensor) -> torch.Tensor:
    module = rl.RLModule.from_checkpoint(str(module_dir))
    with torch.no_grad():
        return module.forward_inference({Columns.OBS: obs})[Columns.ACTION_DIST_INPUTS]


@pytest.mark.parametrize("k", [0, 1, 7])
def test_guide_acts_exactly_k_steps_then_hands_over(k, tmp_path):
    guide = start_dir(tmp_path)
    env = rl.GuidedEnv(gym.make("CartPole-v1"))
    env.set_guide(str(guide), k)
    obs, _ = env.reset(seed=3)
    assert env.guide_actions == k
    assert env.env._elapsed_steps == k  # CartPole's own step counter: the episode is k steps in
    # the guide's actions were its greedy ones: replaying them on the same seed gives the same state
    replay = gym.make("CartPole-v1")
    o, _ = replay.reset(seed=3)
    for _ in range(k):
        o = replay.step(int(logits(guide, torch.as_tensor(o[None])).argmax()))[0]
    assert torch.allclose(torch.as_tensor(o), torch.as_tensor(obs))
    env.step(0)  # the learner's step is not the guide's
    assert env.guide_actions == k


def test_an_episode_that_ends_within_the_guide_starts_again_for_the_learner(tmp_path):
    env = rl.GuidedEnv(gym.make("CartPole-v1", max_episode_steps=5))
    env.set_guide(str(start_dir(tmp_path)), 10)
    env.reset(seed=0)
    assert env.guide_actions == 5 and env.env._elapsed_steps == 0


def test_guide_shrinks_as_the_evaluation_passes_thresholds(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", supervised_spec(
        tmp_path, guide_steps=100, guide_stages=4, stop={"target_return": 500})))
    # thresholds from a start of 100 to the target 500: 200, 300, 400, 500
    for evals, k in (([], 100), ([150], 100), ([210], 75), ([310, 250], 50), ([420], 25), ([500], 0)):
        assert rl.guide_steps_now(spec, {"pretrained_return": 100.0,
                                         "history": [{"eval_return": e} for e in evals]}) == k, evals


def test_start_temperature_flattens_the_start_and_keeps_its_greedy_actions(tmp_path):
    obs = torch.randn(64, 4)
    plain = logits(start_dir(tmp_path / "t1"), obs)
    hot = logits(start_dir(tmp_path / "t4", start_temperature=4.0), obs)
    assert torch.allclose(hot, plain / 4.0, atol=1e-6)
    assert torch.equal(hot.argmax(-1), plain.argmax(-1))
    entropy = lambda z: torch.distributions.Categorical(logits=z).entropy().mean()  # noqa: E731
    assert entropy(hot) > entropy(plain)


def test_start_pull_weight_is_linear_to_zero():
    assert [rl.start_pull_weight(s, 2.0, 400) for s in (0, 100, 200, 400, 800)] == [2.0, 1.5, 1.0, 0.0, 0.0]


def test_pull_and_guide_on_schedule_in_a_ppo_run(ray_session, tmp_path, capsys):
    """bc_weight 1 over 400 env steps with 200-step batches: the pull's weight is 1, 0.5, then 0 in
    the learner; the guide's k is pushed to the env runner every iteration."""
    spec = supervised_spec(tmp_path, bc_weight=1.0, bc_decay_steps=400, guide_steps=20, lr=0.01,
                           stop={"iterations": 3, "target_return": 10000})
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "run.yaml", spec))], capsys)
    assert code == 0, err[-3000:]
    history = json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())["history"]
    assert [h["start_pull_weight"] for h in history] == [1.0, 0.5, 0.0]
    assert [h["guide_steps"] for h in history] == [20, 20, 20]  # no threshold (on the way to 10000) passed
