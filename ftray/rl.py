"""`ftray run` for `method.name: rl`: fine-tuning a policy with RLlib's PPO (`ftray.runner.RLRunner`
hands it runs, and the trials of an rl sweep, which `ftray.sweep` builds like every other).

Read top to bottom: the driver checks everything it can before Ray starts (the environment and its
spaces, the pretrained start's parameter names and shapes, the demonstration columns); then it
sets up the start (behaviour cloning on offline demonstrations with RLlib's BC, an earlier RLlib
checkpoint, or an ftray supervised export), scores it with greedy evaluation episodes, fits PPO
(or SAC, `method.algorithm: sac`, on continuous actions: `ftray.rl_sac`) until a stop condition,
checkpoints every iteration, scores the result again and writes the run folder (`summary.json`, `model/`, `curves.png`). `ftray rl collect` rolls a checkpointed policy
out and writes demonstrations in the Parquet layout that RLlib's offline API (and so
`method.demos`) reads.

Actions are Discrete or a flat Box of floats; what differs between them (the policy's outputs,
greedy actions, demonstration checks, the pull toward the start) is `ftray.rl_spaces`.

The policy network is `model` (an `mlp`: layers, units, activation, as in supervised jobs) and
its parameters carry the supervised names (`pi.backbone.0.0.weight`, `pi.classifier.weight`), so a
supervised export loads into it and its policy is exported as an ordinary ftray `mlp` model.
"""

from __future__ import annotations

import importlib
import json
import math
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.classic_control.cartpole import CartPoleEnv
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis.value_function_api import ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME

from ftray import rl_sac, rl_spaces
from ftray.models.base import ModelInfo, param_mismatch
from ftray.models.mlp import MLP, WEIGHTS
from ftray.redact import redact
from ftray.spec import JobSpec, MLPModel, RLMethod, SpecError

ENV_NAME = "ftray_env"  # the one name registered with RLlib; env_config says which environment
MODULE_PATH = "learner_group/learner/rl_module/default_policy"  # the policy inside an algorithm checkpoint
PROGRESS = "ftray_progress.json"  # ftray's record inside each checkpoint folder
BC_RECORD = "ftray_bc.json"  # behaviour cloning's losses, inside its checkpoint folder
DEMO_COLUMNS = ("obs", "new_obs", "actions", "rewards", "terminateds")  # what RLlib's offline reader needs
METRIC = "episode_return_mean"


# ============================================================================= environments
def make_env(env: str, env_kwargs: dict):
    """A Gymnasium id through `gymnasium.make`, or `module:Class` instantiated with the kwargs."""
    if ":" in env:
        return env_class(env)(**env_kwargs)
    return gym.make(env, **env_kwargs)


def env_class(env: str) -> type:
    """The class `module:Class` names, refused unless it is a `gymnasium.Env` subclass.

    Importing the module runs the user's code (so a spec is trusted like code), but nothing it names
    is called before this check: `os:system` with `env_kwargs: {command: ...}` would otherwise be a
    shell command run by `ftray validate`.
    """
    module_name, _, cls_name = env.partition(":")
    obj = getattr(importlib.import_module(module_name), cls_name)
    if not (isinstance(obj, type) and issubclass(obj, gym.Env)):
        raise SpecError(f"method.env: {env} is a {type(obj).__name__}, not a gymnasium.Env class; "
                        "module:Class must name a class deriving from gymnasium.Env")
    return obj


def _env_from_config(config) -> object:
    """RLlib's env creator (runs in every env runner): the config carries the spec's env and kwargs
    (and whether a guide policy plays the start of each episode, `method.guide_steps`)."""
    env = make_env(config["env"], dict(config["env_kwargs"]))
    return GuidedEnv(env) if config.get("guided") else env


class GuidedEnv(gym.Wrapper):
    """JSRL's guide (Uchendu et al. 2023): a frozen policy acts greedily for the first `steps` steps
    of every episode, inside `reset`, and the learner's episode starts from where the guide left off.
    The learner never sees the guide's
    steps, so PPO's batches hold only its own actions; an episode that ends within the guide's steps
    starts again with the learner from its first step. The driver sets the guide and shrinks `steps`
    between iterations (`set_guide`, through every env runner)."""

    def __init__(self, env):
        super().__init__(env)
        self.guide, self.guide_dir, self.steps, self.guide_actions = None, None, 0, 0

    def set_guide(self, guide_dir: str | None, steps: int) -> None:
        if guide_dir != self.guide_dir:
            self.guide = RLModule.from_checkpoint(guide_dir).eval() if guide_dir else None
            self.guide_dir = guide_dir
        self.steps = steps if self.guide is not None else 0

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        for _ in range(self.steps):
            obs, _, terminated, truncated, info = self.env.step(greedy_action(self.guide, obs, self.action_space))
            self.guide_actions += 1
            if terminated or truncated:  # the guide's part ended the episode: the learner plays another whole
                return self.env.reset()
        return obs, info


def check_env(method: RLMethod):
    """Build the environment once in the driver; returns (observation space, action space)."""
    try:
        env = make_env(method.env, method.env_kwargs)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound,
            gym.error.UnregisteredEnv) as e:
        raise SpecError(f"method.env: unknown Gymnasium environment {method.env!r} ({e}); give a "
                        "registered id or module:Class") from None
    except ImportError as e:
        raise SpecError(f"method.env: cannot import {method.env.partition(':')[0]!r} ({e})") from None
    except AttributeError as e:
        raise SpecError(f"method.env: {method.env!r}: {e}") from None
    except TypeError as e:  # a keyword the constructor does not take
        raise SpecError(f"method.env_kwargs: {method.env} does not accept {method.env_kwargs} ({e})") from None
    if not isinstance(env, gym.Env):
        raise SpecError(f"method.env: {method.env} made a {type(env).__name__}, not a gymnasium.Env")
    obs, act = env.observation_space, env.action_space
    env.close()
    rl_spaces.check_spaces(method.env, method.algorithm, obs, act, method.pretrain if method.demos else None)
    return obs, act


