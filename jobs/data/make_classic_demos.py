"""Make the imperfect demonstrations of Gymnasium's classic-control tasks that
benchmarks/rl_bench.py (and `method.demos` in tests) clone: fixed heuristics, each deliberately
short of the task's target, 20 episodes each (first reset seeded 0, then +1), in RLlib's offline
columns as `ftray rl collect` writes them (run from the repo root; seconds, no Ray):

    python jobs/data/make_classic_demos.py

- jobs/data/acrobot_weak_demos.parquet (Acrobot-v1, target -100): torque against the sign of
  (first link's velocity + half the second's); it swings up, slowly.
- jobs/data/mountaincar_weak_demos.parquet (MountainCar-v0, target -110): push right while moving
  right or when left of -0.6, else left; it reaches the flag, late.
- jobs/data/pendulum_weak_demos.parquet (Pendulum-v1, target -200, torques in [-2, 2]): an energy
  swing-up with a low gain (0.1), then a soft PD balance (4, 0.5) within 0.55 rad of the top.

Each prints its mean return; `progress` is (mean - random) / (target - random), the share of the
way from a random policy's return to the target.
"""

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]


def acrobot(obs):
    return 0 if obs[4] + 0.5 * obs[5] > 0 else 2


def mountaincar(obs):
    return 2 if obs[1] > 0 or obs[0] < -0.6 else 0


def pendulum(obs):
    cos, sin, w = (float(v) for v in obs)
    if cos > 0.85:  # near the top: balance
        u = -(4.0 * np.arctan2(sin, cos) + 0.5 * w)
    else:  # pump energy toward the top's (15 = 3g/2l in Pendulum's units)
        u = 0.1 * (15.0 - (0.5 * w * w + 15.0 * cos)) * (1.0 if w >= 0 else -1.0)
    return [float(np.clip(u, -2.0, 2.0))]


# env id -> (demonstrator, file, target, a random policy's mean return, measured over 20 seeded episodes)
TASKS = {
    "Acrobot-v1": (acrobot, "acrobot_weak_demos.parquet", -100.0, -500.0),
    "MountainCar-v0": (mountaincar, "mountaincar_weak_demos.parquet", -110.0, -200.0),
    "Pendulum-v1": (pendulum, "pendulum_weak_demos.parquet", -200.0, -1180.0),
}


def episodes(env_id: str, policy, n: int) -> tuple[list[dict], list[float]]:
    env, rows, returns = gym.make(env_id), [], []
    for ep in range(n):
        obs, _ = env.reset(seed=ep)
        t, total = 0, 0.0
        while True:
            action = policy(obs)
            new_obs, reward, terminated, truncated, _ = env.step(np.asarray(action) if isinstance(action, list)
                                                                 else action)
            rows.append({"eps_id": f"0-{ep}", "t": t, "obs": obs.tolist(), "new_obs": new_obs.tolist(),
                         "actions": action, "rewards": float(reward), "terminateds": bool(terminated),
                         "truncateds": bool(truncated)})
            t, total, obs = t + 1, total + float(reward), new_obs
            if terminated or truncated:
                break
        returns.append(total)
    env.close()
    return rows, returns


def write(rows: list[dict], out: Path, continuous: bool) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("eps_id", pa.string()), ("t", pa.int64()), ("obs", pa.list_(pa.float32())),
        ("new_obs", pa.list_(pa.float32())), ("actions", pa.list_(pa.float32()) if continuous else pa.int64()),
        ("rewards", pa.float32()), ("terminateds", pa.bool_()), ("truncateds", pa.bool_())])), out)


def main(n: int = 20) -> int:
    for env_id, (policy, name, target, random_return) in TASKS.items():
        rows, returns = episodes(env_id, policy, n)
        write(rows, REPO / "jobs/data" / name, continuous=env_id == "Pendulum-v1")
        mean = float(np.mean(returns))
        print(f"{env_id}: {n} episodes, {len(rows)} steps, mean return {mean:.1f} (min {min(returns):.0f}, "
              f"max {max(returns):.0f}), progress {(mean - random_return) / (target - random_return):.0%} "
              f"-> jobs/data/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
