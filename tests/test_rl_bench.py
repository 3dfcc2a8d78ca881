"""benchmarks/rl_bench.py: its cells' specs are valid ftray rl specs whose starts pass ftray's own
checks (no Ray), and its rows and table are built right from finished and stopped cells' folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ftray import rl
from ftray.spec import JobSpec
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import rl_bench  # noqa: E402


@pytest.mark.parametrize("task", list(rl_bench.TASKS))
def test_every_cell_spec_is_checked_clean_before_ray(task, tmp_path, no_ray):
    """Both arms validate; the start arm's demonstrations fit the task's spaces (and CQL's module
    loads into SAC's); scratch keeps no pretraining key."""
    for arm in rl_bench.ARMS:
        spec = JobSpec.model_validate(rl_bench.spec_for(task, arm, 0, tmp_path))
        plan = rl.prepare(spec, devices=False)
        assert spec.method.env_runners == 0 and spec.method.stop.target_return == rl_bench.TASKS[task].target
        if arm == "start":
            assert plan.start == spec.method.pretrain and plan.demo_rows > 1000
        else:
            assert plan.start == "scratch" and spec.method.demos is None


def _finished(run_dir: Path, start: float, steps, final: float, evals: list[float]) -> None:
    run_dir.mkdir(parents=True)
    history = [{"iteration": i + 1, "env_steps": 2000 * (i + 1), "eval_return": e} for i, e in enumerate(evals)]
    (run_dir / "summary.json").write_text(json.dumps({
        "status": "succeeded", "metrics": {"episode_return_mean": final}, "history": history,
        "rl": {"pretrained_return": start, "steps_to_target": steps, "env_steps": 2000 * len(evals)}}))


def _stopped(run_dir: Path, start: float, evals: list[float]) -> None:
    """A cell stopped at the budget: checkpoints only, the latest with the longest history."""
    for n in range(1, len(evals) + 1):
        ckpt = run_dir / f"checkpoint_{n:06d}"
        ckpt.mkdir(parents=True)
        history = [{"iteration": i + 1, "env_steps": 2000 * (i + 1), "eval_return": e} for i, e in enumerate(evals[:n])]
        (ckpt / "ftray_progress.json").write_text(json.dumps({
            "iteration": n, "env_steps": 2000 * n, "steps_to_target": None, "pretrained_return": start,
            "history": history}))


def test_rows_and_table_from_finished_and_stopped_cells(tmp_path):
    cells = tmp_path / "cells"
    _finished(cells / "cartpole_start_seed0", 300.0, 4000, 490.0, [350.0, 480.0])
    _finished(cells / "cartpole_scratch_seed0", 20.0, 30000, 480.0, [30.0] * 14 + [476.0])
    _finished(cells / "cartpole_start_seed1", 300.0, 20000, 280.0, [250.0] * 9 + [480.0])  # slower, ends lower
    _stopped(cells / "cartpole_scratch_seed1", 20.0, [25.0, 60.0, 90.0])
    rows = rl_bench.report(tmp_path, [("cartpole", a, s) for s in (0, 1) for a in rl_bench.ARMS])
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert by[("start", 0)]["status"] == "reached" and by[("start", 0)]["lowest_after_start"] == 350.0
    stopped = by[("scratch", 1)]
    assert stopped["status"] == "not reached" and stopped["env_steps"] == 6000 and stopped["final_return"] == 90.0
    assert rl_bench.steps_text(stopped) == "not reached within 6000"
    text = rl_bench.table(rows)
    assert "| CartPole-v1 (475) | start | 300 / 300 | 4000 / 20000 | 490 / 280 | 350 / 250 |" in text
    assert "| CartPole-v1 (475) | scratch | 20 / 20 | 30000 / not reached within 6000 | 480 / 90 | 30 / 25 |" in text
    # seed 0: 4000 <= 30000 / 3 and it ended above its start; seed 1 ended below its start of 300
    assert "CartPole-v1: bar met on 1/2 seeds" in text and "cartpole_ppo.py" in text