class CartPoleVariant(CartPoleEnv):
    """CartPole with changed physics, for transfer between environment variants.

    `method.env: ftray.rl:CartPoleVariant` with `env_kwargs` such as `pole_length` (half length,
    0.5 in CartPole-v1), `gravity`, `masscart`, `masspole`, `force_mag`. Episodes are truncated
    after `max_steps` steps, as CartPole-v1's registration does for the plain class."""

    def __init__(self, pole_length: float = 0.5, gravity: float = 9.8, masscart: float = 1.0,
                 masspole: float = 0.1, force_mag: float = 10.0, max_steps: int = 500):
        super().__init__()
        self.length, self.gravity, self.masscart, self.masspole, self.force_mag = (
            pole_length, gravity, masscart, masspole, force_mag)
        self.total_mass = masspole + masscart
        self.polemass_length = masspole * pole_length
        self.max_steps, self._steps = max_steps, 0

    def reset(self, *, seed=None, options=None):
        self._steps = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._steps += 1
        return obs, reward, terminated, truncated or self._steps >= self.max_steps, info


# =================================================================================== the policy
class FtrayPolicy(TorchRLModule, ValueFunctionAPI):
    """PPO's policy and value networks: two ftray `mlp`s over the observation vector (the policy's
    outputs: one logit per Discrete action, or a Gaussian's means and log-stds, `ftray.rl_spaces`).

    `model_config` is the spec's `model` section (layers, units, activation). The value network
    is separate (no shared layers) so that a cloned or supervised policy keeps its weights while
    the value network learns from scratch."""

    def setup(self):
        # RLlib adds its own default keys to model_config: take the structure's alone.
        structure = MLPModel(**{k: self.model_config[k] for k in ("layers", "units", "activation")})
        width = int(self.observation_space.shape[0])
        self.pi = MLP(structure, rl_spaces.policy_info(width, self.action_space))
        self.value = MLP(structure, ModelInfo("regression", width))

    def _forward(self, batch, **kwargs):
        return {Columns.ACTION_DIST_INPUTS: self.pi({"x": batch[Columns.OBS].float()})}

    def compute_values(self, batch, embeddings=None):
        return self.value({"x": batch[Columns.OBS].float()})


def start_pull_weight(env_steps: int, weight: float, decay_steps: int) -> float:
    """`method.bc_weight` after `env_steps` sampled env steps: linear from `weight` to 0 at `decay_steps`."""
    return weight * max(0.0, 1.0 - env_steps / decay_steps)


class FtrayPPOLearner(PPOTorchLearner):
    """PPO's learner with the protections of a pretrained start.

    Critic warm-up: two optimizers, one per network; the policy's learning rate is 0 for the first
    `critic_warmup_steps` env steps (a schedule on RLlib's lifetime step counter), the value
    network's is `lr` from the start.

    Pull toward the start (`bc_weight`, DAPG-style): PPO's loss plus weight x KL(start || policy)
    averaged over the train batch's observations, where `start` is the frozen start policy read
    from its module folder. A KL to the start policy rather than the demonstrations' negative
    log-likelihood because it needs no data in the learner and so protects every kind of start
    (cloned, checkpoint, supervised export) the same way; on the demonstrators' own states the two
    agree up to a constant."""

    def before_gradient_based_update(self, *, timesteps):
        super().before_gradient_based_update(timesteps=timesteps)
        if not hasattr(self, "env_steps"):  # env steps sampled before this batch (a resumed run's too)
            lifetime = int(timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))
            self.env_steps = max(0, lifetime - self.config.total_train_batch_size)

    def after_gradient_based_update(self, *, timesteps):
        super().after_gradient_based_update(timesteps=timesteps)
        self.env_steps = int(timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0))

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        loss = super().compute_loss_for_module(module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)
        cfg = config.learner_config_dict
        weight = start_pull_weight(self.env_steps, cfg.get("bc_weight", 0.0),
                                   cfg.get("bc_decay_steps", 1))
        self.metrics.log_value((module_id, "start_pull_weight"), weight, window=1)
        if weight > 0:
            with torch.no_grad():
                start = self._start_policy(module_id, cfg["start_dir"])({"x": batch[Columns.OBS].float()})
            kl = rl_spaces.start_kl(fwd_out[Columns.ACTION_DIST_INPUTS], start, self._module[module_id].action_space)
            if Columns.LOSS_MASK in batch:
                kl = kl[batch[Columns.LOSS_MASK]]
            self.metrics.log_value((module_id, "start_kl"), kl.mean().detach(), window=1)
            loss = loss + weight * kl.mean()
        return loss

    def _start_policy(self, module_id, start_dir: str):
        if not hasattr(self, "_start"):
            device = next(self._module[module_id].parameters()).device
            self._start = RLModule.from_checkpoint(start_dir).pi.to(device).eval().requires_grad_(False)
        return self._start

    def configure_optimizers_for_module(self, module_id, config=None):
        module = self._module[module_id]
        warm = config.learner_config_dict.get("critic_warmup_steps", 0)
        policy_lr = [[0, 0.0], [warm, 0.0], [warm + 1, config.lr]] if warm else config.lr
        for name, part, lr in (("policy", module.pi, policy_lr), ("value", module.value, config.lr)):
            params = self.get_parameters(part)
            self.register_optimizer(module_id=module_id, optimizer_name=name, optimizer=torch.optim.Adam(params),
                                    params=params, lr_or_lr_schedule=lr)


