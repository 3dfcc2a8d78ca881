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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_classic_demos import episodes as run_episodes, write  # noqa: E402 - the same episode loop and columns

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = np.array([0.0, 0.0, 1.0, 3.0])  # observation: cart position, cart velocity, pole angle, pole velocity


def main(episodes: int = 20, out: Path = REPO / "jobs/data/cartpole_weak_demos.parquet") -> int:
    rows, returns = run_episodes("CartPole-v1", lambda obs: int(WEIGHTS @ obs > 0), episodes)
    write(rows, out, continuous=False)
    print(f"{episodes} episodes, {len(rows)} steps, mean return {np.mean(returns):.1f} "
          f"(min {min(returns):.0f}, max {max(returns):.0f}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
