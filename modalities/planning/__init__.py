"""Planning modality: diffusion planners over state-action trajectories in gymnasium MuJoCo environments
(Diffuser's inpainting, AlignDiff's attribute-conditioned guidance), their execution and rendering, and
offline trajectory data. gymnasium[mujoco] and h5py come with the ``planning`` extra and load lazily."""
from diffalign.modalities.planning.adapter import PlanningAdapter, make_planning_scheduler
from diffalign.modalities.planning.data import Episode, SegmentSampler, episode_rows, read_episodes, write_episodes
from diffalign.modalities.planning.denoisers import TemporalDiT, UNet1DPlanner, build_denoiser, make_unet1d
from diffalign.modalities.planning.env import ENV_SPECS, EnvSpec, env_spec, make_env, set_state_from_observation
from diffalign.modalities.planning.execute import (Execution, InverseDynamics, execute_plans, load_inverse_dynamics,
                                                   receding_horizon, save_inverse_dynamics, train_inverse_dynamics)
from diffalign.modalities.planning.normalizer import Normalizer
from diffalign.modalities.planning.pretrain import denoising_loss, fit_planner
from diffalign.modalities.planning.render import filmstrip, render_states, save_filmstrip, save_gif
from diffalign.modalities.planning.value import ValueFunction, guided_prediction, train_value_function
from diffalign.modalities.planning.rewards import PLANNING_REWARDS, env_return, forward_velocity

__all__ = ["PlanningAdapter", "make_planning_scheduler", "Episode", "SegmentSampler", "episode_rows", "read_episodes",
           "write_episodes", "TemporalDiT", "UNet1DPlanner", "build_denoiser", "make_unet1d", "ENV_SPECS", "EnvSpec",
           "env_spec", "make_env", "set_state_from_observation", "Execution", "InverseDynamics", "execute_plans",
           "receding_horizon", "train_inverse_dynamics", "save_inverse_dynamics", "load_inverse_dynamics", "Normalizer", "PLANNING_REWARDS", "env_return",
           "forward_velocity", "render_states", "filmstrip", "save_filmstrip", "save_gif", "fit_planner",
           "denoising_loss", "ValueFunction", "train_value_function", "guided_prediction"]
