"""PPO from a behaviour-cloned start vs PPO from scratch on CartPole-v1: env steps to the target.

Runs jobs/rl_finetune.yaml (BC on jobs/data/cartpole_weak_demos.parquet, then PPO) and the same spec
with `method.demos=null` (PPO from random weights) for each seed; both stop when greedy
evaluation episodes return >= 475. Prints one row per run and the ratio of the mean env steps.

    python benchmarks/rl_pretrained_vs_scratch.py --storage runs/rl_bench --seeds 0 1 2
    python benchmarks/rl_pretrained_vs_scratch.py --storage runs/rl_bench --seeds 0 1 2 --report

`--report` only reads the finished runs' summaries (e.g. after running seeds in parallel).
"""

import argparse
import json
import sys
from pathlib import Path

from ftray import cli

REPO = Path(__file__).resolve().parents[1]
STARTS = {"bc": [], "scratch": ["--set", "method.demos=null"]}


def run(storage: str, seed: int, start: str) -> None:
    code = cli.main(["run", str(REPO / "jobs/rl_finetune.yaml"), "--set", f"run.storage_path={storage}",
                     "--set", f"run.seed={seed}", "--set", f"run.name={start}_seed{seed}", *STARTS[start]])
    if code:
        raise SystemExit(f"{start} seed {seed}: exit {code}")


def report(storage: str, seeds: list[int]) -> dict:
    rows = {}
    for start in STARTS:
        for seed in seeds:
            s = json.loads((Path(storage) / f"{start}_seed{seed}" / "summary.json").read_text())
            rows[f"{start}_seed{seed}"] = {"start": start, "seed": seed, **s["rl"], **s["metrics"],
                                           "fit_s": s["timings"]["fit_s"]}
            r = rows[f"{start}_seed{seed}"]
            print(f"{start:8s} seed {seed}: pretrained return {r['pretrained_return']:6.1f}  steps to 475: "
                  f"{r['steps_to_target']}  final evaluation {r['episode_return_mean']:.1f}  fit {r['fit_s']:.0f}s")
    steps = {start: [rows[f"{start}_seed{s}"]["steps_to_target"] for s in seeds] for start in STARTS}
    mean = {start: (float("inf") if None in v else sum(v) / len(v)) for start, v in steps.items()}  # None: missed
    print(f"mean env steps to target: bc {mean['bc']:.0f}, scratch {mean['scratch']:.0f}, "
          f"ratio {mean['bc'] / mean['scratch']:.3f}")
    return {"runs": rows, "mean_steps_to_target": mean}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default="runs/rl_bench")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    p.add_argument("--report", action="store_true", help="only summarise finished runs")
    args = p.parse_args()
    if not args.report:
        for seed in args.seeds:
            for start in args.starts:
                run(args.storage, seed, start)
    result = report(args.storage, args.seeds)
    (Path(args.storage) / "rl_pretrained_vs_scratch.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
