"""Continuous (Box) actions in `method.name: rl` (ftray/rl.py, ftray/rl_spaces.py, ftray/rl_sac.py):
PPO with a Gaussian policy, SAC, their pretrained starts, and the refusals.

The runs use `TrackEnv`, a tiny seeded task where a linear policy is exactly right: each step
shows x ~ U(-1, 1) and rewards -(a - x)^2 for the action a in [-1, 1], 20 steps an episode. The
demonstrator plays a = x (return 0); an untrained Gaussian policy's mean is near 0 (return about
-20/3 = -6.7). No env-runner actors, 200-step batches, one or two iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ftray import rl, rl_spaces
from ftray.spec import load_spec
from tests.conftest import REPO, write_spec
from tests.test_rl import rl_spec, rllib_module_dir, run_cli, start_return

HORIZON = 20
TRACK = "tests.test_rl_continuous:TrackEnv"


class TrackEnv(gym.Env):
    """Each step shows x ~ U(-1, 1); the reward is -(a - x)^2 for the action a (a Box in [-1, 1] of
    `dims` dimensions, summed). Episodes are truncated after `horizon` steps."""

    def __init__(self, horizon: int = HORIZON, dims: int = 1, bounded: bool = True):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (dims,), np.float32)
        bound = 1.0 if bounded else np.inf
        self.action_space = gym.spaces.Box(-bound, bound, (dims,), np.float32)
        self.horizon = horizon

    def _observe(self):
        self._x = self.np_random.uniform(-1.0, 1.0, size=self.observation_space.shape).astype(np.float32)
        return self._x

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._observe(), {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action, np.float64) - self._x) ** 2))
        self._t += 1
        return self._observe(), reward, False, self._t >= self.horizon, {}


class MatrixActionEnv(TrackEnv):
    """Actions that are a 2x2 matrix: not a flat Box."""

    def __init__(self):
        super().__init__()
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32)


def track_spec(storage: Path, name: str = "track", **method) -> dict:
    spec = rl_spec(storage, name, env=TRACK, **method)
    spec["model"] = {"name": "mlp", "layers": 0}  # linear: a = x is in reach
    return spec


def without_epochs(spec: dict) -> dict:
    spec["method"].pop("epochs")  # rl_spec sets this PPO setting, which SAC refuses
    return spec


def sac_spec(storage: Path, name: str = "sac", **method) -> dict:
    spec = without_epochs(rl_spec(storage, name, env=TRACK, algorithm="sac", learning_starts=50, minibatch=32,
                                  **method))
    spec["model"] = {"name": "mlp", "layers": 1, "units": 16, "activation": "relu"}
    return spec


def track_demos(path: Path, episodes: int = 20, dims: int = 1, action=None) -> Path:
    """The demonstrator's episodes (a = x), or rows with a fixed `action` value (bad input)."""
    env, rows = TrackEnv(dims=dims), []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        for t in range(HORIZON):
            a = obs.tolist() if action is None else action
            new_obs, reward, _, truncated, _ = env.step(np.asarray(a if action is None else obs))
            rows.append({"eps_id": str(ep), "t": t, "obs": obs.tolist(), "new_obs": new_obs.tolist(), "actions": a,
                         "rewards": reward, "terminateds": False, "truncateds": truncated})
            obs = new_obs
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def summary_of(out: str) -> tuple[Path, dict]:
    run_dir = Path(out.strip().splitlines()[-1])
    return run_dir, json.loads((run_dir / "summary.json").read_text())


# -------------------------------------------------------------------------------- bad input
BAD = {
    "matrix actions": (lambda d: rl_spec(d, env="tests.test_rl_continuous:MatrixActionEnv"),
                       ["method.env", "flat Box of float actions"]),
    "sac on Discrete actions": (lambda d: without_epochs(rl_spec(d, algorithm="sac")),
                                ["method.algorithm", "sac learns continuous actions"]),
    "sac on unbounded actions": (lambda d: sac_spec(d, env_kwargs={"bounded": False}),
                                 ["method.algorithm", "unbounded"]),
    "sac with demonstrations to clone": (lambda d: sac_spec(d, demos="x.parquet"),
                                         ["method.pretrain: bc pretrains PPO's networks", "pretrain: cql"]),
    "sac with a guide": (lambda d: sac_spec(d, guide_steps=5, init_checkpoint="x", stop={"target_return": 0}),
                         ["method.guide_steps: a PPO setting"]),
    "sac with a temperature": (lambda d: sac_spec(d, start_temperature=2.0, init_checkpoint="x"),
                               ["method.start_temperature: a PPO setting"]),
    "sac with a supervised export": (lambda d: {**sac_spec(d), "model": {"name": "mlp", "init_from": "x"}},
                                     ["model.init_from", "sac starts from scratch or from an earlier sac"]),
    "ppo with a sac setting": (lambda d: track_spec(d, tau=0.01), ["method.tau: a SAC setting"]),
    "supervised export for Box actions": (
        lambda d: {**track_spec(d), "model": {"name": "mlp", "layers": 0, "init_from": str(d)}},
        ["model.init_from", "continuous", "method.demos or method.init_checkpoint"]),
    "demos with scalar actions": (lambda d: track_demos_spec(d, action=0.5),
                                  ["method.demos", "row 0: action 0.5 has the wrong shape", "vectors of 1 floats"]),
    "demos with 2-d actions for a 1-d env": (lambda d: track_demos_spec(d, action=[0.1, 0.2]),
                                             ["method.demos", "row 0: action [0.1, 0.2] has the wrong shape"]),
    "demos outside the bounds": (lambda d: track_demos_spec(d, action=[3.0]),
                                 ["method.demos", "row 0: action [3.0] is outside the environment's bounds"]),
    "Discrete checkpoint for Box actions": (
        lambda d: track_spec(d, init_checkpoint=str(rllib_module_dir(d / "ck", rl_spec(d)))),
        ["method.init_checkpoint", "do not match", "1 continuous actions"]),
}


