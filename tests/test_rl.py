"""`method.name: rl` (ftray/rl.py): PPO with RLlib from scratch and from checked pretrained starts.

Bad input ends with exit 2 before Ray starts (`ray_context.use_ray` fails the test if called). The runs
use tiny budgets: no env-runner actors, 200-step train batches, one or two iterations.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from ray.rllib.algorithms.ppo import PPOConfig

from ftray import cli, ray_context, rl
from ftray.models.base import ModelInfo
from ftray.models.mlp import MLP
from ftray.spec import JobSpec, MLPModel, load_spec
from tests.conftest import REPO, write_spec

CARTPOLE = gym.make("CartPole-v1")
OBS, ACT = CARTPOLE.observation_space, CARTPOLE.action_space


def rl_spec(storage: Path, name: str = "rl", **method) -> dict:
    return {"model": {"name": "mlp", "layers": 1, "units": 16, "activation": "tanh"},
            "method": {"name": "rl", "env": "CartPole-v1", "env_runners": 0, "train_batch": 200, "minibatch": 100,
                       "epochs": 2, "evaluation_episodes": 2, "stop": {"iterations": 1}, **method},
            "run": {"name": name, "storage_path": str(storage), "seed": 0}}


def balancing_export(run_dir: Path, units: int | None = None, in_features: int = 4) -> Path:
    """A supervised-style ftray export that balances CartPole: a linear model (layers 0) whose greedy
    action pushes the way the pole falls (pole angle + angular velocity > 0 -> push right)."""
    info = ModelInfo("classification", in_features, [0, 1])
    model = MLP(MLPModel(layers=0 if units is None else 1, units=units or 1), info)
    if units is None:
        with torch.no_grad():
            model.classifier.weight.copy_(torch.tensor([[0, 0, -5.0, -5.0], [0, 0, 5.0, 5.0]]))
            model.classifier.bias.zero_()
    model.export(run_dir / "model")
    return run_dir


def rllib_module_dir(path: Path, spec: dict | None = None, obs=OBS, default_module: bool = False) -> Path:
    """An RLlib module checkpoint: ftray's policy for `spec`, or RLlib's default PPO module."""
    if default_module:
        module = PPOConfig().get_default_rl_module_spec()
        module.observation_space, module.action_space = obs, ACT
        module.model_config = {"fcnet_hiddens": [16]}
    else:
        module = rl.module_spec(load_spec(write_spec(path.parent / "s.yaml", spec)), obs, ACT)
    module.build().save_to_path(str(path))
    return path


def start_return(module_dir: Path, summary: dict) -> float:
    """What a run whose start is the RLlib module in `module_dir` should have scored at its start:
    that module, loaded here straight from its folder, in the greedy evaluation of the run's own
    spec (its environment, episodes and seeds)."""
    module = rl.RLModule.from_checkpoint(str(module_dir))
    return rl.evaluate(module, JobSpec.model_validate({k: summary["spec"][k] for k in ("model", "method", "run")}))


def latest_module(run_dir: Path) -> Path:
    return rl.latest_checkpoint(run_dir) / rl.MODULE_PATH


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


# -------------------------------------------------------------------------------- bad input
def _demos(path: Path, drop: str | None = None, obs_width: int = 4, action: int = 1) -> Path:
    cols = {"eps_id": ["0", "0"], "obs": [[0.0] * obs_width] * 2, "new_obs": [[0.0] * obs_width] * 2,
            "actions": [0, action], "rewards": [1.0, 1.0], "terminateds": [False, True]}
    cols.pop(drop, None)
    pq.write_table(pa.table(cols), path)
    return path


BAD = {
    "unknown env id": (lambda d: rl_spec(d, env="NoSuchEnv-v9"),
                       ["method.env", "unknown Gymnasium environment 'NoSuchEnv-v9'"]),
    "import path fails": (lambda d: rl_spec(d, env="no_such_module_xyz:Env"),
                          ["method.env", "cannot import 'no_such_module_xyz'"]),
    "class missing": (lambda d: rl_spec(d, env="ftray.rl:NoSuchEnv"), ["method.env", "NoSuchEnv"]),
    "bad env kwargs": (lambda d: rl_spec(d, env="ftray.rl:CartPoleVariant", env_kwargs={"wheels": 4}),
                       ["method.env_kwargs", "wheels"]),
    "actions that are not a flat Box": (lambda d: rl_spec(d, env="tests.test_rl_continuous:MatrixActionEnv"),
                                        ["method.env", "Discrete actions or a flat Box"]),
    "demos without new_obs": (lambda d: rl_spec(d, demos=str(_demos(d / "demos.parquet", drop="new_obs"))),
                              ["method.demos", "demos.parquet", "no column 'new_obs'"]),
    "demos of another env": (lambda d: rl_spec(d, demos=str(_demos(d / "demos.parquet", obs_width=3))),
                             ["method.demos", "row 0: obs has 3 values", "have 4"]),
    "demos with a bad action": (lambda d: rl_spec(d, demos=str(_demos(d / "demos.parquet", action=7))),
                                ["method.demos", "row 1: action 7"]),
    "demos missing": (lambda d: rl_spec(d, demos=str(d / "nope.parquet")), ["method.demos", "no such file"]),
    "checkpoint with other layer sizes": (
        lambda d: rl_spec(d, init_checkpoint=str(rllib_module_dir(
            d / "ck", {**rl_spec(d), "model": {"name": "mlp", "layers": 1, "units": 32}}))),
        ["method.init_checkpoint", "shape mismatch", "pi.backbone.0.0.weight (32, 4) != (16, 4)"]),
    "checkpoint with other names": (
        lambda d: rl_spec(d, init_checkpoint=str(rllib_module_dir(d / "ck", default_module=True))),
        ["method.init_checkpoint", "missing ['pi.backbone.0.0.bias'", "unexpected ['encoder."]),
    "checkpoint for other spaces": (
        lambda d: rl_spec(d, init_checkpoint=str(rllib_module_dir(
            d / "ck", rl_spec(d), obs=gym.spaces.Box(-1, 1, (3,))))),
        ["method.init_checkpoint", "spaces", "do not match", "4 observation features"]),
    "not a checkpoint": (lambda d: rl_spec(d, init_checkpoint=str(d)), ["method.init_checkpoint", "not an RLlib"]),
    "supervised export with other layers": (
        lambda d: {**rl_spec(d), "model": {"name": "mlp", "layers": 1, "units": 16,
                                           "init_from": str(balancing_export(d / "sup", units=8))}},
        ["model.init_from", "shape mismatch", "backbone.0.0.weight (8, 4) != (16, 4)"]),
    "supervised export with other names": (
        lambda d: {**rl_spec(d), "model": {"name": "mlp", "layers": 1, "units": 16,
                                           "init_from": str(balancing_export(d / "sup"))}},
        ["model.init_from", "missing ['backbone.0.0.bias', 'backbone.0.0.weight']"]),
    "supervised export for other inputs": (
        lambda d: {**rl_spec(d), "model": {"name": "mlp", "layers": 1, "units": 16,
                                           "init_from": str(balancing_export(d / "sup", units=16, in_features=8))}},
        ["model.init_from", "8 inputs", "4 observation features"]),
    "rl with a data section": (lambda d: {**rl_spec(d), "data": {"path": "x.parquet", "features": ["x"]}},
                               ["data: method rl learns from its environment"]),
    "start pull from scratch": (lambda d: rl_spec(d, bc_weight=0.5), ["method.bc_weight", "pretrained start"]),
    "guide without a target": (lambda d: rl_spec(d, guide_steps=10, init_checkpoint="b"),
                               ["method.guide_steps", "target_return"]),
    "two pretrained starts": (lambda d: rl_spec(d, demos="a.parquet", init_checkpoint="b"),
                              ["method.init_checkpoint: give one pretrained start"]),
    "supervised method without data": (lambda d: {"model": {"name": "mlp"}, "run": {"name": "x"}},
                                       ["data: required"]),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_exits_2_naming_the_problem(case, tmp_path, capsys, no_ray):
    make, fragments = BAD[case]
    spec = write_spec(tmp_path / "job.yaml", make(tmp_path))
    code, out, err = run_cli(["run", str(spec)], capsys)
    assert code == 2, err
    assert err.startswith("ftray: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("env", ["os:system", "collections:OrderedDict"])
def test_env_that_is_not_an_env_class_is_refused_without_being_called(env, command, tmp_path, capsys, no_ray):
    """`module:Class` names a gymnasium.Env subclass: a function (`os:system`, whose kwargs would
    be a shell command) or another class exits 2 and nothing it names is called."""
    marker = tmp_path / "called"
    kwargs = {"command": f"touch {marker}"} if env == "os:system" else {"called": str(marker)}
    spec = write_spec(tmp_path / "job.yaml", rl_spec(tmp_path, env=env, env_kwargs=kwargs))
    code, _, err = run_cli([command, str(spec)], capsys)
    assert code == 2 and "not a gymnasium.Env class" in err and env in err, err
    assert not marker.exists()


def test_collect_refuses_a_policy_of_other_spaces(tmp_path, capsys):
    module = rllib_module_dir(tmp_path / "ck", rl_spec(tmp_path), obs=gym.spaces.Box(-1, 1, (3,)))
    code, _, err = run_cli(["rl", "collect", str(module), "--env", "CartPole-v1", "--out",
                            str(tmp_path / "d.parquet")], capsys)
    assert code == 2 and "do not match" in err and not (tmp_path / "d.parquet").exists()


# ------------------------------------------------------------------------------------ runs
def test_supervised_start_then_resume_collect_and_transfer(ray_session, tmp_path, capsys, monkeypatch):
    """A supervised export that balances the pole is the policy's start (its greedy evaluation is
    the maximum, 500, where random weights score ~10-50); the run resumes; its policy collects
    demonstrations RLlib's reader accepts; its checkpoint starts a run on a changed environment."""
    sup = balancing_export(tmp_path / "supervised")
    spec = rl_spec(tmp_path, "from_supervised", stop={"iterations": 1})
    spec["model"] = {"name": "mlp", "layers": 0, "init_from": str(sup)}
    path = write_spec(tmp_path / "job.yaml", spec)
    code, out, err = run_cli(["run", str(path)], capsys)
    assert code == 0, err[-3000:]
    run_dir = Path(out.strip().splitlines()[-1])
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["status"] == "succeeded" and s["rl"]["start"] == "supervised"
    assert s["rl"]["pretrained_return"] == 500.0
    assert s["rl"]["env_steps"] == 200 and s["rl"]["iterations"] == 1
    assert set(s["metrics"]) == {"episode_return_mean"} and s["rl"]["steps_to_target"] is None
    assert Path(s["checkpoint"]).name == "checkpoint_000001" and (run_dir / "curves.png").is_file()
    exported = MLP.load(run_dir / "model")  # the policy is an ordinary ftray mlp export
    assert exported.info.in_features == 4 and exported.info.classes == [0, 1]

    # Re-running with a later stop resumes at iteration 2 (the start is not evaluated again).
    code, out, err = run_cli(["run", str(path), "--set", "method.stop.iterations=2",
                              "--set", "run.keep_checkpoints=1"], capsys)
    assert code == 0, err[-3000:]
    s2 = json.loads((run_dir / "summary.json").read_text())
    assert s2["resumes"] == [{"iteration": 1, "env_steps": 200}]
    assert s2["rl"]["iterations"] == 2 and s2["rl"]["env_steps"] == 400
    assert s2["history"][0] == s["history"][0]
    # keep_checkpoints: 1 dropped the first iteration's checkpoint once the second was finished.
    assert not (run_dir / "checkpoint_000001").exists() and len(list(run_dir.glob("checkpoint_*"))) == 1

    # The same stop again: nothing left to train. It returns before Ray would start, the folder as it was.
    def no_ray(*a, **k):
        raise AssertionError("a finished rl run must not start Ray")
    monkeypatch.setattr(ray_context, "use_ray", no_ray)
    done = (run_dir / "summary.json").read_bytes(), sorted(p.name for p in run_dir.glob("checkpoint_*"))
    code, out, err = run_cli(["run", str(path), "--set", "method.stop.iterations=2",
                              "--set", "run.keep_checkpoints=1"], capsys)
    assert code == 0, err[-3000:]
    assert "from_supervised: nothing left to train (2 iterations, 400 environment steps done" in out
    assert out.strip().splitlines()[-1] == str(run_dir)
    assert ((run_dir / "summary.json").read_bytes(), sorted(p.name for p in run_dir.glob("checkpoint_*"))) == done
    monkeypatch.undo()

    demos = tmp_path / "demos.parquet"
    code, out, err = run_cli(["rl", "collect", str(run_dir), "--episodes", "2", "--out", str(demos)], capsys)
    assert code == 0, err
    table = pq.read_table(demos)
    assert set(rl.DEMO_COLUMNS) <= set(table.column_names)
    assert table["terminateds"].to_pylist().count(True) + table["truncateds"].to_pylist().count(True) == 2
    assert rl.check_demos(str(demos), OBS, ACT) == table.num_rows

    variant = rl_spec(tmp_path, "transfer", env="ftray.rl:CartPoleVariant", env_kwargs={"pole_length": 1.0},
                      init_checkpoint=str(run_dir))
    variant["model"] = {"name": "mlp", "layers": 0}
    code, out, err = run_cli(["run", str(write_spec(tmp_path / "t.yaml", variant))], capsys)
    assert code == 0, err[-3000:]
    t = json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())
    # The transfer starts from the first run's policy (the balancing one: the warm-up held it through
    # both iterations), which still balances the longer pole (measured: 500).
    assert t["rl"]["start"] == "checkpoint" and t["rl"]["pretrained_return"] == start_return(latest_module(run_dir), t)
    assert t["rl"]["pretrained_return"] == 500.0