def critic_warmup_steps(spec: JobSpec, plan: "RLPlan") -> int:
    m = spec.method
    if m.critic_warmup_steps is not None:
        return m.critic_warmup_steps
    return 2 * m.train_batch if plan.start != "scratch" else 0


def module_spec(spec: JobSpec, obs_space=None, act_space=None) -> RLModuleSpec:
    """The policy's module: ftray's `FtrayPolicy` for PPO, RLlib's default SAC module for SAC."""
    if spec.method.algorithm == "sac":
        return rl_sac.module_spec(spec, obs_space, act_space)
    structure = spec.model.model_dump(include={"layers", "units", "activation"})
    return RLModuleSpec(module_class=FtrayPolicy, observation_space=obs_space, action_space=act_space,
                        model_config=structure)


# ==================================================================== pretrained starts, checked
_spaces_text = rl_spaces.spaces_text


def policy_module_dir(source: str, key: str) -> Path:
    """The RLModule folder inside an ftray rl run folder (latest checkpoint), an RLlib algorithm
    checkpoint, or the module folder itself."""
    p = Path(source).expanduser()
    run_ckpt = latest_checkpoint(p)
    for cand in ([run_ckpt / MODULE_PATH] if run_ckpt else []) + [p / MODULE_PATH, p]:
        if (cand / "class_and_ctor_args.pkl").is_file() and any(cand.glob("module_state.*")):
            return cand
    raise SpecError(f"{key}: {source}: not an RLlib checkpoint (no {MODULE_PATH} with module_state in it, "
                    "and no checkpoint_* of an ftray rl run)")


def check_checkpoint_start(spec: JobSpec, source: str, obs, act, key: str = "method.init_checkpoint") -> Path:
    """An earlier RLlib checkpoint must hold this spec's policy for this environment's spaces."""
    d = policy_module_dir(source, key)
    try:
        saved = RLModule.from_checkpoint(str(d))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is bad input here
        raise SpecError(f"{key}: {d}: cannot load the RLlib module ({type(e).__name__}: {e})") from None
    s_obs, s_act = saved.observation_space, saved.action_space
    if getattr(s_obs, "shape", None) != obs.shape or not rl_spaces.same_action_space(s_act, act):
        raise SpecError(f"{key}: {source}: the pretrained policy's spaces ({s_obs}, {s_act}) do not match "
                        f"{spec.method.env}'s ({_spaces_text(obs, act)})")
    want = {k: tuple(v.shape) for k, v in module_spec(spec, obs, act).build().state_dict().items()}
    mismatch = param_mismatch(want, {k: tuple(v.shape) for k, v in saved.state_dict().items()})
    if mismatch:
        raise SpecError(f"{key}: {source}: {mismatch}")
    return d


