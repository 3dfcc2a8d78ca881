"""Which protection of a pretrained start lets PPO improve an imperfect clone (issue 21 item 3).

Runs jobs/rl_finetune.yaml (BC on jobs/data/cartpole_weak_demos.parquet, a heuristic demonstrator at
about 60% of the target) once per variant and seed, the runs in parallel processes (each its own
local Ray; one env-runner-less process per run), then prints the start's return, the env steps to
the target (475), the final evaluation and the lowest evaluation seen after the start.

    python benchmarks/rl_protections.py --storage runs/rl_protect --seeds 0 1 --jobs 6
    python benchmarks/rl_protections.py --storage runs/rl_protect --seeds 0 1 --report
"""

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "plain": [],
    "bc_pull": ["method.bc_weight=1.0", "method.bc_decay_steps=20000"],
    "guide": ["method.guide_steps=100"],
    "temperature": ["method.start_temperature=2.0"],
    "entropy": ["method.entropy_coeff=0.01"],
    "scratch": ["method.demos=null"],
}


def run(storage: str, variant: str, seed: int, extra: list[str]) -> int:
    sets = [f"run.storage_path={storage}", f"run.seed={seed}", f"run.name={variant}_seed{seed}",
            "method.env_runners=0", *VARIANTS[variant], *extra]
    cmd = [sys.executable, "-m", "ftray", "run", str(REPO / "jobs/rl_finetune.yaml"), "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    log = Path(storage) / f"{variant}_seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        return subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)


def report(storage: str, variants: list[str], seeds: list[int]) -> list[dict]:
    rows = []
    for v in variants:
        for seed in seeds:
            p = Path(storage) / f"{v}_seed{seed}" / "summary.json"
            if not p.is_file():
                print(f"{v:12s} seed {seed}: no summary")
                continue
            s = json.loads(p.read_text())
            evals = [h["eval_return"] for h in s["history"] if h.get("eval_return") is not None]
            r = {"variant": v, "seed": seed, "start": s["rl"]["pretrained_return"], "steps": s["rl"]["steps_to_target"],
                 "env_steps": s["rl"]["env_steps"], "final": s["metrics"].get("episode_return_mean"),
                 "lowest": min(evals) if evals else None, "fit_s": s["timings"]["fit_s"]}
            rows.append(r)
            print(f"{v:12s} seed {seed}: start {r['start']:6.1f}  steps to target {r['steps']}  (ran {r['env_steps']})"
                  f"  final {r['final']:.1f}  lowest {r['lowest']}  fit {r['fit_s']:.0f}s")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--storage", default="runs/rl_protect")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="a further --set for every run")
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    if not a.report:
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(lambda vs: run(a.storage, vs[0], vs[1], a.set),
                          [(v, s) for s in a.seeds for v in a.variants]))
    rows = report(a.storage, a.variants, a.seeds)
    (Path(a.storage) / "protections.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