def test_job_rl_finetune_then_rl_transfer(ray_session, tmp_path, capsys, monkeypatch):
    """jobs/rl_finetune.yaml (BC on the shipped demonstrations, then PPO) and jobs/rl_transfer.yaml
    from its checkpoint, on a small budget."""
    monkeypatch.chdir(REPO)
    small = [f"--set=run.storage_path={tmp_path}", "--set=method.env_runners=0", "--set=method.train_batch=200",
             "--set=method.minibatch=100", "--set=method.epochs=2", "--set=method.evaluation_episodes=2",
             "--set=method.stop={iterations: 1}"]
    code, out, err = run_cli(["run", "jobs/rl_finetune.yaml", *small, "--set", "method.bc_iterations=40",
                              "--set", "method.bc_lr=0.01"], capsys)
    assert code == 0, err[-3000:]
    s = json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())
    bc = s["rl"]["bc"]
    assert s["rl"]["start"] == "bc"
    assert bc["rows"] == pq.read_metadata(REPO / "jobs/data/cartpole_weak_demos.parquet").num_rows
    assert bc["last_loss"] < bc["first_loss"] - 0.1  # cloning learned the demonstrator's actions
    # PPO starts from the cloned policy, which balances far longer than random weights (~10-50).
    # BC's data order varies between runs: measured 150.5 (loss 0.69 -> 0.46) and 500 (-> 0.28).
    assert s["rl"]["pretrained_return"] == start_return(tmp_path / "rl_finetune" / "bc" / rl.MODULE_PATH, s)
    assert s["rl"]["pretrained_return"] >= 80
    code, out, err = run_cli(["run", "jobs/rl_transfer.yaml", *small,
                              "--set", f"method.init_checkpoint={tmp_path}/rl_finetune"], capsys)
    assert code == 0, err[-3000:]
    t = json.loads((Path(out.strip().splitlines()[-1]) / "summary.json").read_text())
    assert t["rl"]["start"] == "checkpoint" and t["status"] == "succeeded"
    assert t["spec"]["method"]["env_kwargs"] == {"pole_length": 1.0, "force_mag": 5.0}
    # rl_transfer starts from rl_finetune's last policy, scored on the variant (measured 201.5 and 166).
    assert t["rl"]["pretrained_return"] == start_return(latest_module(tmp_path / "rl_finetune"), t)


