"""RL fine-tuning from an imperfect start vs learning from scratch, on four Gymnasium classic-control
tasks (issue 21 item 4): env steps to the target, final return, lowest return seen after the start.

The command for the 16-core CPU machine (all 24 cells at once, about 9 minutes of wall time in all:
up to 450 s of training, then the cells still running are stopped and recorded):

    python benchmarks/rl_bench.py --out runs/rl_bench --budget-s 450

Tasks (`TASKS`), each with a start that is a clone of a weaker heuristic demonstrator (shipped
Parquet demonstrations; jobs/data/make_weak_demos.py and jobs/data/make_classic_demos.py) and a
target: CartPole-v1 (BC, then PPO; target 475), Acrobot-v1 (BC, then PPO; -100), MountainCar-v0
(BC, then PPO; -110) and Pendulum-v1 (CQL, then SAC; -200). Arms: `start` (pretrained on the
demonstrations, then the online algorithm) and `scratch` (the same spec with `method.demos=null`).
Seeds 0, 1, 2. Every (task, seed, arm) cell is its own `python -m ftray run` process with its own
local Ray and no env-runner actors (`method.env_runners=0`: sampling, learning and evaluation in
that one process), all started at once.

`--budget-s` is a wall-clock limit for the whole set: a cell still running then is stopped and
recorded from its latest checkpoint as "not reached within N steps" (N: the env steps it had taken).
Everything is written as it happens, so a kill at the limit still leaves the finished cells:
`<out>/results.jsonl` gets one line per cell as it ends, `<out>/table.md` is rewritten after each,
each cell's ftray run folder is `<out>/cells/<task>_<arm>_seed<k>/` (checkpoints every iteration),
its log `<out>/logs/`. `--report` rebuilds the rows and the table from the folders alone (say, after
the bench itself was killed). A smoke run on a small machine:

    python benchmarks/rl_bench.py --out /tmp/rl_bench --tasks cartpole --seeds 0 --arms start \\
        --budget-s 300 --set method.stop.env_steps=2000 --set method.train_batch=1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ARMS = ("start", "scratch")
PPO = {"algorithm": "ppo", "lr": 0.0003, "gamma": 0.99, "train_batch": 2000, "minibatch": 128, "epochs": 10,
       "bc_iterations": 500, "bc_lr": 0.001, "bc_batch": 256, "evaluation_episodes": 10}


@dataclass(frozen=True)
class Task:
    env: str
    demos: str
    target: float
    env_steps: int
    method: dict
    model: dict = field(default_factory=lambda: {"name": "mlp", "layers": 2, "units": 64, "activation": "tanh"})
    published: str = "not found"


TASKS = {
    "cartpole": Task("CartPole-v1", "jobs/data/cartpole_weak_demos.parquet", 475.0, 100000, PPO,
                     published="RLlib rllib/tuned_examples/ppo/cartpole_ppo.py: stop at a greedy evaluation "
                               "return of 350 within 200,000 env steps (a stop criterion, not a measured "
                               "steps-to-target; a lower bar than 475)"),
    "acrobot": Task("Acrobot-v1", "jobs/data/acrobot_weak_demos.parquet", -100.0, 100000, PPO,
                    published="not found (no Acrobot example under rllib/tuned_examples/{ppo,sac,cql,marwil,bc})"),
    "mountaincar": Task("MountainCar-v0", "jobs/data/mountaincar_weak_demos.parquet", -110.0, 100000, PPO,
                        published="not found (rllib/tuned_examples/sac/mountaincar_sac.py stops at a return of "
                                  "-250 or 20,000 env steps; every MountainCar-v0 episode returns >= -200, so "
                                  "that bar says nothing)"),
    "pendulum": Task("Pendulum-v1", "jobs/data/pendulum_weak_demos.parquet", -200.0, 20000,
                     {"algorithm": "sac", "pretrain": "cql", "lr": 0.001, "gamma": 0.99, "tau": 0.005,
                      "train_batch": 1000, "minibatch": 128, "learning_starts": 500, "bc_iterations": 300,
                      "bc_lr": 0.001, "bc_batch": 256, "cql_bc_iterations": 100, "evaluation_episodes": 5},
                     model={"name": "mlp", "layers": 2, "units": 64, "activation": "relu"},
                     published="RLlib rllib/tuned_examples/sac/pendulum_sac.py: a return of -250 within "
                               "20,000 env steps (its default stop; 256x256 networks); "
                               "rllib/tuned_examples/cql/pendulum_cql.py (offline CQL alone): -700"),
}


def cell_name(task: str, arm: str, seed: int) -> str:
    return f"{task}_{arm}_seed{seed}"


def spec_for(task: str, arm: str, seed: int, out: Path) -> dict:
    """The ftray job spec of one cell: the task's spec, without demonstrations for `scratch`."""
    t = TASKS[task]
    method = {"name": "rl", "env": t.env, "env_runners": 0, **t.method, "demos": str(REPO / t.demos),
              "stop": {"target_return": t.target, "env_steps": t.env_steps}}
    if arm == "scratch":
        method = {k: v for k, v in method.items() if k not in ("demos", "pretrain") and not k.startswith(("bc_", "cql_"))}
    return {"model": dict(t.model), "method": method,
            "run": {"name": cell_name(task, arm, seed), "storage_path": str(out / "cells"), "seed": seed}}