def check_supervised_start(spec: JobSpec, obs, act) -> Path:
    """A supervised ftray `mlp` export loads into the policy network: its inputs must be the
    observation features, its classes the actions, and its layers the spec's."""
    from safetensors import safe_open

    from ftray.models import export_config, exported_model_dir
    if rl_spaces.is_box(act):
        raise SpecError(f"model.init_from: a supervised export starts a policy over Discrete actions (its classes "
                        f"are the actions); {spec.method.env}'s actions are continuous ({act}): start from "
                        "method.demos or method.init_checkpoint")
    d = exported_model_dir(spec.model.init_from, "model.init_from")
    cfg = export_config(d, "model.init_from")
    if cfg["builder"] != "mlp":
        raise SpecError(f"model.init_from: {spec.model.init_from} is a {cfg['builder']!r} model; a policy "
                        "starts from an mlp")
    info = ModelInfo(**cfg["info"])
    if info.task != "classification" or info.in_features != obs.shape[0] or info.num_outputs != act.n:
        raise SpecError(f"model.init_from: {spec.model.init_from}: a {info.task} model with "
                        f"{info.in_features} inputs and {info.num_outputs} outputs does not match "
                        f"{spec.method.env} ({_spaces_text(obs, act)})")
    with safe_open(str(d / WEIGHTS), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    pi = module_spec(spec, obs, act).build().pi
    mismatch = param_mismatch({k: tuple(v.shape) for k, v in pi.state_dict().items()}, saved)
    if mismatch:
        raise SpecError(f"model.init_from: {spec.model.init_from}: {mismatch}")
    return d


def check_demos(path: str, obs, act) -> int:
    """Demonstrations need RLlib's columns, observations of the env's width and valid actions.
    Returns the number of rows."""
    import pyarrow.dataset as pads
    key = "method.demos"
    if "://" not in path and not Path(path).exists():
        raise SpecError(f"{key}: {path}: no such file or folder")
    try:
        ds = pads.dataset(path, format="parquet")
        names = set(ds.schema.names)
    except (OSError, ValueError) as e:  # missing file, not Parquet
        raise SpecError(f"{key}: {path}: cannot read as Parquet ({e})") from None
    missing = [c for c in DEMO_COLUMNS if c not in names]
    if missing:
        raise SpecError(f"{key}: {path}: no column {missing[0]!r} (RLlib's offline layout needs "
                        f"{', '.join(DEMO_COLUMNS)}; `ftray rl collect` writes it)")
    table = ds.to_table(columns=["obs", "new_obs", "actions"])
    if table.num_rows == 0:
        raise SpecError(f"{key}: {path}: no rows")
    for col in ("obs", "new_obs"):
        widths = [len(v) if isinstance(v, (list, tuple)) else None for v in table[col].to_pylist()]
        bad = next((i for i, w in enumerate(widths) if w != obs.shape[0]), None)
        if bad is not None:
            raise SpecError(f"{key}: {path}: row {bad}: {col} has {widths[bad]} values, the environment's "
                            f"observations have {obs.shape[0]}")
    rl_spaces.check_demo_actions(table["actions"].to_pylist(), act, f"{key}: {path}")
    return table.num_rows


@dataclass
class RLPlan:
    """What the checks before Ray found: the spaces and the checked pretrained start."""
    obs_space: object
    act_space: object
    start: str                  # scratch | bc | marwil | cql (method.pretrain on demos) | checkpoint | supervised
    start_path: Path | None     # the module folder (checkpoint) or export folder (supervised)
    demo_rows: int = 0


def prepare(spec: JobSpec, address: str | None = None, devices: bool = True) -> RLPlan:
    """All checks that need no Ray: environment, spaces, pretrained start, devices. Raises SpecError."""
    from ftray import ray_context
    m = spec.method
    obs, act = check_env(m)
    plan = RLPlan(obs, act, "scratch", None)
    if m.demos:
        plan.start, plan.demo_rows = m.pretrain, check_demos(m.demos, obs, act)
    elif m.init_checkpoint:
        plan.start, plan.start_path = "checkpoint", check_checkpoint_start(spec, m.init_checkpoint, obs, act)
    elif spec.model.init_from:
        plan.start, plan.start_path = "supervised", check_supervised_start(spec, obs, act)
    if m.algorithm == "sac":
        rl_sac.check_module(spec, obs, act)
    if "://" in spec.run.storage_path:
        raise SpecError("run.storage_path: rl runs write to a local (or mounted shared) folder, not a URI")
    if devices:
        ray_context.check_target(spec, address)
    return plan


# =============================================================================== evaluation
def rollouts(module, env, episodes: int, seed: int, greedy: bool = True) -> tuple[list[float], list[dict]]:
    """Play `episodes` episodes (seeded resets); returns their returns and every step as a row of
    RLlib's offline columns."""
    returns, rows = [], []
    rng = np.random.default_rng(seed)
    module.eval()
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, t = 0.0, 0
        while True:
            action = greedy_action(module, obs, env.action_space, None if greedy else rng)
            new_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append({"eps_id": f"{seed}-{ep}", "t": t, "obs": np.asarray(obs, np.float32).tolist(),
                         "new_obs": np.asarray(new_obs, np.float32).tolist(), "actions": rl_spaces.demo_value(action),
                         "rewards": float(reward), "terminateds": bool(terminated), "truncateds": bool(truncated)})
            total, t, obs = total + float(reward), t + 1, new_obs
            if terminated or truncated:
                break
        returns.append(total)
    return returns, rows


def greedy_action(module, obs, act, rng: np.random.Generator | None = None):
    """The module's action for one observation: greedy, or sampled with `rng` (`ftray.rl_spaces`)."""
    with torch.no_grad():
        inputs = module.forward_inference({Columns.OBS: torch.as_tensor(np.asarray(obs, np.float32)[None])})[
            Columns.ACTION_DIST_INPUTS][0]
    return rl_spaces.env_action(module, inputs, act, rng)


def evaluate(module, spec: JobSpec) -> float:
    """Mean return of greedy episodes on seeds that training never resets to."""
    return float(np.mean(_greedy_returns(module, spec, spec.method.evaluation_episodes, 1_000_000)))


def final_evaluation(module, spec: JobSpec) -> dict:
    """The final policy's greedy return over `method.final_episodes` fresh episodes, on seeds that
    neither training nor the per-iteration evaluation (which triggered the stop, and so is biased
    upwards) used: mean, spread and range."""
    returns = _greedy_returns(module, spec, spec.method.final_episodes, 3_000_000)
    return {"episodes": len(returns), "mean": float(np.mean(returns)), "std": float(np.std(returns)),
            "min": float(np.min(returns)), "max": float(np.max(returns))}


def _greedy_returns(module, spec: JobSpec, episodes: int, seed_base: int) -> list[float]:
    env = make_env(spec.method.env, spec.method.env_kwargs)
    try:
        return rollouts(module, env, episodes, seed=seed_base + 1000 * spec.run.seed)[0]
    finally:
        env.close()


# =================================================================================== the run
def learners(spec: JobSpec) -> int:
    """Learner actors PPO gets (0: one CPU learner in the driver process)."""
    # One CPU learner runs in the driver process (no actor, no copy of the batch); GPUs and
    # data-parallel learning need learner actors.
    return spec.scaling.num_workers if spec.scaling.use_gpu or spec.scaling.num_workers > 1 else 0


def _common(config, spec: JobSpec, plan: RLPlan):
    n = learners(spec)
    return (config
            .environment(env=ENV_NAME, env_config={"env": spec.method.env, "env_kwargs": spec.method.env_kwargs,
                                                   "guided": spec.method.guide_steps > 0},
                         observation_space=plan.obs_space, action_space=plan.act_space,
                         **_box_actions(spec, plan))
            .learners(num_learners=n, num_gpus_per_learner=1 if spec.scaling.use_gpu else 0)
            .rl_module(rl_module_spec=module_spec(spec))
            .debugging(seed=spec.run.seed))


def algo_config(spec: JobSpec, plan: RLPlan, start_dir: Path | None = None):
    if spec.method.algorithm == "sac":
        from ray.rllib.algorithms.sac import SACConfig
        return rl_sac.sac_config(_common(SACConfig(), spec, plan), spec)
    return ppo_config(spec, plan, start_dir)


def ppo_config(spec: JobSpec, plan: RLPlan, start_dir: Path | None = None):
    from ray.rllib.algorithms.ppo import PPOConfig
    m = spec.method
    return (_common(PPOConfig(), spec, plan)
            .env_runners(num_env_runners=m.env_runners)
            .training(lr=m.lr, gamma=m.gamma, lambda_=m.gae_lambda, clip_param=m.clip,
                      entropy_coeff=m.entropy_coeff, num_epochs=m.epochs, minibatch_size=m.minibatch,
                      train_batch_size_per_learner=m.train_batch // max(1, learners(spec)),
                      learner_class=FtrayPPOLearner,
                      learner_config_dict={"critic_warmup_steps": critic_warmup_steps(spec, plan),
                                           "bc_weight": m.bc_weight, "bc_decay_steps": m.bc_decay_steps,
                                           "start_dir": None if start_dir is None else str(start_dir)}))


def _box_actions(spec: JobSpec, plan: RLPlan) -> dict:
    """PPO and BC act in the environment's own units on Box actions (clipped to the bounds, not
    normalised), so demonstrations clone as they are and a cloned policy means the same in PPO.
    SAC keeps RLlib's default: its tanh-squashed actions in [-1, 1] rescaled to the bounds."""
    if rl_spaces.is_box(plan.act_space) and spec.method.algorithm == "ppo":
        return {"normalize_actions": False, "clip_actions": True}
    return {}


def pretrain_config(spec: JobSpec, plan: RLPlan):
    """The offline algorithm of `method.pretrain` on the demonstrations, one update of `bc_batch`
    steps per iteration: RLlib's BC or MARWIL on PPO's module (MARWIL trains its value network too),
    or RLlib's CQL on SAC's networks (`ftray.rl_sac`)."""
    m = spec.method
    if plan.start == "cql":
        from ray.rllib.algorithms.cql import CQLConfig
        return rl_sac.cql_config(_common(CQLConfig(rl_sac.cql_algorithm()), spec, plan), spec, plan.obs_space,
                                 plan.act_space)
    if plan.start == "marwil":
        from ray.rllib.algorithms.marwil import MARWILConfig
        config = _common(MARWILConfig(), spec, plan).training(beta=m.marwil_beta, gamma=m.gamma)
    else:
        from ray.rllib.algorithms.bc import BCConfig
        config = _common(BCConfig(), spec, plan)
    return (config
            .env_runners(num_env_runners=0)  # offline data; ftray evaluates in the driver
            .offline_data(input_=[m.demos], dataset_num_iters_per_learner=1)
            .training(lr=m.bc_lr, train_batch_size_per_learner=m.bc_batch))


# the losses each pretraining records, first and last (the policy's, and MARWIL's value or CQL's Q loss)
PRETRAIN_LOSSES = {"bc": ("policy_loss",), "marwil": ("policy_loss", "vf_loss"), "cql": ("policy_loss", "qf_loss")}


def pretrain_offline(spec: JobSpec, plan: RLPlan, out: Path) -> dict:
    """The offline pretraining (`pretrain_config`) on the demonstrations; saves the algorithm to
    `out`. Returns the loss record."""
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    m = spec.method
    algo = pretrain_config(spec, plan).build_algo()
    keys = PRETRAIN_LOSSES[plan.start]
    losses = {k: [] for k in keys}
    for _ in range(m.bc_iterations):
        result = algo.train()["learners"]["default_policy"]
        for k in keys:
            losses[k].append(float(result[k]))
    record = {"algorithm": plan.start, "iterations": m.bc_iterations, "rows": plan.demo_rows,
              "first_loss": losses["policy_loss"][0], "last_loss": losses["policy_loss"][-1]}
    for k in keys[1:]:
        record.update({f"first_{k}": losses[k][0], f"last_{k}": losses[k][-1]})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp))
    algo.stop()
    (tmp / BC_RECORD).write_text(json.dumps(record))
    tmp.rename(out)  # complete or absent: a resume never reads half a BC checkpoint
    return record