def test_sweep_of_rl_trials_writes_the_sweep_folder(ray_session, tmp_path, capsys):
    spec = rl_spec(tmp_path, name="rl_sweep", stop={"iterations": 3})
    spec["tune"] = {"metric": "episode_return_mean", "mode": "max", "num_samples": 3, "max_concurrent": 1,
                    "searcher": "random", "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
                    "space": {"method.lr": {"loguniform": [0.0001, 0.01]}, "model.units": {"choice": [8, 16]}}}
    code, out, err = run_cli(["sweep", str(write_spec(tmp_path / "sweep.yaml", spec))], capsys)
    assert code == 0, err[-2000:]
    folder = tmp_path / "rl_sweep"
    s = json.loads((folder / "summary.json").read_text())
    best = s["best"]["metrics"]
    assert s["trials"] == 3 and s["errors"] == 0
    assert (folder / "best.yaml").is_file() and (folder / "curves.png").stat().st_size > 0
    import pandas as pd
    rows = pd.read_csv(folder / "trials.csv").to_dict("records")
    # The best trial is the one with the highest last training return, and its env steps are its
    # iterations' 200-step batches.
    (top,) = [r for r in rows if r["trial_id"] == s["best"]["trial_id"]]
    assert best["episode_return_mean"] == top["episode_return_mean"] == max(r["episode_return_mean"] for r in rows)
    assert best["env_steps"] == 200 * top["iterations"], (best, top)
    # A trial ASHA stopped ran fewer than its 3 iterations and says so; the others ran all 3.
    for row in rows:
        trial = json.loads((folder / "trials" / row["trial_id"] / "summary.json").read_text())
        assert (row["status"] == "stopped") == (row["iterations"] < 3), row
        assert trial["status"] == ("stopped" if row["status"] == "stopped" else "succeeded"), trial["status"]
        assert trial["rl"]["iterations"] == row["iterations"] and trial["history"]
    assert s["stopped_early"] == sum(r["status"] == "stopped" for r in rows)
    assert s["trial_epochs"] == sum(r["iterations"] for r in rows)


def test_critic_warmup_holds_the_policy_then_lets_it_learn(ray_session, tmp_path, capsys):
    """During `critic_warmup_steps` only the value network learns: the pretrained policy comes out
    of an iteration unchanged; without warm-up the same iteration moves it."""
    sup = balancing_export(tmp_path / "supervised")
    start = MLP.load(sup / "model").state_dict()
    for warm, held in ((1000, True), (0, False)):
        spec = rl_spec(tmp_path, f"warm{warm}", critic_warmup_steps=warm, lr=0.01)
        spec["model"] = {"name": "mlp", "layers": 0, "init_from": str(sup)}
        code, out, err = run_cli(["run", str(write_spec(tmp_path / f"warm{warm}.yaml", spec))], capsys)
        assert code == 0, err[-3000:]
        after = MLP.load(Path(out.strip().splitlines()[-1]) / "model").state_dict()
        assert all(torch.equal(after[k], start[k]) for k in start) == held, (warm, after, start)
