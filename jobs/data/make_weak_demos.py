"""Make jobs/data/cartpole_weak_demos.parquet, the imperfect demonstrations jobs/rl_finetune.yaml
clones (run from the repo root; a second, no Ray):

    python jobs/data/make_weak_demos.py

The demonstrator is a fixed heuristic that over-reacts to the pole's angular velocity: push right
when angle + 3 x angular velocity > 0. It keeps the pole up but lets the cart drift off the track,
so its greedy return is about 60% of the target 475 (printed). Its 20 episodes (first reset seeded
0, then +1 each) are written in RLlib's offline columns, as `ftray rl collect` writes them.
"""

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = np.array([0.0, 0.0, 1.0, 3.0])  # observation: cart position, cart velocity, pole angle, pole velocity


def main(episodes: int = 20, out: Path = REPO / "jobs/data/cartpole_weak_demos.parquet") -> int:
    env, rows, returns = gym.make("CartPole-v1"), [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=ep)
        t, total = 0, 0.0
        while True:
            action = int(WEIGHTS @ obs > 0)
            new_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append({"eps_id": f"0-{ep}", "t": t, "obs": obs.tolist(), "new_obs": new_obs.tolist(),
                         "actions": action, "rewards": float(reward), "terminateds": bool(terminated),
                         "truncateds": bool(truncated)})
            t, total, obs = t + 1, total + float(reward), new_obs
            if terminated or truncated:
                break
        returns.append(total)
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([
        ("eps_id", pa.string()), ("t", pa.int64()), ("obs", pa.list_(pa.float32())),
        ("new_obs", pa.list_(pa.float32())), ("actions", pa.int64()), ("rewards", pa.float32()),
        ("terminateds", pa.bool_()), ("truncateds", pa.bool_())])), out)
    print(f"{episodes} episodes, {len(rows)} steps, mean return {np.mean(returns):.1f} "
          f"(min {min(returns):.0f}, max {max(returns):.0f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