def policy_from_algo(algo, spec: JobSpec, plan: RLPlan):
    """A driver-side copy of the learner's current policy module."""
    from ray.rllib.core import COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
    state = algo.learner_group.get_state(components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}")
    module = module_spec(spec, plan.obs_space, plan.act_space).build()
    module.set_state(state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID])
    return module


def start_module_dir(spec: JobSpec, plan: RLPlan, run_dir: Path) -> Path | None:
    """The start policy's module folder (made by `set_up_start`), which PPO restores, the pull
    toward the start (`bc_weight`) reads and the guide (`guide_steps`) plays; None from scratch."""
    if plan.start == "scratch":
        return None
    if spec.method.start_temperature != 1.0:
        return run_dir / "start"
    if plan.start in PRETRAIN_LOSSES:
        return run_dir / plan.start / MODULE_PATH
    return {"checkpoint": plan.start_path, "supervised": run_dir / "pretrained"}[plan.start]


def set_up_start(spec: JobSpec, plan: RLPlan, run_dir: Path, progress: dict) -> None:
    """Write the start's module folder: behaviour cloning, a supervised export's weights, and the
    start's temperature (`start_temperature`)."""
    if plan.start in PRETRAIN_LOSSES:  # bc, marwil or cql on the demonstrations
        bc_dir = run_dir / plan.start
        if not bc_dir.is_dir():  # a re-run after a failure keeps a finished pretraining checkpoint
            pretrain_offline(spec, plan, bc_dir)
        progress["bc"] = json.loads((bc_dir / BC_RECORD).read_text())
        d = bc_dir / MODULE_PATH
    elif plan.start == "checkpoint":
        d = plan.start_path
    else:
        d = _supervised_module_dir(spec, plan, run_dir / "pretrained")
    temperature = spec.method.start_temperature
    if temperature != 1.0:
        module = RLModule.from_checkpoint(str(d))
        # The same greedy actions, a flatter sampling distribution (logits / T, or std x T).
        rl_spaces.apply_temperature(module.pi.classifier, temperature, plan.act_space)
        module.save_to_path(str(run_dir / "start"))


