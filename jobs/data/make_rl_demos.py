"""Make jobs/data/cartpole_demos.parquet, the demonstrations jobs/rl_finetune.yaml clones (run from
the repo root; about a minute on 16 cores):

    python jobs/data/make_rl_demos.py

PPO from scratch until greedy evaluation episodes return >= 475 (about 20000 env steps) is the
demonstrator; it is rolled out greedily for 20 episodes with `ftray rl collect`, which writes RLlib's offline columns (obs,
new_obs, actions, rewards, terminateds, truncateds, eps_id, t).
"""

import sys
import tempfile
from pathlib import Path

from ftray import cli

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    storage = tempfile.mkdtemp(prefix="ftray-demonstrator-")
    code = cli.main(["run", str(REPO / "jobs/rl_finetune.yaml"), "--set", "method.demos=null",
                     "--set", "method.stop={target_return: 475, env_steps: 100000}", "--set", "run.name=cartpole_demonstrator",
                     "--set", f"run.storage_path={storage}"])
    if code:
        return code
    return cli.main(["rl", "collect", f"{storage}/cartpole_demonstrator", "--episodes", "20", "--seed", "0",
                     "--out", str(REPO / "jobs/data/cartpole_demos.parquet")])


if __name__ == "__main__":
    sys.exit(main())