# ------------------------------------------------------------------------------ reading a cell
def latest_progress(run_dir: Path) -> dict | None:
    """ftray's progress record in the cell's latest complete checkpoint (None before the first)."""
    found = sorted(run_dir.glob("checkpoint_*/ftray_progress.json"))
    return json.loads(found[-1].read_text()) if found else None


def cell_row(task: str, arm: str, seed: int, run_dir: Path, wall_s: float | None = None,
             stopped: bool = False) -> dict:
    """One cell's result: from its summary.json when the run ended, else from its latest checkpoint."""
    row = {"task": task, "arm": arm, "seed": seed, "target": TASKS[task].target, "wall_s": wall_s}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() and not stopped else None
    progress = summary["rl"] if summary else latest_progress(run_dir)
    history = (summary or progress or {}).get("history", [])
    evals = [h["eval_return"] for h in history if h.get("eval_return") is not None]
    if progress is None:
        return {**row, "status": "no checkpoint", "env_steps": 0, "start_return": None, "steps_to_target": None,
                "final_return": None, "lowest_after_start": None}
    steps = progress.get("steps_to_target")
    final = summary["metrics"].get("episode_return_mean") if summary else (evals[-1] if evals else None)
    status = ("failed" if summary and summary["status"] != "succeeded" else "reached" if steps is not None
              else "not reached")
    return {**row, "status": status, "env_steps": progress.get("env_steps", 0),
            "start_return": progress.get("pretrained_return"), "steps_to_target": steps,
            "final_return": final, "final_is": "final evaluation" if summary else "last evaluation (stopped)",
            "lowest_after_start": min(evals) if evals else None}


# ------------------------------------------------------------------------------------ the table
def steps_text(row: dict) -> str:
    if row["status"] == "reached":
        return f"{row['steps_to_target']}"
    if row["status"] in ("failed", "no checkpoint"):
        return row["status"]
    return f"not reached within {row['env_steps']}"