def guide_steps_now(spec: JobSpec, progress: dict) -> int:
    """The guide's k for the next iteration: `guide_steps`, less guide_steps/guide_stages for each
    threshold (evenly spaced from the start's return to the target) the best evaluation has passed."""
    m = spec.method
    if not m.guide_steps:
        return 0
    start, target = progress["pretrained_return"], m.stop.target_return
    best = max((h["eval_return"] for h in progress["history"]), default=-math.inf)
    passed = sum(best >= start + (target - start) * i / m.guide_stages for i in range(1, m.guide_stages + 1))
    return round(m.guide_steps * (1 - passed / m.guide_stages))


def set_guide(algo, guide_dir: Path, steps: int) -> None:
    """Give every env runner's environments (`GuidedEnv`) the guide policy and its k."""
    def apply(runner):
        env = getattr(runner, "env", None)  # the driver's env runner has none when there are remote ones
        if env is not None:
            env.unwrapped.call("set_guide", str(guide_dir), steps)
    algo.env_runner_group.foreach_env_runner(apply)


def _supervised_module_dir(spec: JobSpec, plan: RLPlan, out: Path) -> Path:
    """The policy with the supervised export's weights in `pi` (names checked in `prepare`)."""
    from safetensors.torch import load_file
    module = module_spec(spec, plan.obs_space, plan.act_space).build()
    module.pi.load_state_dict(load_file(str(plan.start_path / WEIGHTS)), strict=True)
    module.save_to_path(str(out))
    return out


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The `checkpoint_*` folder of the highest iteration whose progress record is complete."""
    import pyarrow.fs as pafs

    from ftray import checkpoint
    found = checkpoint.latest(pafs.LocalFileSystem(), str(Path(run_dir).resolve()), PROGRESS, "iteration",
                              manifest=False)
    return Path(found) if found else None


def save_checkpoint(algo, run_dir: Path, progress: dict, keep: int) -> Path:
    """Write the algorithm and the progress record, then drop older checkpoints beyond `keep`.
    The progress record is written last: only a checkpoint that has it counts as finished."""
    d = run_dir / f"checkpoint_{progress['iteration']:06d}"
    shutil.rmtree(d, ignore_errors=True)
    algo.save_to_path(str(d))
    (d / PROGRESS).write_text(json.dumps(progress))
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / PROGRESS).is_file())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return d


def _stopped(spec: JobSpec, progress: dict) -> bool:
    s = spec.method.stop
    return bool((s.iterations and progress["iteration"] >= s.iterations)
                or (s.env_steps and progress["env_steps"] >= s.env_steps)
                or progress["steps_to_target"] is not None)


def fit(spec: JobSpec, plan: RLPlan, run_dir: Path, on_iteration: Callable[[dict, Path], None] | None = None) -> dict:
    """Set up the start (or resume), train PPO until a stop condition, checkpoint every iteration.
    Returns the progress record; `on_iteration(metrics, checkpoint)` sees every iteration."""
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED
    from ray.tune.registry import register_env
    register_env(ENV_NAME, _env_from_config)
    target = spec.method.stop.target_return
    start_dir = start_module_dir(spec, plan, run_dir)
    algo = algo_config(spec, plan, start_dir).build_algo()
    try:
        resume = latest_checkpoint(run_dir)
        if resume:
            algo.restore_from_path(str(resume))
            progress = json.loads((resume / PROGRESS).read_text())
            progress["resumes"].append({"iteration": progress["iteration"], "env_steps": progress["env_steps"]})
        else:
            progress = {"iteration": 0, "env_steps": 0, "steps_to_target": None, "history": [], "resumes": [],
                        "start": plan.start, "bc": None}
            if start_dir:
                set_up_start(spec, plan, run_dir, progress)
                # Restoring the module component also sends the weights to every env runner.
                algo.restore_from_path(str(start_dir), component=MODULE_PATH)
            progress["pretrained_return"] = evaluate(policy_from_algo(algo, spec, plan), spec)
            if target is not None and progress["pretrained_return"] >= target:
                progress["steps_to_target"] = 0  # the start already meets the target: no PPO needed
            print(f"[ftray] start ({plan.start}): evaluation return {progress['pretrained_return']:.1f}", flush=True)

        while not _stopped(spec, progress):
            t0 = time.perf_counter()
            guide = guide_steps_now(spec, progress)
            if spec.method.guide_steps:
                set_guide(algo, start_dir, guide)
            result = algo.train()
            runners = result[ENV_RUNNER_RESULTS]
            progress["iteration"] += 1
            progress["env_steps"] += int(runners.get(NUM_ENV_STEPS_SAMPLED, 0))
            ret = runners.get(METRIC)
            ret = None if ret is None or math.isnan(ret) else float(ret)
            metrics = {"iteration": progress["iteration"], "env_steps": progress["env_steps"], METRIC: ret}
            if spec.method.guide_steps:
                metrics["guide_steps"] = guide
            if spec.method.bc_weight:
                metrics["start_pull_weight"] = float(result["learners"]["default_policy"]["start_pull_weight"])
            if target is not None:
                # The target is judged by greedy evaluation episodes, not by RLlib's training-return
                # window: that window spans the last 100 episodes and so lags the policy by many
                # iterations, and its episodes sample actions.
                metrics["eval_return"] = evaluate(policy_from_algo(algo, spec, plan), spec)
                if metrics["eval_return"] >= target:
                    progress["steps_to_target"] = progress["env_steps"]
            metrics["iteration_s"] = round(time.perf_counter() - t0, 3)
            progress["history"].append(metrics)
            ckpt = save_checkpoint(algo, run_dir, progress, spec.run.keep_checkpoints)
            evaluated = f"  evaluation {metrics['eval_return']:.1f}" if "eval_return" in metrics else ""
            print(f"[ftray] iteration {metrics['iteration']}  env_steps {metrics['env_steps']}  training return "
                  f"{ret if ret is None else round(ret, 1)}{evaluated}  {metrics['iteration_s']:.1f}s", flush=True)
            if on_iteration:
                on_iteration(metrics, ckpt)
        if latest_checkpoint(run_dir) is None:  # the start met the target: its policy is the result
            ckpt = save_checkpoint(algo, run_dir, progress, spec.run.keep_checkpoints)
            if on_iteration:  # a sweep's trial reports once: the start's evaluation return
                on_iteration({"iteration": 0, "env_steps": 0, METRIC: progress["pretrained_return"],
                              "eval_return": progress["pretrained_return"]}, ckpt)
        progress["final"] = final_evaluation(policy_from_algo(algo, spec, plan), spec)
        progress["final_return"] = progress["final"]["mean"]
        return progress
    finally:
        algo.stop()


def run(spec: JobSpec, address: str | None = None, plan: RLPlan | None = None) -> tuple[int, str]:
    """Fine-tune the policy and write the run folder. Returns (exit status, run folder)."""
    from pyarrow.fs import LocalFileSystem

    from ftray import ray_context, resume
    t0 = time.perf_counter()
    plan = plan or prepare(spec, address)
    run_dir = Path(spec.run.storage_path) / spec.run.name
    if (ckpt := latest_checkpoint(run_dir)) is not None:  # the resume contract (ftray.resume)
        resume.check_resume(resume.read_spec(LocalFileSystem(), str(ckpt), str(run_dir)), spec, str(ckpt),
                            resume.RL_RESUMABLE)
        if finished_run(spec, run_dir, ckpt):
            return 0, str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ray_context.use_ray(spec, address, cpus=spec.method.env_runners + spec.scaling.num_workers + 2) as ray_mode:
        t_ray = time.perf_counter()
        error, progress = None, {}
        try:
            progress = fit(spec, plan, run_dir)
        except Exception as e:  # noqa: BLE001 - the run failed; record it, keep the checkpoints
            error = "".join(traceback.format_exception_only(type(e), e)).strip()
            ckpt = latest_checkpoint(run_dir)
            progress = json.loads((ckpt / PROGRESS).read_text()) if ckpt else {}
        t_fit = time.perf_counter()
        summary = write_outputs(spec, plan, run_dir, progress, error)
    summary["ray"] = {"mode": ray_mode, "env_runners": spec.method.env_runners, "learners": learners(spec),
                      "use_gpu": spec.scaling.use_gpu}
    summary["timings"] = {"total_s": round(time.perf_counter() - t0, 3), "ray_start_s": round(t_ray - t0, 3),
                          "fit_s": round(t_fit - t_ray, 3)}
    (run_dir / "summary.json").write_text(json.dumps(redact(summary), indent=2))
    return (1 if error else 0), str(run_dir)


def finished_run(spec: JobSpec, run_dir: Path, ckpt: Path) -> bool:
    """True when a re-run has nothing left to train and its folder is complete
    (`resume.nothing_left_to_train`). One killed before its summary goes on through `fit`, which
    restores the checkpoint, trains nothing and writes the summary."""
    from ftray import resume
    progress = json.loads((ckpt / PROGRESS).read_text())
    if not _stopped(spec, progress):
        return False
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}  # killed after its last checkpoint, before its summary
    how = f"{progress['iteration']} iterations, {progress['env_steps']} environment steps done; method.stop is met"
    return resume.nothing_left_to_train(spec, how, summary, str(ckpt))


def write_outputs(spec: JobSpec, plan: RLPlan, run_dir: Path, progress: dict, error: str | None) -> dict:
    """Export the final policy, plot the learning curve; returns the summary (without timings)."""
    ckpt = latest_checkpoint(run_dir)
    model_dir = None
    if ckpt and not error and spec.method.algorithm == "ppo":  # SAC's policy is RLlib's module: its checkpoint
        module = RLModule.from_checkpoint(str(ckpt / MODULE_PATH))
        model_dir = run_dir / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        # An ordinary ftray mlp: observations -> action logits (Box: the Gaussian's means, log-stds).
        module.pi.export(model_dir)
    history = progress.get("history", [])
    if history:
        (run_dir / "curves.png").write_bytes(plot_curve(history, spec.method.stop.target_return))
    params = None
    if ckpt:
        n = sum(v.size for v in _module_state(ckpt).values())
        params = {"total": n, "trainable": n}
    return {
        "status": "failed" if error else "succeeded",
        "error": error,
        "metrics": {METRIC: progress["final_return"]} if "final_return" in progress else {},
        "rl": {"pretrained_return": progress.get("pretrained_return"), "env_steps": progress.get("env_steps", 0),
               "steps_to_target": progress.get("steps_to_target"), "iterations": progress.get("iteration", 0),
               "final": progress.get("final"),
               "start": progress.get("start", plan.start), "bc": progress.get("bc"),
               "spaces": {"observation": str(plan.obs_space), "action": str(plan.act_space)}},
        "params": params,
        "checkpoint": str(ckpt) if ckpt else None,
        "model": str(model_dir) if model_dir else None,
        "resumes": progress.get("resumes", []),
        "history": history,
        "spec": spec.model_dump(mode="json"),
    }


def _module_state(ckpt: Path) -> dict:
    return RLModule.from_checkpoint(str(ckpt / MODULE_PATH)).get_state()


def plot_curve(history: list[dict], target: float | None) -> bytes:
    """The return against environment steps: the greedy evaluation return (what the target is
    judged by) where it was measured, else the training episodes' mean return."""
    from ftray.plots import Panel, curves_png
    key, label = ("eval_return", "greedy evaluation (mean return)") if any(
        "eval_return" in m for m in history) else (METRIC, "training episodes (mean return)")
    pts = [(m["env_steps"], m[key]) for m in history if m.get(key) is not None]
    return curves_png([Panel("environment steps", "episode return", [([p[0] for p in pts], [p[1] for p in pts], label)],
                             level=None if target is None else (target, f"target {target:g}"))])