def track_demos_spec(d: Path, action) -> dict:
    return track_spec(d, demos=str(track_demos(d / "demos.parquet", episodes=1, action=action)))


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_continuous_input_exits_2_naming_the_key(case, tmp_path, capsys, no_ray):
    make, fragments = BAD[case]
    spec = make(tmp_path)
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "job.yaml", spec))], capsys)
    assert code == 2, err
    assert err.startswith("ftray: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# ---------------------------------------------------------------- Gaussian policy, no Ray
def test_gaussian_kl_and_temperature():
    """The pull toward the start (`bc_weight`) on Box actions is the diagonal Gaussians' KL; the
    start's temperature multiplies every std by T and keeps the means (the greedy actions)."""
    act = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    p, s = torch.randn(5, 4), torch.randn(5, 4)
    normal = lambda z: torch.distributions.Normal(z[:, :2], z[:, 2:].exp())  # noqa: E731
    want = torch.distributions.kl_divergence(normal(s), normal(p)).sum(-1)
    assert torch.allclose(rl_spaces.start_kl(p, s, act), want, atol=1e-5)
    head = torch.nn.Linear(3, 4)
    x = torch.randn(7, 3)
    before = head(x).detach()
    rl_spaces.apply_temperature(head, 3.0, act)
    after = head(x).detach()
    assert torch.allclose(after[:, :2], before[:, :2]) and torch.allclose(after[:, 2:].exp(), 3 * before[:, 2:].exp())


# ------------------------------------------------------------------------------------ runs
def test_ppo_on_box_actions_trains_checkpoints_resumes_and_collects(ray_session, tmp_path, capsys):
    spec = track_spec(tmp_path, "ppo_box", stop={"iterations": 1})
    path = write_spec(tmp_path / "job.yaml", spec)
    code, out, err = run_cli(["run", str(path)], capsys)
    assert code == 0, err[-3000:]
    run_dir, s = summary_of(out)
    assert s["status"] == "succeeded" and s["rl"]["start"] == "scratch"
    assert s["rl"]["env_steps"] == 200 and s["rl"]["iterations"] == 1
    assert "Box(-1.0, 1.0, (1,), float32)" == s["rl"]["spaces"]["action"]
    assert -HORIZON * 4 <= s["metrics"]["episode_return_mean"] <= 0
    from ftray.models.mlp import MLP
    exported = MLP.load(run_dir / "model")  # the Gaussian's mean and log-std per action dimension
    assert exported.info.classes == ["mean[0]", "log_std[0]"]

    code, out, err = run_cli(["run", str(path), "--set", "method.stop.iterations=2"], capsys)
    assert code == 0, err[-3000:]
    _, s2 = summary_of(out)
    assert s2["resumes"] == [{"iteration": 1, "env_steps": 200}] and s2["rl"]["env_steps"] == 400
    assert s2["history"][0] == s["history"][0]

    demos = tmp_path / "collected.parquet"
    code, out, err = run_cli(["rl", "collect", str(run_dir), "--episodes", "2", "--out", str(demos)], capsys)
    assert code == 0, err
    table = pq.read_table(demos)
    assert table.schema.field("actions").type == pa.list_(pa.float32()) and table.num_rows == 2 * HORIZON
    assert all(-1.0 <= a[0] <= 1.0 for a in table["actions"].to_pylist())  # greedy actions clipped to the bounds
    assert rl.check_demos(str(demos), TrackEnv().observation_space, TrackEnv().action_space) == 2 * HORIZON


def test_bc_on_continuous_demos_starts_far_better_than_random(ray_session, tmp_path, capsys):
    """BC on the a = x demonstrator: its loss (the Gaussian's negative log-likelihood) falls, and the
    cloned start returns near 0 where the untrained policy returns about -6.7. The protections run
    on top of it: the pull toward the start and the guide on Box actions."""
    demos = track_demos(tmp_path / "demos.parquet")
    spec = track_spec(tmp_path, "bc_box", demos=str(demos), bc_iterations=60, bc_lr=0.03, bc_batch=200,
                      bc_weight=1.0, bc_decay_steps=400, guide_steps=3, start_temperature=2.0,
                      stop={"iterations": 1, "target_return": 100.0})
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "bc.yaml", spec))], capsys)
    assert code == 0, err[-3000:]
    _, s = summary_of(out)
    bc = s["rl"]["bc"]
    assert s["rl"]["start"] == "bc" and bc["rows"] == 20 * HORIZON
    assert bc["last_loss"] < bc["first_loss"] - 0.5, bc
    assert s["rl"]["pretrained_return"] == start_return(tmp_path / "bc_box" / "start", s)
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "scratch.yaml", track_spec(tmp_path, "scratch")))],
                             capsys)
    assert code == 0, err[-3000:]
    scratch = summary_of(out)[1]["rl"]["pretrained_return"]
    assert s["rl"]["pretrained_return"] > -1.0 > -4.0 > scratch, (s["rl"]["pretrained_return"], scratch)
    assert s["history"][0]["start_pull_weight"] == 1.0 and s["history"][0]["guide_steps"] == 3