def _num(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def verdict(rows: list[dict]) -> str:
    """Issue 21's bar for one task: on every seed the start reaches the target in <= 1/3 of
    scratch's steps (or scratch never reaches it and the start does), and never ends below its start."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    ok = []
    for s in seeds:
        start, scratch = by.get(("start", s)), by.get(("scratch", s))
        if start is None or scratch is None:
            return "incomplete"
        fast = start["status"] == "reached" and (
            scratch["status"] != "reached" or start["steps_to_target"] <= scratch["steps_to_target"] / 3)
        kept = (start["final_return"] is not None and start["start_return"] is not None
                and start["final_return"] >= start["start_return"])
        ok.append(fast and kept)
    return f"bar met on {sum(ok)}/{len(seeds)} seeds"


def table(rows: list[dict]) -> str:
    """Markdown: per task and arm the start's return, steps to the target, final return and lowest
    return after the start per seed (seed 0 / 1 / 2), then the bar and the published figure."""
    lines = ["| task (target) | arm | start return | env steps to target | final return | lowest after start |",
             "|---|---|---|---|---|---|"]
    notes = []
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        if not task_rows:
            continue
        for arm in ARMS:
            rs = sorted((r for r in task_rows if r["arm"] == arm), key=lambda r: r["seed"])
            if rs:
                cols = [" / ".join(f(r) for r in rs) for f in (lambda r: _num(r["start_return"]), steps_text,
                                                                  lambda r: _num(r["final_return"]),
                                                                  lambda r: _num(r["lowest_after_start"]))]
                lines.append(f"| {TASKS[task].env} ({TASKS[task].target:g}) | {arm} | " + " | ".join(cols) + " |")
        notes.append(f"- {TASKS[task].env}: {verdict(task_rows)}; published: {TASKS[task].published}")
    return "\n".join(lines + [""] + notes) + "\n"


# ------------------------------------------------------------------------------------- running
def cell_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RAY_DEDUP_LOGS="0",
               # 24 local Rays on one machine: no idle workers prestarted per CPU, a small object store each
               RAY_prestart_worker_first_driver="0", RAY_enable_worker_prestart="0",
               RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION="0.01")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return env


def run_cell(task: str, arm: str, seed: int, out: Path, deadline: float, extra: list[str]) -> dict:
    """Run one cell until it ends or the deadline; stop it (its process group: the driver and its
    own local Ray) at the deadline. Returns its row."""
    name = cell_name(task, arm, seed)
    spec_path = out / "specs" / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump(spec_for(task, arm, seed, out), sort_keys=False))
    cmd = [sys.executable, "-m", "ftray", "run", str(spec_path), "--quiet"]
    for s in extra:
        cmd += ["--set", s]
    t0 = time.monotonic()
    with (out / "logs" / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=cell_env(),
                                start_new_session=True)
        stopped = False
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stopped = True
            stop_group(proc)
    return cell_row(task, arm, seed, out / "cells" / name, round(time.monotonic() - t0, 1), stopped)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the cell's process group (ftray's driver shuts its Ray down), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


class Recorder:
    """Appends each cell's row to results.jsonl and rewrites table.md, as the cells end."""

    def __init__(self, out: Path):
        self.out, self.rows, self.lock = out, [], threading.Lock()

    def add(self, row: dict) -> None:
        with self.lock:
            self.rows.append(row)
            with (self.out / "results.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            (self.out / "table.md").write_text(table(self.rows))
            print(f"[bench] {row['task']} {row['arm']} seed {row['seed']}: {steps_text(row)} "
                  f"(start {_num(row['start_return'])}, final {_num(row['final_return'])}, "
                  f"{row['wall_s']} s)", flush=True)


def report(out: Path, cells: list[tuple[str, str, int]]) -> list[dict]:
    return [cell_row(t, a, s, out / "cells" / cell_name(t, a, s)) for t, a, s in cells
            if (out / "cells" / cell_name(t, a, s)).is_dir()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/rl_bench")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock limit for all cells together")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--jobs", type=int, default=0, help="cells at once (0: all)")
    p.add_argument("--stagger-s", type=float, default=0.5, help="seconds between the cells' starts")
    p.add_argument("--set", action="append", default=[], help="a further --set for every cell")
    p.add_argument("--report", action="store_true", help="only rebuild the table from --out")
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    cells = [(t, arm, s) for t in a.tasks for s in a.seeds for arm in a.arms]
    if a.report:
        rows = report(out, cells)
    else:
        for d in ("specs", "logs", "cells"):
            (out / d).mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").write_text("")
        rec, deadline = Recorder(out), time.monotonic() + a.budget_s
        def one(i_cell):
            i, cell = i_cell
            time.sleep(i * a.stagger_s)  # 24 local Rays starting in the same second race for ports
            try:
                rec.add(run_cell(*cell, out, deadline, a.set))
            except Exception as e:  # noqa: BLE001 - one broken cell must not lose the others' rows
                print(f"[bench] {cell}: {type(e).__name__}: {e}", flush=True)
        with ThreadPoolExecutor(a.jobs or len(cells)) as pool:
            list(pool.map(one, enumerate(cells)))
        rows = rec.rows
    text = table(rows)
    (out / "table.md").write_text(text)
    print(text, flush=True)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
