"""ASHA against the full grid on one search space: best metric reached and trial-epochs spent.

Both sweeps search the same 16-point grid over the digits MLP (learning rate x units x activation,
jobs/sweep.yaml's data and model) for `--epochs` epochs each, as packed trials: the grid runs every
point to the end (FIFO), ASHA (grace period 1, reduction factor 3) stops the points that are not in
the top third at epochs 1, 3 and 9. Prints one row per sweep: best val_accuracy, trial-epochs
(sum over trials of the epochs trained), trials stopped early, and wall time.

    python benchmarks/asha_vs_grid.py --storage runs/asha_vs_grid
    python benchmarks/asha_vs_grid.py --storage runs/asha_vs_grid --report   # only read the summaries
"""

import argparse
import json
import sys
from pathlib import Path

from ftray import cli

REPO = Path(__file__).resolve().parents[1]
SPACE = ("{model.layers: {grid: [1]}, train.lr: {grid: [0.0003, 0.001, 0.003, 0.01]}, "
         "model.units: {grid: [16, 64]}, model.activation: {grid: [relu, tanh]}}")
SCHEDULERS = {"grid": "{name: fifo}", "asha": "{name: asha, grace_period: 1, reduction_factor: 3}"}


def sweep(storage: str, name: str, epochs: int, concurrent: int) -> None:
    code = cli.main(["sweep", str(REPO / "jobs/sweep.yaml"), "--set", f"run.storage_path={storage}",
                     "--set", f"run.name={name}", "--set", f"train.epochs={epochs}",
                     "--set", "tune.trial=packed", "--set", "tune.searcher=grid", "--set", "tune.num_samples=1",
                     "--set", f"tune.max_concurrent={concurrent}", "--set", "tune.ensemble=null",
                     "--set", f"tune.space={SPACE}", "--set", f"tune.scheduler={SCHEDULERS[name]}"])
    if code:
        raise SystemExit(f"{name}: exit {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="runs/asha_vs_grid")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="only read the finished sweeps' summaries")
    args = parser.parse_args()
    rows = []
    for name in SCHEDULERS:
        if not args.report:
            sweep(args.storage, name, args.epochs, args.concurrent)
        s = json.loads((Path(args.storage) / name / "summary.json").read_text())
        rows.append((name, s["best"]["metrics"]["val_accuracy"], s["trial_epochs"], s["stopped_early"],
                     s["trials"], s["timings"]["total_s"]))
    print(f"{'sweep':6} {'best val_accuracy':>18} {'trial-epochs':>13} {'stopped early':>14} {'wall s':>8}")
    for name, best, epochs, stopped, trials, wall in rows:
        print(f"{name:6} {best:18.4f} {epochs:13d} {f'{stopped}/{trials}':>14} {wall:8.1f}")
    (grid, g_best, g_ep, *_), (_, a_best, a_ep, *_) = rows
    print(f"ASHA spent {a_ep / g_ep:.0%} of the grid's trial-epochs; best accuracy {a_best - g_best:+.4f}")


if __name__ == "__main__":
    sys.exit(main())
