"""The `method:` section of `rl` and its rules across the spec.

Its code is not a set of training hooks: `ftray.rl` runs it with RLlib instead of the supervised
loop of `ftray.train`."""

from __future__ import annotations

from typing import Any, Literal

from ftray.methods.config import MethodConfig
from ftray.schema import Strict, describe


class RLStop(Strict):
    env_steps: int | None = describe("Stop after this many sampled environment steps.", 100000, ge=1)
    target_return: float | None = describe(
        "Stop once the greedy evaluation return (`evaluation_episodes`, checked every iteration) reaches "
        "this; the env steps it took are the summary's `rl.steps_to_target`.", None)
    iterations: int | None = describe("Stop after this many training iterations.", None, ge=1)


class RLMethod(MethodConfig):
    name: Literal["rl"] = describe(
        "Reinforcement learning with RLlib (`model` is the policy network; no `data`).", "rl")
    env: str = describe("Environment: a Gymnasium id (`CartPole-v1`) or `module:Class` of a gymnasium.Env.")
    env_kwargs: dict[str, Any] = describe("Keyword arguments of the environment's constructor.", {})
    algorithm: Literal["ppo", "sac"] = describe(
        "RLlib algorithm: `ppo` (Discrete or Box actions) or `sac` (Box actions with finite bounds).", "ppo")
    env_runners: int = describe("Sampling actors (0 = sample in the driver process).", 1, ge=0, le=1024)
    lr: float = describe("Learning rate.", 3e-4, gt=0.0, le=1.0)
    gamma: float = describe("Discount factor.", 0.99, gt=0.0, le=1.0)
    gae_lambda: float = describe("GAE lambda.", 0.95, ge=0.0, le=1.0)
    clip: float = describe("PPO clip parameter of the probability ratio.", 0.2, gt=0.0, le=10.0)
    entropy_coeff: float = describe("Weight of the entropy bonus.", 0.0, ge=0.0, le=10.0)
    train_batch: int = describe("Environment steps sampled per training iteration (all learners).", 4000,
                                ge=1, le=1 << 24)
    minibatch: int = describe("Steps per SGD minibatch (SAC: per update, sampled from the replay buffer).", 128,
                              ge=1, le=1 << 24)
    epochs: int = describe("SGD passes over each train batch.", 10, ge=1, le=1000)
    tau: float = describe("SAC: soft update rate of the target Q networks.", 0.005, gt=0.0, le=1.0)
    initial_alpha: float = describe("SAC: starting entropy temperature (tuned toward the target entropy).", 1.0,
                                    gt=0.0, le=1000.0)
    learning_starts: int = describe("SAC: env steps sampled (at random-initialised policy) before updates begin.",
                                    1500, ge=0, le=1 << 40)
    replay_capacity: int = describe("SAC: env steps the replay buffer holds.", 100000, ge=1, le=1 << 32)
    critic_warmup_steps: int | None = describe(
        "Env steps at the start during which only the value network learns (the policy's learning "
        "rate is 0), so a pretrained policy is not pushed by a value network that knows nothing yet. "
        "Default: two `train_batch`es with a pretrained start, 0 from scratch.", None, ge=0, le=1 << 40)
    bc_weight: float = describe(
        "Weight of a pull toward the pretrained start in PPO's loss (DAPG-style): the KL divergence from "
        "the frozen start policy to the learner's, on the states of each train batch, times a weight that "
        "falls linearly from this to 0 over `bc_decay_steps` env steps. 0 = off.", 0.0, ge=0.0, le=1000.0)
    bc_decay_steps: int = describe(
        "Env steps over which `bc_weight` decays linearly to 0.", 20000, ge=1, le=1 << 40)
    guide_steps: int = describe(
        "JSRL guide curriculum: the frozen pretrained start acts (greedily) for the first k steps of every "
        "training episode, then the learner takes over; k starts at this and shrinks by "
        "guide_steps/guide_stages each time the greedy evaluation return passes the next of `guide_stages` "
        "thresholds evenly spaced from the start's return to `stop.target_return`. 0 = off.", 0, ge=0,
        le=1 << 30)
    guide_stages: int = describe("Steps of the guide curriculum (`guide_steps`).", 4, ge=1, le=1000)
    start_temperature: float = describe(
        "Divide the pretrained start's action logits by this before PPO (its last layer's weights and bias): "
        "above 1 a near-deterministic start samples other actions more often, so PPO has something to "
        "learn from; its greedy actions stay the same.", 1.0, gt=0.0, le=1000.0)
    stop: RLStop = describe("When training stops (whichever comes first).", default_factory=RLStop)
    evaluation_episodes: int = describe(
        "Greedy episodes that score the policy: at the start, after every iteration (for "
        "`stop.target_return`) and at the end.", 10, ge=1, le=100000)
    final_episodes: int = describe(
        "Greedy episodes, on seeds no other evaluation uses, that score the final policy (the summary's "
        "`metrics.episode_return_mean`; mean, std, min and max in `rl.final`).", 20, ge=1, le=100000)
    demos: str | None = describe(
        "Pretrain offline (`pretrain`) on these demonstrations (Parquet in RLlib's columns: obs, new_obs, "
        "actions, rewards, terminateds), e.g. written by `ftray rl collect`.", None)
    pretrain: Literal["bc", "marwil", "cql"] = describe(
        "Offline algorithm on `demos`: `bc` (RLlib's BC of PPO's policy), `marwil` (RLlib's MARWIL: BC "
        "weighted by exp(marwil_beta x advantage), PPO's policy and value network), `cql` (RLlib's CQL: "
        "SAC's policy and Q networks, `algorithm: sac`). Its updates: `bc_iterations`, `bc_lr`, `bc_batch`.",
        "bc")
    marwil_beta: float = describe(
        "MARWIL: the advantage's weight in exp(beta x advantage / its running RMS); 0 is plain BC.", 1.0,
        ge=0.0, le=1.0)
    cql_min_q_weight: float = describe(
        "CQL: weight of the conservative penalty that pushes down Q values of actions the demonstrations "
        "did not take.", 5.0, ge=0.0, le=1000.0)
    cql_bc_iterations: int = describe(
        "CQL: first updates whose actor loss is behaviour cloning (then SAC's actor loss on the "
        "conservative Q networks).", 100, ge=0, le=1000000)
    bc_iterations: int = describe("Offline pretraining updates (one `bc_batch` each; bc, marwil or cql).", 100,
                                  ge=1, le=1000000)
    bc_lr: float = describe("Offline pretraining learning rate (cql: its actor's, critics' and temperature's).",
                            1e-3, gt=0.0, le=1.0)
    bc_batch: int = describe("Demonstration steps per offline pretraining update.", 256, ge=1, le=1 << 24)
    init_checkpoint: str | None = describe(
        "Start from an earlier RLlib checkpoint: an ftray rl run folder, an algorithm checkpoint, or its "
        "module folder (the environment may differ; the spaces must match).", None)

    supervised = False  # it learns from its environment: no `data`, no supervised rules
    path_fields = ("demos", "init_checkpoint")

    def check_job(self, spec):
        if spec.data is not None:
            raise ValueError("data: method rl learns from its environment; remove the data section "
                             "(demonstrations go in method.demos)")
        if spec.model.name != "mlp":
            raise ValueError("model.name: method rl needs model.name: mlp (the policy network)")
        if spec.model.dropout:
            # PPO's probability ratio compares the sampling policy with the trained one: both must be
            # the same deterministic network.
            raise ValueError("model.dropout: method rl needs 0 (PPO's ratio needs a deterministic policy)")
        if spec.train.model_fields_set:
            raise ValueError("train: method rl takes its hyperparameters from method (lr, gamma, gae_lambda, "
                             "clip, entropy_coeff, train_batch, minibatch, epochs)")
        starts = [k for k, v in (("method.demos", self.demos), ("method.init_checkpoint", self.init_checkpoint),
                                 ("model.init_from", spec.model.init_from)) if v]
        if len(starts) > 1:
            raise ValueError(f"{starts[1]}: give one pretrained start, not {' and '.join(starts)}")
        for key, on in (("bc_weight", self.bc_weight > 0), ("guide_steps", self.guide_steps > 0),
                        ("start_temperature", self.start_temperature != 1.0)):
            if on and not starts:
                raise ValueError(f"method.{key}: protects a pretrained start; give method.demos, "
                                 "method.init_checkpoint or model.init_from (or leave it at its default)")
        _check_pretrain(self)
        if self.guide_steps and self.stop.target_return is None:
            raise ValueError("method.guide_steps: the guide curriculum's thresholds lead to "
                             "method.stop.target_return; set it")
        if self.algorithm == "sac":
            _check_sac(self, spec)
        elif changed := _changed(self, SAC_ONLY):
            raise ValueError(f"method.{changed[0]}: a SAC setting; method.algorithm is ppo")
        if self.algorithm == "ppo" and self.minibatch > self.train_batch:
            raise ValueError(f"method.minibatch: {self.minibatch} is larger than method.train_batch "
                             f"{self.train_batch}")
        if self.train_batch % spec.scaling.num_workers:
            raise ValueError(f"method.train_batch: {self.train_batch} is not divisible by the "
                             f"{spec.scaling.num_workers} learners (scaling.num_workers)")
        if not (self.stop.env_steps or self.stop.target_return is not None or self.stop.iterations):
            raise ValueError("method.stop: give at least one of env_steps, target_return, iterations")
        if spec.tune:
            _check_sweep(spec.tune)


