"""`method.algorithm: sac` for `method.name: rl`: RLlib's SAC (new API stack) on continuous actions.

The policy is RLlib's default SAC module (a squashed-Gaussian policy, twin Q networks and their
targets), its networks shaped by the spec's `model` (`layers` x `units`, `activation`). ftray's
driver (`ftray.rl.fit`) runs it like PPO: one `algo.train()` per iteration of `method.train_batch`
env steps, greedy evaluation, a checkpoint every iteration (the replay buffer inside it, so a
resumed run goes on with the experience it had). The one pretrained start SAC takes is an earlier
SAC checkpoint (`method.init_checkpoint`): behaviour cloning, supervised exports and the PPO
protections are PPO's (`RLMethod.check_job` refuses them).
"""

from __future__ import annotations

from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from ftray.spec import JobSpec, SpecError

# ftray's activation names that RLlib's get_activation_fn spells differently
_ACTIVATIONS = {"silu": "swish"}


def module_spec(spec: JobSpec, obs_space=None, act_space=None) -> RLModuleSpec:
    from ray.rllib.algorithms.sac.torch.default_sac_torch_rl_module import DefaultSACTorchRLModule
    m = spec.model
    activation = _ACTIVATIONS.get(m.activation, m.activation)
    return RLModuleSpec(module_class=DefaultSACTorchRLModule, observation_space=obs_space, action_space=act_space,
                        model_config={"fcnet_hiddens": [m.units] * m.layers, "fcnet_activation": activation,
                                      "twin_q": True})


def check_module(spec: JobSpec, obs, act) -> None:
    """Build the module once in the driver, so that a structure RLlib cannot build exits 2."""
    try:
        module_spec(spec, obs, act).build()
    except ValueError as e:
        raise SpecError(f"model.activation: {spec.model.activation}: RLlib's SAC module cannot use it ({e})") \
            from None


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
