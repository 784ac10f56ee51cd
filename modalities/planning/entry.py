"""The planning modality's registry entry (``diffalign.registry``; entry point ``planning`` of group
diffalign.modalities)."""
from __future__ import annotations

from diffalign.modalities.planning.options import PlanningOptions
from diffalign.registry import ModalityEntry


def build(options: PlanningOptions, prompts, device):
    from diffalign.modalities.planning.adapter import PlanningAdapter
    if options.model != "tiny":
        return PlanningAdapter.from_pretrained(options.model, device=device)
    normalizer = None
    if options.dataset:
        from diffalign.modalities.planning.data import episode_rows, read_episodes
        from diffalign.modalities.planning.env import env_spec
        from diffalign.modalities.planning.normalizer import Normalizer
        spec = env_spec(options.env)
        normalizer = Normalizer.fit(episode_rows(read_episodes(options.dataset, spec.state_dim, spec.action_dim)))
    return PlanningAdapter.tiny(options.env, options.horizon, options.architecture, options.attributes, normalizer,
                                init_seed=options.init_seed, num_train_timesteps=options.num_train_timesteps,
                                prediction_type=options.prediction_type, device=device)


def rewards():
    from diffalign.modalities.planning.rewards import PLANNING_REWARDS
    return dict(PLANNING_REWARDS)


MODALITY = ModalityEntry(options=PlanningOptions, build=build, rewards=rewards)