PPO_ONLY = ("gae_lambda", "clip", "entropy_coeff", "epochs", "critic_warmup_steps", "bc_weight", "bc_decay_steps",
            "guide_steps", "guide_stages", "start_temperature")
SAC_ONLY = ("tau", "initial_alpha", "learning_starts", "replay_capacity")
PRETRAIN_ONLY = {"marwil": ("marwil_beta",), "cql": ("cql_min_q_weight", "cql_bc_iterations")}
PRETRAIN_FOR = {"bc": "ppo", "marwil": "ppo", "cql": "sac"}  # the algorithm each offline pretraining starts


def _check_pretrain(method: RLMethod) -> None:
    """`pretrain` needs `demos` and fits one algorithm (bc and marwil train PPO's module, cql SAC's);
    each pretraining's own settings are refused with another."""
    p = method.pretrain
    if p != "bc" and not method.demos:
        raise ValueError(f"method.pretrain: {p} pretrains on demonstrations; give method.demos")
    if method.demos and PRETRAIN_FOR[p] != method.algorithm:
        raise ValueError(f"method.pretrain: {p} pretrains {PRETRAIN_FOR[p].upper()}'s networks, and method.algorithm "
                         f"is {method.algorithm}; " + ("use pretrain: cql with algorithm sac" if method.algorithm == "sac"
                                                       else "use pretrain: bc or marwil with algorithm ppo"))
    for other, keys in PRETRAIN_ONLY.items():
        if other != p and (changed := _changed(method, keys)):
            raise ValueError(f"method.{changed[0]}: a {other} setting; method.pretrain is {p}")


