"""`method.algorithm: sac` for `method.name: rl`: RLlib's SAC (new API stack) on continuous actions.

The policy is RLlib's default SAC module (a squashed-Gaussian policy, twin Q networks and their
targets), its networks shaped by the spec's `model` (`layers` x `units`, `activation`). ftray's
driver (`ftray.rl.fit`) runs it like PPO: one `algo.train()` per iteration of `method.train_batch`
env steps, greedy evaluation, a checkpoint every iteration (the replay buffer inside it, so a
resumed run goes on with the experience it had). SAC's pretrained starts are an earlier SAC
checkpoint (`method.init_checkpoint`) and CQL on demonstrations (`method.pretrain: cql`, RLlib's
CQL, whose module is SAC's with one more forward pass, so its weights load into SAC's by name);
behaviour cloning, MARWIL, supervised exports and the PPO protections are PPO's
(`RLMethod.check_job` refuses them).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.offline.offline_prelearner import OfflinePreLearner

from ftray.models.base import param_mismatch
from ftray.spec import JobSpec, SpecError

CQL_NUM_ACTIONS = 10  # actions CQL samples per state for its penalty (RLlib's default)

# ftray's activation names that RLlib's get_activation_fn spells differently
_ACTIVATIONS = {"silu": "swish"}


def module_spec(spec: JobSpec, obs_space=None, act_space=None) -> RLModuleSpec:
    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
    m = spec.model
    activation = _ACTIVATIONS.get(m.activation, m.activation)
    return RLModuleSpec(module_class=DefaultSACTorchRLModule, observation_space=obs_space, action_space=act_space,
                        model_config={"fcnet_hiddens": [m.units] * m.layers, "fcnet_activation": activation,
                                      "twin_q": True})


def cql_module_spec(spec: JobSpec, obs_space, act_space) -> RLModuleSpec:
    """RLlib's CQL module: SAC's networks (the same names and shapes) plus CQL's repeated-action
    forward pass. Its action space is the normalised [-1, 1] box that its squashed Gaussian acts in,
    where CQL's penalty samples its uniform actions (its density, 0.5 per dimension, assumes it)."""
    from ray.rllib.algorithms.cql.torch.default_cql_torch_rl_module import DefaultCQLTorchRLModule
    unit = gym.spaces.Box(-1.0, 1.0, act_space.shape, np.float32)
    return RLModuleSpec(module_class=DefaultCQLTorchRLModule, observation_space=obs_space, action_space=unit,
                        model_config={**module_spec(spec).model_config, "num_actions": CQL_NUM_ACTIONS})


def _shapes(module_spec_: RLModuleSpec) -> dict:
    return {k: tuple(v.shape) for k, v in module_spec_.build().state_dict().items()}


def check_module(spec: JobSpec, obs, act) -> None:
    """Build the module once in the driver, so that a structure RLlib cannot build exits 2; with
    `pretrain: cql`, CQL's module must load into SAC's (the check every pretrained start gets)."""
    try:
        want = _shapes(module_spec(spec, obs, act))
    except ValueError as e:
        raise SpecError(f"model.activation: {spec.model.activation}: RLlib's SAC module cannot use it ({e})") \
            from None
    if spec.method.demos and spec.method.pretrain == "cql":
        mismatch = param_mismatch(want, _shapes(cql_module_spec(spec, obs, act)))
        if mismatch:
            raise SpecError(f"method.pretrain: cql: RLlib's CQL module does not load into SAC's: {mismatch}")


class NormalisedActions(OfflinePreLearner):
    """Demonstrations hold actions in the environment's units (as `ftray rl collect` writes them);
    SAC's and CQL's module acts in [-1, 1], which RLlib rescales to the bounds only on the way to the
    environment. So the actions are normalised here, on the way from the Parquet rows to the learner
    (RLlib's `actions_in_input_normalized` is read by the old API stack's reader only)."""

    def __call__(self, batch):
        act = self.config.action_space
        a = np.stack([np.asarray(x, np.float64) for x in batch["actions"]])
        unit = 2.0 * (a - act.low) / (act.high - act.low) - 1.0
        return super().__call__({**batch, "actions": np.clip(unit, -1.0, 1.0).astype(np.float32)})


def cql_algorithm():
    """RLlib's CQL with its new-stack `training_step` fixed for one local learner: RLlib 2.60 hands
    the single batch it samples (one update per iteration, no learner actors) to
    `learner_group.update` as `data_iterators`, which fails (KeyError: 0); MARWIL's step wraps it
    as `TrainingData(batch=...)`, and so does this one."""
    from ray.rllib.algorithms.cql import CQL
    from ray.rllib.core.learner.training_data import TrainingData
    from ray.rllib.utils.metrics import LEARNER_RESULTS, LEARNER_UPDATE_TIMER, OFFLINE_SAMPLING_TIMER, TIMERS

    class FtrayCQL(CQL):
        def training_step(self) -> None:
            c = self.config
            iterate = c.num_learners > 0 or c.dataset_num_iters_per_learner != 1
            with self.metrics.log_time((TIMERS, OFFLINE_SAMPLING_TIMER)):
                data = self.offline_data.sample(num_samples=c.train_batch_size_per_learner,
                                                num_shards=c.num_learners, return_iterator=iterate)
            data = TrainingData(data_iterators=data) if iterate else TrainingData(batch=data)
            with self.metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
                results = self.learner_group.update(training_data=data, minibatch_size=c.train_batch_size_per_learner,
                                                    num_iters=c.dataset_num_iters_per_learner)
                self.metrics.aggregate(results, key=LEARNER_RESULTS)

    return FtrayCQL


def cql_config(config, spec: JobSpec, obs, act):
    """CQL's part of the pretraining config: one update of `bc_batch` demonstration steps per
    iteration, SAC's own settings (gamma, tau, initial_alpha) for its critics and temperature."""
    m = spec.method
    return (config
            .env_runners(num_env_runners=0)  # offline: ftray evaluates in the driver
            .offline_data(input_=[m.demos], dataset_num_iters_per_learner=1, prelearner_class=NormalisedActions)
            .reporting(min_sample_timesteps_per_iteration=0, min_train_timesteps_per_iteration=0,
                       min_time_s_per_iteration=0)
            .training(lr=None, actor_lr=m.bc_lr, critic_lr=m.bc_lr, alpha_lr=m.bc_lr, gamma=m.gamma, tau=m.tau,
                      initial_alpha=m.initial_alpha, train_batch_size_per_learner=m.bc_batch,
                      bc_iters=m.cql_bc_iterations, min_q_weight=m.cql_min_q_weight,
                      num_actions=CQL_NUM_ACTIONS)
            .rl_module(rl_module_spec=cql_module_spec(spec, obs, act)))


def sac_config(config, spec: JobSpec):
    """SAC's part of the algorithm config (the environment, learners and module come from `ftray.rl`)."""
    m = spec.method
    return (config
            .env_runners(num_env_runners=m.env_runners, rollout_fragment_length=1)
            # Iterations of exactly `train_batch` env steps, not "at least one second".
            .reporting(min_sample_timesteps_per_iteration=m.train_batch, min_time_s_per_iteration=0)
            .training(actor_lr=m.lr, critic_lr=m.lr, alpha_lr=m.lr, gamma=m.gamma, tau=m.tau,
                      initial_alpha=m.initial_alpha, train_batch_size_per_learner=m.minibatch,
                      num_steps_sampled_before_learning_starts=m.learning_starts,
                      store_buffer_in_checkpoints=True,
                      replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": m.replay_capacity}))