def test_sac_trains_checkpoints_resumes_and_starts_another_run(ray_session, tmp_path, capsys):
    spec = sac_spec(tmp_path, "sac", stop={"iterations": 1})
    path = write_spec(tmp_path / "sac.yaml", spec)
    code, out, err = run_cli(["run", str(path)], capsys)
    assert code == 0, err[-3000:]
    run_dir, s = summary_of(out)
    assert s["status"] == "succeeded" and s["rl"]["env_steps"] == 200 and s["rl"]["iterations"] == 1
    assert s["model"] is None and Path(s["checkpoint"]).name == "checkpoint_000001"
    assert set(s["rl"]["final"]) == {"episodes", "mean", "std", "min", "max"}

    code, out, err = run_cli(["run", str(path), "--set", "method.stop.iterations=2"], capsys)
    assert code == 0, err[-3000:]
    _, s2 = summary_of(out)
    assert s2["resumes"] == [{"iteration": 1, "env_steps": 200}] and s2["rl"]["env_steps"] == 400

    # A SAC run's rollouts are continuous demonstrations (tanh-squashed, rescaled to the bounds).
    demos = tmp_path / "sac_demos.parquet"
    code, out, err = run_cli(["rl", "collect", str(run_dir), "--episodes", "1", "--out", str(demos)], capsys)
    assert code == 0, err
    assert rl.check_demos(str(demos), TrackEnv().observation_space, TrackEnv().action_space) == HORIZON

    again = sac_spec(tmp_path, "sac_again", init_checkpoint=str(run_dir))
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "again.yaml", again))], capsys)
    assert code == 0, err[-3000:]
    _, t = summary_of(out)
    assert t["rl"]["start"] == "checkpoint"
    assert t["rl"]["pretrained_return"] == start_return(rl.latest_checkpoint(run_dir) / rl.MODULE_PATH, t)


def test_sac_checkpoint_is_refused_as_a_ppo_start(ray_session, tmp_path, capsys):
    """A SAC run's module has other parameter names than PPO's policy: exit 2 naming them."""
    spec = sac_spec(tmp_path, "sac_src", stop={"iterations": 1})
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "sac.yaml", spec))], capsys)
    assert code == 0, err[-3000:]
    code, _, err = run_cli(["run", str(write_spec(tmp_path / "ppo.yaml", track_spec(
        tmp_path, "ppo_from_sac", init_checkpoint=str(summary_of(out)[0]))))], capsys)
    assert code == 2 and "method.init_checkpoint" in err and "missing" in err, err


@pytest.mark.slow
def test_job_rl_continuous_as_shipped(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/rl_continuous.yaml at full size: SAC swings Pendulum up to the target."""
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["run", "jobs/rl_continuous.yaml", f"--set=run.storage_path={tmp_path}"], capsys)
    assert code == 0, err[-3000:]
    _, s = summary_of(out)
    assert s["rl"]["steps_to_target"] is not None and s["rl"]["pretrained_return"] < -900
    assert s["metrics"]["episode_return_mean"] > -400


def test_job_rl_continuous_short(ray_session, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, err = run_cli(["run", "jobs/rl_continuous.yaml", f"--set=run.storage_path={tmp_path}",
                              "--set=method.train_batch=100", "--set=method.learning_starts=50",
                              "--set=method.evaluation_episodes=1", "--set=method.final_episodes=1",
                              "--set=method.stop={iterations: 1}"], capsys)
    assert code == 0, err[-3000:]
    _, s = summary_of(out)
    assert s["status"] == "succeeded" and s["rl"]["env_steps"] == 100
    assert load_spec(REPO / "jobs/rl_continuous.yaml").method.algorithm == "sac"