def _changed(method: RLMethod, keys: tuple) -> list[str]:
    """The `keys` whose values differ from their defaults (a recorded spec holds every key)."""
    fields = type(method).model_fields
    return [k for k in keys if getattr(method, k) != fields[k].get_default(call_default_factory=True)]


def _check_sac(method: RLMethod, spec) -> None:
    """SAC takes one pretrained start, an earlier SAC checkpoint; the rest is PPO's."""
    if spec.model.init_from:
        raise ValueError("model.init_from: method.algorithm sac starts from scratch or from an earlier sac "
                         "checkpoint (method.init_checkpoint), not from a supervised export")
    ppo_only = _changed(method, PPO_ONLY)
    if ppo_only:
        raise ValueError(f"method.{ppo_only[0]}: a PPO setting (or PPO's pretrained start); method.algorithm "
                         "sac does not use it")


def _check_sweep(tune) -> None:
    """What an rl sweep supports: one RLlib algorithm per trial, scored by its episode return."""
    if tune.metric != "episode_return_mean" or tune.mode != "max":
        raise ValueError("tune.metric: an rl sweep maximises episode_return_mean "
                         "(tune.metric: episode_return_mean, tune.mode: max)")
    if tune.ensemble:
        raise ValueError("tune.ensemble: ensembles are for classification and regression tasks")
    if tune.scheduler.name not in ("fifo", "asha"):
        raise ValueError(f"tune.scheduler.name: {tune.scheduler.name} is not supported for "
                         "method rl (fifo, asha)")
    if tune.trial != "train" or tune.group_by:
        raise ValueError("tune.trial: an rl sweep runs one RLlib algorithm per trial (no packed "
                         "trials, no group_by)")