# =============================================================================== ftray rl collect
def collect(source: str, out: str, episodes: int, seed: int = 0, env: str | None = None,
            env_kwargs: str | None = None, sample: bool = False) -> int:
    """Roll out the policy in `source` and write every step as a Parquet row. No Ray cluster needed."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    if episodes < 1:
        raise SpecError(f"--episodes: {episodes}: give at least 1")
    d = policy_module_dir(source, "source")
    summary_path = Path(source) / "summary.json"
    run_method = json.loads(summary_path.read_text())["spec"]["method"] if summary_path.is_file() else {}
    kwargs = yaml.safe_load(env_kwargs) if env_kwargs else run_method.get("env_kwargs", {})
    if not isinstance(kwargs, dict):
        raise SpecError(f"--env-kwargs: {env_kwargs!r} is not a mapping")
    method = RLMethod(env=env or run_method.get("env") or _no_env(source), env_kwargs=kwargs)
    obs, act = check_env(method)
    module = RLModule.from_checkpoint(str(d))
    if getattr(module.observation_space, "shape", None) != obs.shape or not rl_spaces.same_action_space(
            module.action_space, act):
        raise SpecError(f"source: {source}: the policy's spaces ({module.observation_space}, "
                        f"{module.action_space}) do not match {method.env}'s ({_spaces_text(obs, act)})")
    environment = make_env(method.env, method.env_kwargs)
    returns, rows = rollouts(module, environment, episodes, seed, greedy=not sample)
    environment.close()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("eps_id", pa.string()), ("t", pa.int64()), ("obs", pa.list_(pa.float32())),
        ("new_obs", pa.list_(pa.float32())),
        ("actions", pa.list_(pa.float32()) if rl_spaces.is_box(act) else pa.int64()), ("rewards", pa.float32()),
        ("terminateds", pa.bool_()), ("truncateds", pa.bool_())]))
    pq.write_table(table, out)
    print(f"[ftray] {episodes} episodes, {len(rows)} steps, mean return {np.mean(returns):.1f} "
          f"(min {min(returns):.0f}, max {max(returns):.0f})", file=sys.stderr)
    print(str(Path(out).resolve()), flush=True)
    return 0


def _no_env(source: str) -> str:
    raise SpecError(f"--env: {source} is not an ftray run folder (no summary.json): name its environment")


# ================================================================================ a sweep's trial
def run_trial(spec: JobSpec, address: str | None = None) -> None:
    """The body of one Tune trial of an rl sweep (`ftray.sweep` builds the Tuner): `fit`, reporting
    every PPO iteration (`episode_return_mean`, `env_steps`) so that ASHA can stop weak trials."""
    from ray import tune
    plan = prepare(spec, address, devices=False)
    run_dir = Path(spec.run.storage_path) / spec.run.name
    run_dir.mkdir(parents=True, exist_ok=True)

    def report(metrics: dict, ckpt: Path) -> None:
        tune.report({**metrics, METRIC: metrics[METRIC] if metrics[METRIC] is not None else -math.inf,
                     "trial_id": tune.get_context().get_trial_id(), "checkpoint_path": str(ckpt)})

    progress = fit(spec, plan, run_dir, on_iteration=report)
    summary = write_outputs(spec, plan, run_dir, progress, None)
    (run_dir / "summary.json").write_text(json.dumps(redact(summary), indent=2))


def summarise_trial(spec: JobSpec, error: str | None, stopped: bool) -> None:
    """A trial the scheduler stopped (or that crashed) wrote no summary: write it from its last
    checkpoint, so that every trial folder reads the same. `stopped`: by the sweep's scheduler."""
    run_dir = Path(spec.run.storage_path) / spec.run.name
    if (run_dir / "summary.json").is_file():
        return
    ckpt = latest_checkpoint(run_dir)
    progress = json.loads((ckpt / PROGRESS).read_text()) if ckpt else {}
    summary = write_outputs(spec, prepare(spec, devices=False), run_dir, progress, error)
    if not error:  # ASHA also ends a trial that reached its last iteration, before it wrote this
        history = progress.get("history") or [{}]
        summary["metrics"] = {METRIC: history[-1].get(METRIC)}
        if stopped:
            summary.update(status="stopped", error="stopped early by the sweep's scheduler")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(redact(summary), indent=2))


def met_its_stop(metrics: dict, spec: JobSpec) -> bool:
    """Whether a trial's last reported `metrics` meet one of its own stop conditions (`method.stop`);
    a trial that ended without did so because the sweep's scheduler stopped it."""
    s = spec.method.stop
    return bool((s.iterations and metrics.get("iteration", 0) >= s.iterations)
                or (s.env_steps and metrics.get("env_steps", 0) >= s.env_steps)
                or (s.target_return is not None and metrics.get("eval_return") is not None
                    and metrics["eval_return"] >= s.target_return))
